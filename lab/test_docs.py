"""The docs run: every example in admin.py's docstring, README.md and tutorial.md, with its output.

A shown output is compared the way a reader reads it. Words, symbols and line structure must be
exactly as shown (runs of spaces count as one, so a wider number may shift a column). Whole numbers
(counts, indices, bounds such as `1e-12`) must be equal. A number with decimals is compared with a
relative tolerance that depends on where it comes from:
  - a shell output is rendered again by the script's own render function from the results file that
    the command wrote (results/): the same numbers through the same code, so every number must be
    the shown one exactly (SHELL_REL = 0), timings apart (compared by format);
  - a python block runs live, here: its numbers may differ from the shown ones by LIVE_REL = 2e-3 of
    their value (float32 results on another CPU, or after a few training steps, move in their 4th
    digit at most), plus one unit of the last shown digit, for a value that lands on the other side
    of a rounding boundary. A number shown with two significant digits may thus move by a unit; one
    shown with four by LIVE_REL: a doc shows every number it means with three or more.
A doc shows no rounding noise at all: an error that is rounding by construction is printed against a
bound (`below 1e-12`). What the live checks recompute is compared with a relative tolerance per kind
of number (LIVE_CHECK_REL).
"""

import contextlib
import doctest
import io
import json
import re
import shlex
from pathlib import Path

import pytest

import admin
from lab import bench
from lab import cli
from lab import config
from lab import deep_end
from lab import measure
from lab import report
from examples import stock_layers as stock_layers_example
from lab import sweep
import train_toy

REPO, LAB = Path(__file__).parents[1], Path(__file__).parent  # the docs are the repository's; results/ the lab's
SHELL_REL, LIVE_REL = 0.0, 2e-3
# What a live check recomputes against the kept file (made on another CPU), relative, per kind:
LIVE_CHECK_REL = {
    "untrained": 1e-4,  # one float32 pass of a fresh model: rounding ~1e-7; other weights or data: > 1e-2
    "float64": 1e-6,    # a float64 output change of ±δ: rounding ~1e-16, amplified ~1e6 by the difference
    "one step": 1e-2,   # one real Adam step's output change: float32 gradients, squared and divided
    "trained": 1e-3,    # held-out loss after 20 Admin steps: 4e-5 apart between two CPUs (measured)
    "run": 1e-2,        # a whole sweep run's final loss (eval every 20 steps, stops at 99%)
}
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def allowed_difference(shown: str, rel: float) -> float:
    """How far a printed number may be from the `shown` one: 0 for whole numbers; else `rel` of its
    value, and (rel > 0: a value computed again) one unit of its last shown digit for the rounding."""
    mantissa, _, exponent = shown.lower().partition("e")
    if "." not in mantissa or rel == 0:
        return 0.0
    unit = 10.0 ** (int(exponent or 0) - len(mantissa.split(".")[1]))
    return rel * abs(float(shown)) + unit


def output_mismatch(printed: str, shown: str, rel: float = LIVE_REL) -> str | None:
    """None if `printed` reads as `shown` (module docstring), else what differs, line by line."""
    got, want = printed.rstrip().splitlines(), shown.rstrip().splitlines()
    if len(got) != len(want):
        return f"{len(got)} lines printed, {len(want)} shown"
    for n, (g, w) in enumerate(zip(got, want), 1):
        if NUMBER.sub("#", g).split() != NUMBER.sub("#", w).split():
            return f"line {n} reads differently:\n  printed: {g}\n  shown:   {w}"
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(w)):
            if abs(float(a) - float(b)) > allowed_difference(b, rel) * (1 + 1e-9):  # 1e-9: decimal→binary
                return f"line {n}: printed {a} where the text shows {b} (± {allowed_difference(b, rel):g})"
    return None


# ---------------------------------------------------------------------------------------------------
# The comparator itself
# ---------------------------------------------------------------------------------------------------

SHOWN = "vanilla  β_1 = 0.338   mean β = 0.352   β_96 = 0.258\nω ≈ 4.982e-06, 8 tensors"


