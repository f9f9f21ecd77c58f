"""tutorial.ipynb is the core of tutorial.md, made by lab/notebook.py (standard library only here;
.ci/notebook-check executes it in a fresh environment)."""

import ast
import json
import re
import types

from lab import notebook

TUTORIAL = (notebook.REPO / "tutorial.md").read_text()


def test_the_notebook_is_what_the_generator_makes_of_todays_tutorial():
    kept = (notebook.REPO / "tutorial.ipynb").read_text()
    assert kept == notebook.render(TUTORIAL), "tutorial.ipynb is stale: run python -m lab.notebook"


def test_a_change_to_the_core_of_the_tutorial_alone_turns_the_sync_check_red():
    changed = TUTORIAL.replace("## 6. Folding ω away", "## 6. Folding ω away, again", 1)
    assert changed != TUTORIAL and notebook.render(changed) != (notebook.REPO / "tutorial.ipynb").read_text()


def cells(kind=None):
    found = json.loads((notebook.REPO / "tutorial.ipynb").read_text())["cells"]
    return ["".join(c["source"]) for c in found if kind is None or c["cell_type"] == kind]


def test_the_core_and_its_two_exercises_are_there_and_nothing_of_going_deeper():
    text = "\n".join(cells())
    for number in range(1, 9):
        assert re.search(rf"^## {number}\. ", text, re.M), f"Section {number} is missing"
    assert not re.search(r"^## (9|1[0-6])\. ", text, re.M), "a section of Going deeper is in the notebook"
    assert "4. **Change one number and predict.**" in text and "6. **Prove the closed form.**" in text
    assert "5. **O(1) instead of O(log n).**" not in text


def test_every_command_runs_in_the_kernel_and_writes_only_into_the_scratch_folder():
    """run(), as the setup cell defines it, given each command of the core: the script's main() gets
    the command's flags with --json and --plot moved into SCRATCH, and the notebook's threads."""
    setup = cells("code")[0]
    source = next(ast.get_source_segment(setup, node) for node in ast.parse(setup).body
                  if isinstance(node, ast.FunctionDef) and node.name == "run")
    called = []
    fake_script = types.SimpleNamespace(main=lambda argv: called.append(argv))
    namespace = {"os": __import__("os"), "shlex": __import__("shlex"), "SCRATCH": "scratch", "THREADS": 1,
                 "importlib": types.SimpleNamespace(import_module=lambda name: fake_script), "show": print}
    exec(source, namespace)
    commands = [ast.literal_eval(call) for text in cells("code") for call in re.findall(r"^run\((.*)\)$", text, re.M)]
    core = TUTORIAL.split("\n# Going deeper")[0]
    assert len(commands) == len(re.findall(r"^python ", core, re.M)) == 5
    for command in commands:
        namespace["run"](command)
        argv = called[-1]
        for flag in ("--json", "--plot"):
            if flag in argv:
                assert argv[argv.index(flag) + 1].startswith("scratch/"), (command, argv)
        assert argv[-2:] == ["--threads", "1"] and not any(a.startswith(("lab/results/", "lab/figures/"))
                                                           for a in argv if a != "lab/results/stability_map.jsonl")


def test_each_kept_output_is_shown_once_and_labelled_as_the_tutorials_run():
    core = TUTORIAL.split("\n# Going deeper")[0]
    outputs = re.findall(r"```(?:python|bash)\n.*?```\n+```text\n(.*?)```", core, re.S)
    labelled = [c for c in cells("markdown") if c.startswith(notebook.KEPT)]
    assert len(labelled) == len(outputs) >= 8
    for shown in outputs:
        assert sum(shown in c for c in cells()) == 1, shown[:60]
