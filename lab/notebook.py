"""tutorial.ipynb, the core of tutorial.md (Sections 1–8 and the two exercises the core sets) as a
notebook that runs top to bottom in Jupyter or Colab:

    python -m lab.notebook                 # writes tutorial.ipynb from today's tutorial.md

tutorial.md stays the one source: lab/test_notebook.py fails when tutorial.ipynb is not what this makes
of it, and .ci/notebook-check executes the notebook in a fresh environment. Made with the standard
library's json, not jupytext: a notebook is plain JSON, and this way the suite checks it with nothing
installed beyond requirements.txt.

What becomes what: prose, one markdown cell per stretch between code blocks; a ```python block, a
code cell; a ```bash command, a code cell `run("python …")` that runs the script in the kernel (its main,
so the kernel's torch and threads are used), writes its --json and --plot into a scratch folder
(never over lab/results/ or lab/figures/) and shows the figure when matplotlib is there; an output the
tutorial shows, one markdown cell labelled as the tutorial's run; a figure, a cell that shows the
kept PNG.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).parents[1]
SCRATCH = "notebook_outputs"  # where the notebook's commands write (git ignores it)
KEPT = "**The tutorial's run printed** (your numbers may differ in the last digits; timings will):"
FENCE = re.compile(r"```(\w*)\n(.*?)```\n?", re.S)
FIGURE = re.compile(r"!\[([^\]]*)\]\((lab/figures/[^)]+\.png)\)")

SETUP = '''# Setup: run this cell first. Jupyter: open this notebook in the repository's folder.
# Colab: upload it (File > Upload notebook), set REPO to the repository's git address, then Run all.
REPO = ""    # the repository's git address to fetch the code from; "" means "this folder"
THREADS = 1  # torch threads. 1: on a machine with other work (Colab's shared VM, a busy laptop) two
             # threads wait on each other; a 6-layer demo took 36.7 s with 2 and 6.8 s with 1 there.
             # On an idle machine with 2 or more cores, 2 is a little faster.
import importlib, os, shlex, subprocess, sys

if REPO and not os.path.exists("admin.py"):
    if not os.path.exists("admin-class"):
        subprocess.run(["git", "clone", "--depth", "1", REPO, "admin-class"], check=True)
    os.chdir("admin-class")
if not os.path.exists("admin.py"):
    raise SystemExit("admin.py is not here: set REPO in this cell, or open the notebook in the repository")
sys.path.insert(0, os.getcwd())
missing = [m for m in ("torch", "numpy") if importlib.util.find_spec(m) is None]  # Colab has both
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
import torch

torch.set_num_threads(THREADS)
SCRATCH = "notebook_outputs"  # what the commands write; git ignores it
os.makedirs(SCRATCH, exist_ok=True)
PLOTS = importlib.util.find_spec("matplotlib") is not None


def run(command):
    """A command of tutorial.md, run in this kernel: its script's main(), outputs into SCRATCH."""
    argv = shlex.split(command)[1:]  # less "python"
    module, argv = (argv[1], argv[2:]) if argv[0] == "-m" else (argv[0][:-3], argv[1:])
    for flag in ("--json", "--plot"):
        if flag in argv:
            at = argv.index(flag) + 1
            argv[at] = os.path.join(SCRATCH, os.path.basename(argv[at]))
    importlib.import_module(module).main(argv + ["--threads", str(THREADS)])
    if "--plot" in argv and os.path.exists(argv[argv.index("--plot") + 1]):
        show(argv[argv.index("--plot") + 1])


def show(path):
    from IPython.display import Image, display

    display(Image(filename=path))


print(f"code in {os.getcwd()}; torch {torch.__version__}, {THREADS} thread(s); matplotlib: "
      + ("yes, figures inline" if PLOTS else "no, so no new figures (pip install matplotlib)"))
'''


def cell(kind: str, text: str) -> dict:
    source = text.strip("\n").splitlines(keepends=True)
    if kind == "markdown":
        return {"cell_type": "markdown", "metadata": {}, "source": source}
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}


def prose_cells(text: str) -> list[dict]:
    """Markdown cells of prose, split at each section heading; a kept figure becomes a cell that shows it."""
    cells = []
    for part in re.split(r"\n(?=#{1,2} )", text):
        for k, piece in enumerate(FIGURE.split(part)):  # prose, alt, path, prose, ...
            if k % 3 == 0 and piece.strip():
                cells.append(cell("markdown", piece))
            elif k % 3 == 2:
                cells.append(cell("code", f'show("{piece}")  # the figure the tutorial shows'))
    return cells


def core_cells(markdown: str) -> list[dict]:
    """The cells of the core of `markdown` (tutorial.md): everything above '# Going deeper'."""
    core = markdown.split("\n# Going deeper", 1)[0]
    cells, position, previous = [], 0, None
    for block in FENCE.finditer(core):
        kind, body = block.groups()
        between = core[position:block.start()]
        cells += prose_cells(between)
        if kind == "text" and previous in ("python", "bash") and not between.strip():
            cells.append(cell("markdown", f"{KEPT}\n\n```text\n{body}```"))
        elif kind == "python":
            cells.append(cell("code", body.replace("torch.set_num_threads(2)", "torch.set_num_threads(THREADS)")))
        elif kind == "bash":
            cells.append(cell("code", "\n".join(f"run({line.strip()!r})" for line in body.splitlines() if line.strip())))
        else:  # a code excerpt (```py) or any other block: shown, not run
            cells.append(cell("markdown", f"```{'python' if kind == 'py' else kind}\n{body}```"))
        position, previous = block.end(), kind
    return cells + prose_cells(core[position:])


def exercises(markdown: str, numbers=(4, 6)) -> list[dict]:
    """The exercises the core sets, from Section 17."""
    section = markdown.split("\n## 17. ", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n(?=\d+\. \*\*)", section)
    chosen = [item.strip() for item in items if re.match(rf"({'|'.join(map(str, numbers))})\. \*\*", item)]
    return [cell("markdown", "## The core's exercises (tutorial.md, Section 17; answers in its Appendix A)\n\n"
                 + "\n\n".join(chosen))]


def notebook(markdown: str) -> dict:
    return {"cells": [cell("code", SETUP)] + core_cells(markdown) + exercises(markdown),
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 4}


def render(markdown: str) -> str:
    """The notebook's file text: what tutorial.ipynb must hold for this tutorial.md."""
    return json.dumps(notebook(markdown), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    (REPO / "tutorial.ipynb").write_text(render((REPO / "tutorial.md").read_text()))
    print(f"wrote {REPO / 'tutorial.ipynb'}")


if __name__ == "__main__":
    main()