@pytest.mark.parametrize("printed", [
    SHOWN,
    SHOWN.replace("0.338", "0.339").replace("0.258", "0.257"),  # a last digit, by one (rounding)
    SHOWN.replace("4.982e-06", "4.992e-06"),  # 10 units: 0.2% of the value plus one unit
    SHOWN.replace("0.338   mean", "0.338    mean"),  # a shifted column
    SHOWN + "\n",
])
def test_comparator_accepts_rounding_and_live_noise(printed):
    assert output_mismatch(printed, SHOWN) is None


@pytest.mark.parametrize("printed, why", [
    (SHOWN.replace("0.352", "0.387"), "printed 0.387 where the text shows 0.352"),  # +10%
    (SHOWN.replace("0.338", "0.305"), "printed 0.305"),  # −10%
    (SHOWN.replace("0.338", "0.340"), "printed 0.340"),  # two units of the last digit: 0.6%
    (SHOWN.replace("4.982e-06", "4.994e-06"), "printed 4.994e-06"),  # 12 units: 0.24%
    (SHOWN.replace("4.982e-06", "4.982e-07"), "printed 4.982e-07"),  # another exponent
    (SHOWN.replace("8 tensors", "9 tensors"), "printed 9"),  # a count is exact
    (SHOWN.replace("mean", "median"), "reads differently"),  # a changed word
    (SHOWN.replace("β_96", "β_95"), "printed 95"),
    (SHOWN.splitlines()[0], "1 lines printed, 2 shown"),  # a missing line
    (SHOWN + "\nextra", "3 lines printed, 2 shown"),
    (SHOWN.replace("= 0.258", "0.258"), "reads differently"),  # a lost symbol
])
def test_comparator_rejects_a_changed_result(printed, why):
    mismatch = output_mismatch(printed, SHOWN)
    assert mismatch is not None and why in mismatch, mismatch


def test_a_rendered_shell_output_must_show_every_number_exactly():
    assert output_mismatch(SHOWN, SHOWN, SHELL_REL) is None
    assert "printed 0.339" in output_mismatch(SHOWN.replace("0.338", "0.339"), SHOWN, SHELL_REL)
    assert "printed 4.983e-06" in output_mismatch(SHOWN.replace("4.982e-06", "4.983e-06"), SHOWN, SHELL_REL)


def test_allowed_difference_is_relative_plus_one_unit_of_the_last_shown_digit():
    assert allowed_difference("2.017", 2e-3) == pytest.approx(2.017 * 2e-3 + 0.001)
    assert allowed_difference("0.0053", 2e-3) == pytest.approx(0.0053 * 2e-3 + 0.0001)
    assert allowed_difference("4.982e-06", 2e-3) == pytest.approx(4.982e-06 * 2e-3 + 1e-9)
    assert allowed_difference("1e-12", 2e-3) == allowed_difference("96", 2e-3) == 0.0
    assert allowed_difference("2.017", 0.0) == 0.0


# ---------------------------------------------------------------------------------------------------
# The examples
# ---------------------------------------------------------------------------------------------------

def test_module_docstring_examples_run():
    result = doctest.testmod(admin, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0, result


def python_blocks(path: Path) -> list[tuple[str, str | None]]:
    """Every ```python block, with the ```text block right after it (its shown output), if any."""
    found = re.findall(r"```python\n(.*?)```\n(?:\s*```text\n(.*?)```)?", path.read_text(), flags=re.S)
    return [(code, shown or None) for code, shown in found]


def run_blocks(path: Path) -> None:
    """Run the blocks in order as one script; each printed output must read as the text under it."""
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no ```python block"
    namespace = {"__name__": "__docs__"}
    for i, (code, shown) in enumerate(blocks, 1):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{path.name} block {i}", "exec"), namespace)
        if shown is not None:
            mismatch = output_mismatch(printed.getvalue(), shown)
            assert mismatch is None, f"{path.name} block {i}: {mismatch}\nprinted:\n{printed.getvalue()}"


def test_readme_python_examples_run():
    run_blocks(REPO / "README.md")


def test_tutorial_blocks_run_in_order_and_print_what_the_text_shows():
    run_blocks(REPO / "tutorial.md")


def test_tutorial_code_excerpts_are_the_code_as_it_is():
    """Each ```py excerpt (the code shown, not run) appears in admin.py, or in the file its first line
    names (`# file: NAME`): its lines, in order ("..." stands for lines left out)."""
    excerpts = re.findall(r"```py\n(.*?)```", (REPO / "tutorial.md").read_text(), flags=re.S)
    assert len(excerpts) >= 6
    for excerpt in excerpts:
        lines = [raw.strip() for raw in excerpt.splitlines()]
        name = lines.pop(0)[len("# file: "):] if lines[0].startswith("# file: ") else "admin.py"
        source = [line.strip() for line in (REPO / name).read_text().splitlines()]
        position = 0
        for line in lines:
            if line and line != "...":
                assert line in source[position:], f"tutorial excerpt line not in {name}: {line!r}"
                position = source.index(line, position) + 1


def test_tutorial_figures_exist_and_name_the_command_that_makes_them():
    text = (REPO / "tutorial.md").read_text()
    figures = re.findall(r"!\[([^\]]+)\]\((lab/figures/[^)]+\.png)\)", text)
    assert len(figures) >= 3, figures
    for alt, path in figures:
        assert (REPO / path).stat().st_size > 10_000, f"{path} missing or empty"
        assert len(alt.split()) >= 10, f"alt text of {path} does not say what it shows"
        assert f"--plot {path}" in text or f"--out {path}" in text, f"no command in tutorial.md regenerates {path}"


def tutorial_sections() -> dict[int, str]:
    """tutorial.md's numbered sections ("## N. Title"): number → heading and text up to the next one."""
    parts = re.split(r"^## (\d+)\. ", (REPO / "tutorial.md").read_text(), flags=re.M)
    return {int(n): body for n, body in zip(parts[1::2], parts[2::2])}


SECTION_POINTER = re.compile(r"Sections? (\d+)(?:–(\d+))?")


def test_readme_points_into_the_tutorial_where_it_says():
    """Every "Section N" of README.md exists, and every script that README names in backticks before
    the pointer ("(`python -m lab.measure`): Section 3") is in that section's text."""
    sections, checked = tutorial_sections(), 0
    for item in (REPO / "README.md").read_text().split("\n- "):
        start = 0
        for pointer in SECTION_POINTER.finditer(item):
            numbers = [int(n) for n in pointer.groups() if n]
            assert all(n in sections for n in numbers), f"README points to {pointer[0]}, not in tutorial.md"
            for script in re.findall(r"`[^`]*?(\w+\.py|(?:lab|examples)\.\w+)\b[^`]*`", item[start:pointer.start()]):
                assert script in sections[numbers[0]], f"README: {script} is not in tutorial.md {pointer[0]}"
                checked += 1
            start = pointer.end()
    assert checked >= 8, checked


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for room in ("", "lab/", "examples/")
                                         for p in REPO.glob(f"{room}*.py")))
def test_code_points_to_tutorial_sections_that_exist(path):
    sections = tutorial_sections()
    for pointer in re.finditer(r"tutorial\.md,? Sections? (\d+)(?: and (\d+))?", (REPO / path).read_text()):
        for number in filter(None, pointer.groups()):
            assert int(number) in sections, f"{path} points to tutorial.md {pointer[0]}, which does not exist"


# ---------------------------------------------------------------------------------------------------
# Shell outputs: every ```text block that is not a python block's output shows what the commands of
# the ```bash block before it print. It is rendered again here by the current code, from the results
# file that the same command with the same settings wrote (results/), and compared as above. What the
# results file cannot vouch for is rerun live: the configuration line is parsed from the command as the
# code stands now, and the first evaluation of a demo and one model of a measurement are recomputed.
# Timings and the machine (torch version, device name) are compared by format only.
# ---------------------------------------------------------------------------------------------------

TIMING = [(re.compile(r"\d+\.\ds\b"), "#s"),  # "12.5s", "(24.7s in all)"
          (re.compile(r"\(\d+s in all\)"), "(#s in all)"),  # examples/stock_layers.py: whole seconds
          (re.compile(r"\btorch[= ]\S+"), "torch #"), (re.compile(r"device=.*?(?=, \w+=)"), "device=#"),
          (re.compile(r"^((?:vanilla|admin|preln)\s+\d+\s.*?)\s+(?:\d+\.\d|nan)\s+(?:\d+\.\d|nan)$", re.M),
           r"\1 # #"),  # a summary row's seconds and ms/step
          (re.compile(r"\d+\.\d ms \(min \d+\.\d\)( = \d+\.\d\dx)?"), "# ms"),  # bench.py
          (re.compile(r"\d+\.\d ms (first|last) 10"), r"# ms \1 10"), (re.compile(r"= \d+\.\d\dx$", re.M), "= #x")]


def mask_timing(text: str) -> str:
    for pattern, replacement in TIMING:
        text = pattern.sub(replacement, text)
    return text


def settings(text: str) -> list[str]:
    """The configuration lines: settings, not measurements, so they must read exactly."""
    return [line for line in text.splitlines() if line.startswith("configuration: ")]


def excerpt_mismatch(printed: str, shown: str) -> str | None:
    """output_mismatch, where a shown line "…" stands for any number of printed lines."""
    got = mask_timing(printed).rstrip().splitlines()
    segments = [s.strip("\n") for s in re.split(r"^\s*…\s*$", mask_timing(shown).rstrip(), flags=re.M)]
    position = 0
    for k, segment in enumerate(segments):
        if not segment:
            continue
        n = len(segment.splitlines())
        last = k == len(segments) - 1
        starts = [position] if k == 0 else range(position, len(got) - n + 1)
        for start in starts:
            window = "\n".join(got[start:start + n])
            if (not last or start + n == len(got)) and output_mismatch(window, segment, SHELL_REL) is None \
                    and settings(window) == settings(segment):
                position = start + n
                break
        else:
            where = "\n".join(got[position:position + n])
            return f"no printed lines read as:\n{segment}\nfirst candidate: {output_mismatch(where, segment, SHELL_REL)}"
    return None


def test_excerpt_comparison_skips_only_where_the_text_says_so():
    printed = "a 1\nb 2.5s\nc 3\nd 4"
    assert excerpt_mismatch(printed, "a 1\n…\nd 4") is None
    assert excerpt_mismatch(printed, "a 1\nb 39.9s\n…") is None  # a timing reads as its format
    assert excerpt_mismatch(printed, "…\nc 3\nd 4") is None
    assert excerpt_mismatch(printed, "a 1\nc 3\nd 4") is not None  # a line left out without "…"
    assert excerpt_mismatch(printed, "a 1\n…\nc 4\nd 4") is not None


def kept_results(script: str, config: dict) -> dict:
    """The results file in results/ that `script` wrote with these settings."""
    machine = ("device", "torch")
    for path in sorted((LAB / "results").glob("*.json")):
        kept = json.loads(path.read_text())
        made = {k: v for k, v in kept.get("config", {}).items()  # cuda_graph=False: eager, as the demo now is
                if k not in machine and (k, v) != ("cuda_graph", False)}
        if made == {k: v for k, v in config.items() if k not in machine} and ("arms" in kept) == (script == "train_toy"):
            return kept
    raise AssertionError(f"no results/*.json made by {script}.py with {config}: run the command with --json")


def without_plot(argv: list[str]) -> list[str]:
    """argv less --plot PATH: the checks would refuse it without matplotlib (optional; nothing is drawn)."""
    return [a for i, a in enumerate(argv) if "--plot" not in argv[max(i - 1, 0):i + 1]]


def wrote_plot(argv: list[str]) -> list[str]:
    """The line the script prints after drawing --plot PATH."""
    return [f"wrote {argv[argv.index('--plot') + 1]}"] if "--plot" in argv else []


def demo_output(argv: list[str]) -> str:
    """The demo's output, rendered by report.render from the kept results; each arm's untrained
    evaluation recomputed (a kept file made with other weights or data is stale)."""
    args, cfg = train_toy.parse_command_line(without_plot(argv) + ["--device", "cpu"])
    kept = kept_results("train_toy", train_toy.configuration(cfg))
    data = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    results = [report.arm_result(arm, r) for arm, r in kept["arms"].items()]
    for r in results:
        live = train_toy.evaluate(train_toy.make_model(r.arm, cfg), data)[:2]
        assert live == pytest.approx(tuple(r.history[0][1:]), rel=LIVE_CHECK_REL["untrained"]), f"{r.arm}: kept results are stale"
    return "\n".join([report.render(cfg, results, kept["fold_error"], 0.0)] + wrote_plot(argv))


def measure_output(argv: list[str]) -> str:
    """measure's output, rendered by measure.render from the kept rows; one Admin model of the
    deepest row measured again."""
    args = measure.parse_args(without_plot(argv) + ["--device", "cpu"])
    kept = kept_results("measure", cli.configuration(vars(args)))
    row = max((r for r in kept["rows"] if r["arm"] == "admin"), key=lambda r: r["layers"], default=kept["rows"][0])
    idx, _ = next(train_toy.ToyData(args.task, args.digits, args.seed, "cpu").batches(args.batch_size))
    cfg = config.train_config(args, layers=row["layers"], arms=[row["arm"]], seed=args.seed)
    live = measure.output_change(train_toy.make_model(row["arm"], cfg).double(), idx, args.delta, args.seed)
    assert live == pytest.approx(row["draws"][0], rel=LIVE_CHECK_REL["float64"]), "kept measurement is stale"
    return "\n".join([measure.render(kept["config"], kept, 0.0)] + wrote_plot(argv))


def sweep_output(argv: list[str]) -> str:
    """The tables at a sweep's end (--report: of a results file made on any device, a GPU's too)."""
    args = sweep.parse_args(without_plot(argv) + ([] if "--report" in argv else ["--device", "cpu"]))
    return sweep.summary(args, sweep.load_results(args.results, sweep.fixed_settings(args)))[1]


def bench_output(argv: list[str]) -> str:
    """bench's output with made-up times (timings are compared by format)."""
    args, cfg = bench.parse_args(argv + ["--device", "cpu"])
    one = [1.0] * 10
    timed = ({flush: {"vanilla": one, "admin": one} for flush in (False, True)} if args.stuck else
             {"training step": dict.fromkeys(bench.TRAINED, one), "forward pass": dict.fromkeys(bench.FORWARD, one)})
    return bench.render(cfg, args, (cfg.batch_size, 2 * cfg.digits), timed)


def deep_end_output(argv: list[str]) -> str:
    """deep_end's output, rendered by deep_end.render from the kept file; step: the first step of the
    first model taken again."""
    args = deep_end.parse_args(argv + ["--device", "cpu"])
    kept = kept_results("deep_end", deep_end.configuration(args))
    if args.what == "step":
        first = kept["steps"][0]  # the first step of the first model, again
        cfg = config.train_config(args, layers=first["layers"], arms=[first["arm"]], seed=first["seed"])
        model = deep_end.make_model(first["arm"], cfg)
        data = train_toy.ToyData(args.task, args.digits, first["seed"], "cpu")
        live = deep_end.step_changes(model, train_toy.make_step(model, cfg), next(data.batches(args.batch_size)),
                                     first["lr"], data.eval_input, first["seed"], groups=("all",))
        assert live["all"][0] == pytest.approx(first["changes"]["all"][0], rel=LIVE_CHECK_REL["one step"]), "kept steps are stale"
    return deep_end.render(kept["config"], kept, 0.0)


def test_a_few_real_steps_of_the_demo_reproduce_its_kept_history():
    """The Admin arm of the 48-layer demo, trained by train_arm to its first evaluation after step 0
    (20 steps), reproduces results/demo_48.json's history there (same seed, float32 bound)."""
    cfg = train_toy.parse_args(["--layers", "48", "--arms", "admin", "--device", "cpu"])
    kept = json.loads((LAB / "results/demo_48.json").read_text())["arms"]["admin"]["history"][:2]

    def stop_after_the_first_evaluation(i, model):
        if i > cfg.eval_every:
            raise KeyboardInterrupt  # train_arm keeps what ran, as on Ctrl-C
    data = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    live = train_toy.train_arm("admin", cfg, data, lambda line: None, watch=stop_after_the_first_evaluation)
    assert [h[0] for h in live.history] == [h[0] for h in kept] == [0, 20]
    for (_, loss, acc), (_, kept_loss, kept_acc) in zip(live.history, kept):
        assert loss == pytest.approx(kept_loss, rel=LIVE_CHECK_REL["trained"]) and acc == kept_acc


def test_one_kept_sweep_cell_trains_again_to_the_same_result():
    """The cheapest run of the stability map (results/stability_map.jsonl), trained again by
    sweep.run_point: the same verdict, steps and accuracy, and its final loss within a float32 bound."""
    args = sweep.parse_args(["--results", str(LAB / "results/stability_map.jsonl"), "--device", "cpu",
                             "--threads", "2"])
    kept = sweep.load_results(args.results, sweep.fixed_settings(args))
    cheapest = min(kept.values(), key=lambda r: (r["layers"] * r["steps_run"], sweep.run_key(r)))
    point = {k: cheapest[k] for k in ("arm", "layers", "lr", "warmup", "steps", "task", "seed", "omega")
             if k in cheapest} | {"omega": cheapest.get("omega", "closed")}
    live = sweep.run_point(point, args)
    assert (live["verdict"], live["steps_run"], live["accuracy"]) == (cheapest["verdict"], cheapest["steps_run"],
                                                                     cheapest["accuracy"]), (live, cheapest)
    assert live["final_loss"] == pytest.approx(cheapest["final_loss"], rel=LIVE_CHECK_REL["run"])


def test_one_kept_watched_step_is_recorded_again():
    """The first record (step 10) of the first 192-layer run of results/deep_end_watch_2e-3.json, trained
    again through deep_end.run_watch (train_arm with a watch): its loss, accuracy and output change."""
    kept = json.loads((LAB / "results/deep_end_watch_2e-3.json").read_text())
    argv = ["watch", "--layers", "192", "--arms", "admin", "--lr", "2e-3", "--warmup", "100", "--steps", "400",
            "--repeats", "1", "--device", "cpu"]
    args = deep_end.parse_args(argv)
    first = kept["runs"][0]["records"][0]

    def stop(line):
        raise KeyboardInterrupt  # the first record is made and logged: train_arm stops, as on Ctrl-C
    live = deep_end.run_watch(args, stop)[0]["records"][0]
    assert live["step"] == first["step"] == 10
    assert live["accuracy"] == first["accuracy"]
    for kind in ("loss", "change"):
        assert live[kind] == pytest.approx(first[kind], rel=LIVE_CHECK_REL["trained"]), kind


TINY = ["--d-model", "8", "--n-heads", "2", "--digits", "3", "--batch-size", "8", "--threads", "1", "--device", "cpu"]


def test_what_each_script_prints_is_its_render_of_what_it_returns(capsys):
    """main() prints as it goes; the docs are rendered by the script's render function from what main
    returns (--json): the two must be the same text, line for line (the total time apart)."""
    demo = ["--layers", "2", "--steps", "4", "--eval-every", "2", "--warmup", "1", *TINY]
    out = train_toy.main(demo)
    results = [report.arm_result(arm, r) for arm, r in out["arms"].items()]
    rendered = {"train_toy": report.render(train_toy.parse_args(demo), results, out["fold_error"], 0.0)}
    printed = {"train_toy": capsys.readouterr().out}
    out = measure.main(["--layers", "1,2", "--repeats", "2", *TINY])
    rendered["measure"], printed["measure"] = measure.render(out["config"], out, 0.0), capsys.readouterr().out
    for what in ("step", "watch"):
        out = deep_end.main([what, "--layers", "1,2" if what == "step" else "1", "--arms", "admin,vanilla",
                             "--steps", "4", "--warmup", "2", "--every", "2", "--repeats", "1", *TINY])
        rendered[what], printed[what] = deep_end.render(out["config"], out, 0.0), capsys.readouterr().out
    argv = ["--layers", "1", "--rounds", "2", *TINY]
    timed = bench.main(argv)
    args, cfg = bench.parse_args(argv)
    rendered["bench"] = bench.render(cfg, args, (cfg.batch_size, 2 * cfg.digits), timed)
    printed["bench"] = capsys.readouterr().out
    for script, text in rendered.items():
        total = re.compile(r"\(\d+\.\ds( in all)?\)$", re.M)  # main's total time, render's 0.0s
        assert total.sub("(#)", printed[script].rstrip()) == total.sub("(#)", text.rstrip()), script


def stock_layers_output(argv: list[str]) -> str:
    """stock_layers_example.render of the kept rows, after one live check: each kept run's step-0
    evaluation is what a freshly built model of that arm and init gives."""
    cfg, inits, _ = stock_layers_example.parse_args(argv + ["--device", "cpu"])
    settings = stock_layers_example.configuration(cfg, inits)
    kept = kept_results("stock_layers_example", settings)
    data = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, "cpu")
    for row in kept["rows"][:2]:  # vanilla under torch's init, and Admin: the arms differ from step 0
        model = stock_layers_example.make_stock_model(row["arm"], row["init"], cfg)
        live_loss, live_acc, _ = train_toy.evaluate(model, data)
        assert (live_loss, live_acc) == pytest.approx(tuple(row["history"][0][1:]), rel=1e-4), "stale rows"
    return stock_layers_example.render(settings, kept["rows"], 0.0)


RENDER = {"train_toy.py": demo_output, "lab.measure": measure_output, "lab.sweep": sweep_output,
          "lab.bench": bench_output, "lab.deep_end": deep_end_output,
          "examples.stock_layers": stock_layers_output}


def shell_outputs(path: Path) -> list[tuple[str, str]]:
    """(the ```bash block before it, the ```text block) for every ```text block that is not the output
    of the ```python block right before it."""
    found, bash, previous_end, previous_kind = [], None, 0, None
    text = path.read_text()
    for block in re.finditer(r"```(\w+)\n(.*?)```", text, flags=re.S):
        kind, body = block.groups()
        if kind == "bash":
            bash = body
        elif kind == "text" and not (previous_kind == "python" and not text[previous_end:block.start()].strip()):
            assert bash is not None, f"{path.name}: a ```text block with no command before it"
            found.append((bash, body))
        previous_end, previous_kind = block.end(), kind
    return found


def rendered(commands: str) -> str:
    outputs = []
    for line in commands.strip().splitlines():
        argv = shlex.split(line.split("&&")[-1].split("#")[0])
        program, args = (argv[2], argv[3:]) if argv[1:2] == ["-m"] else (argv[1], argv[2:])
        assert argv[0] == "python" and program in RENDER, f"no renderer for the command {line!r}"
        outputs.append(RENDER[program](args))
    return "\n".join(outputs)


@pytest.mark.parametrize("doc", ["README.md", "tutorial.md"])
def test_every_shown_shell_output_is_what_the_code_prints(doc):
    pairs = shell_outputs(REPO / doc)
    assert pairs or doc == "README.md"
    for commands, shown in pairs:
        mismatch = excerpt_mismatch(rendered(commands), shown)
        assert mismatch is None, f"{doc}, the output of\n{commands}\n{mismatch}"


def test_a_stale_configuration_line_turns_the_check_red():
    printed = rendered("python train_toy.py --layers 6 --json lab/results/demo_6.json")
    stale = printed.replace("steps=200, ", "").replace("eval_every=20, ", "eval_every=20, extra=1, ")
    assert excerpt_mismatch(printed, stale) is not None
    assert excerpt_mismatch(printed, printed.replace("lr=0.002", "lr=0.004")) is not None


# ---------------------------------------------------------------------------------------------------
# results/README.md, the lab notebook: it names every results file, and only files that are there
# ---------------------------------------------------------------------------------------------------

def notebook_names(text: str) -> set[str]:
    """The files results/README.md names: every `results/PATH` written alone in backticks."""
    return set(re.findall(r"`(lab/results/[^`\s]+)`", text))


def test_results_notebook_names_every_results_file_and_no_other():
    files = {p.relative_to(REPO).as_posix() for p in (LAB / "results").rglob("*") if p.is_file()}
    files.discard("lab/results/README.md")
    named = notebook_names((LAB / "results" / "README.md").read_text())
    assert not files - named, f"results/README.md does not name {sorted(files - named)}"
    assert not named - files, f"results/README.md names files that are not there: {sorted(named - files)}"
