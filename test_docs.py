"""The docs run: every example in admin.py's docstring, README.md and tutorial.md, with its output.

A shown output is compared the way a reader reads it. Words, symbols and line structure must be
exactly as shown (runs of spaces count as one, so a wider number may shift a column). Whole numbers
(counts, indices, bounds such as `1e-12`) must be equal. A number shown with decimals must be within
DIGIT_UNITS units of its last shown digit: `1.63` stands for anything from 1.61 to 1.65. That absorbs
what differs between machines and torch versions — float32 results that land on the other side of a
rounding boundary, float64 results that differ in their 16th digit — and nothing a reader would call a
different result: for a number shown with three or more significant digits, a change of 10% fails.
So a doc shows every number it means with at least three significant digits, and shows no rounding
noise at all: an error that is rounding by construction is printed against a bound (`below 1e-12`).
"""

import contextlib
import doctest
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

import admin
import bench
import cli
import deep_end
import measure
import report
import stock_layers_example
import sweep
import train_toy

ROOT = Path(__file__).parent
DIGIT_UNITS = 2
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def allowed_difference(shown: str) -> float:
    """How far a printed number may be from the `shown` one: 0 for whole numbers, else DIGIT_UNITS
    units of the last shown digit (`2.017` → 0.002, `4.982e-06` → 2e-9)."""
    mantissa, _, exponent = shown.lower().partition("e")
    if "." not in mantissa:
        return 0.0
    decimals = len(mantissa.split(".")[1])
    return DIGIT_UNITS * 10.0 ** (int(exponent or 0) - decimals)


def output_mismatch(printed: str, shown: str) -> str | None:
    """None if `printed` reads as `shown` (module docstring), else what differs, line by line."""
    got, want = printed.rstrip().splitlines(), shown.rstrip().splitlines()
    if len(got) != len(want):
        return f"{len(got)} lines printed, {len(want)} shown"
    for n, (g, w) in enumerate(zip(got, want), 1):
        if NUMBER.sub("#", g).split() != NUMBER.sub("#", w).split():
            return f"line {n} reads differently:\n  printed: {g}\n  shown:   {w}"
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(w)):
            if abs(float(a) - float(b)) > allowed_difference(b) * (1 + 1e-9):  # 1e-9: decimal→binary
                return f"line {n}: printed {a} where the text shows {b} (± {allowed_difference(b):g})"
    return None


# ---------------------------------------------------------------------------------------------------
# The comparator itself
# ---------------------------------------------------------------------------------------------------

SHOWN = "vanilla  β_1 = 0.338   mean β = 0.352   β_96 = 0.258\nω ≈ 4.982e-06, 8 tensors"


@pytest.mark.parametrize("printed", [
    SHOWN,
    SHOWN.replace("0.338", "0.339").replace("0.258", "0.256"),  # the last digit, by one or two
    SHOWN.replace("4.982e-06", "4.984e-06"),
    SHOWN.replace("0.338   mean", "0.338    mean"),  # a shifted column
    SHOWN + "\n",
])
def test_comparator_accepts_the_last_digit_or_two_of_machine_difference(printed):
    assert output_mismatch(printed, SHOWN) is None


@pytest.mark.parametrize("printed, why", [
    (SHOWN.replace("0.352", "0.387"), "printed 0.387 where the text shows 0.352"),  # +10%
    (SHOWN.replace("0.338", "0.305"), "printed 0.305"),  # −10%
    (SHOWN.replace("0.338", "0.341"), "printed 0.341"),  # three units of the last digit
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


def test_allowed_difference_is_two_units_of_the_last_shown_digit():
    assert allowed_difference("2.017") == pytest.approx(0.002)
    assert allowed_difference("44.5") == pytest.approx(0.2)
    assert allowed_difference("4.982e-06") == pytest.approx(2e-9)
    assert allowed_difference("1e-12") == allowed_difference("96") == 0.0


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
    run_blocks(ROOT / "README.md")


def test_tutorial_blocks_run_in_order_and_print_what_the_text_shows():
    run_blocks(ROOT / "tutorial.md")


def test_tutorial_code_excerpts_are_the_code_as_it_is():
    """Each ```py excerpt (the code shown, not run) appears in admin.py, or in the file its first line
    names (`# file: NAME`): its lines, in order ("..." stands for lines left out)."""
    excerpts = re.findall(r"```py\n(.*?)```", (ROOT / "tutorial.md").read_text(), flags=re.S)
    assert len(excerpts) >= 6
    for excerpt in excerpts:
        lines = [raw.strip() for raw in excerpt.splitlines()]
        name = lines.pop(0)[len("# file: "):] if lines[0].startswith("# file: ") else "admin.py"
        source = [line.strip() for line in (ROOT / name).read_text().splitlines()]
        position = 0
        for line in lines:
            if line and line != "...":
                assert line in source[position:], f"tutorial excerpt line not in {name}: {line!r}"
                position = source.index(line, position) + 1


def test_tutorial_figures_exist_and_name_the_command_that_makes_them():
    text = (ROOT / "tutorial.md").read_text()
    figures = re.findall(r"!\[([^\]]+)\]\((figures/[^)]+\.png)\)", text)
    assert len(figures) >= 3, figures
    for alt, path in figures:
        assert (ROOT / path).stat().st_size > 10_000, f"{path} missing or empty"
        assert len(alt.split()) >= 10, f"alt text of {path} does not say what it shows"
        assert f"--plot {path}" in text or f"--out {path}" in text, f"no command in tutorial.md regenerates {path}"


def tutorial_sections() -> dict[int, str]:
    """tutorial.md's numbered sections ("## N. Title"): number → heading and text up to the next one."""
    parts = re.split(r"^## (\d+)\. ", (ROOT / "tutorial.md").read_text(), flags=re.M)
    return {int(n): body for n, body in zip(parts[1::2], parts[2::2])}


SECTION_POINTER = re.compile(r"Sections? (\d+)(?:–(\d+))?")


def test_readme_points_into_the_tutorial_where_it_says():
    """Every "Section N" of README.md exists, and every script that README names in backticks before
    the pointer ("(`python measure.py`): Section 3") is in that section's text."""
    sections, checked = tutorial_sections(), 0
    for item in (ROOT / "README.md").read_text().split("\n- "):
        start = 0
        for pointer in SECTION_POINTER.finditer(item):
            numbers = [int(n) for n in pointer.groups() if n]
            assert all(n in sections for n in numbers), f"README points to {pointer[0]}, not in tutorial.md"
            for script in re.findall(r"`[^`]*?(\w+\.py)\b[^`]*`", item[start:pointer.start()]):
                assert script in sections[numbers[0]], f"README: {script} is not in tutorial.md {pointer[0]}"
                checked += 1
            start = pointer.end()
    assert checked >= 8, checked


@pytest.mark.parametrize("path", sorted(p.name for p in ROOT.glob("*.py")))
def test_code_points_to_tutorial_sections_that_exist(path):
    sections = tutorial_sections()
    for pointer in re.finditer(r"tutorial\.md,? Sections? (\d+)(?: and (\d+))?", (ROOT / path).read_text()):
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
          (re.compile(r"\(\d+s in all\)"), "(#s in all)"),  # stock_layers_example.py: whole seconds
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
            if (not last or start + n == len(got)) and output_mismatch(window, segment) is None \
                    and settings(window) == settings(segment):
                position = start + n
                break
        else:
            where = "\n".join(got[position:position + n])
            return f"no printed lines read as:\n{segment}\nfirst candidate: {output_mismatch(where, segment)}"
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
    for path in sorted((ROOT / "results").glob("*.json")):
        kept = json.loads(path.read_text())
        made = {k: v for k, v in kept.get("config", {}).items() if k not in machine}
        if made == {k: v for k, v in config.items() if k not in machine} and ("arms" in kept) == (script == "train_toy"):
            return kept
    raise AssertionError(f"no results/*.json made by {script}.py with {config}: run the command with --json")


def without_plot(argv: list[str]) -> list[str]:
    """argv less --plot PATH: the checks would refuse it without matplotlib (optional; nothing is drawn)."""
    return [a for i, a in enumerate(argv) if "--plot" not in argv[max(i - 1, 0):i + 1]]


def parsed(parser, argv: list[str]):
    """The command's settings. --device cpu: the kept results were made on the CPU. --plot is set
    after the checks, which would refuse it without matplotlib (optional, and not drawn here)."""
    plot = argv[argv.index("--plot") + 1] if "--plot" in argv else None
    args = cli.finish(parser, parser.parse_args(without_plot(argv) + ["--device", "cpu"]))
    args.plot = plot
    return args


def demo_output(argv: list[str]) -> str:
    args = parsed(train_toy.build_parser(), argv)
    train_toy.fill_schedule(args)
    config = cli.configuration(args)
    kept = kept_results("train_toy", config)
    data = train_toy.ToyData(args.task, args.digits, args.seed, args.device)
    lines, results = ["configuration: " + ", ".join(f"{k}={v}" for k, v in config.items())], []
    for arm, r in kept["arms"].items():
        _, loss, acc = r["history"][0]
        live_loss, live_acc, _ = train_toy.evaluate(train_toy.make_model(arm, args.layers, args, args.seed),
                                                    data)
        assert (live_loss, live_acc) == pytest.approx((loss, acc), rel=1e-4), f"{arm}: kept results are stale"
        lines.append(train_toy.arm_title(arm, args))
        lines += [report.eval_line(arm, step, loss, acc, 0.0) for step, loss, acc in r["history"]]
        if r["diverged_at"] is not None:
            lines.append(f"  {arm} diverged at step {r['diverged_at']}; last finite loss …")
        results.append(train_toy.ArmResult(arm, r["history"], r["steps"], r["diverged_at"], None, r["seconds"],
                                           r["train_ms_per_step"], r["examples"], r["interrupted"]))
    lines.append(train_toy.summary(results, kept["fold_error"], args) + "  (0.0s in all)")
    return "\n".join(lines + ([f"wrote {args.plot}"] if args.plot else []))


def measure_output(argv: list[str]) -> str:
    args = parsed(measure.build_parser(), argv)
    config = cli.configuration(args)
    rows = kept_results("measure", config)["rows"]
    first = rows[0]
    idx, _ = next(train_toy.ToyData(args.task, args.digits, args.seed, "cpu").batches(args.batch_size))
    model = train_toy.make_model(first["arm"], first["layers"], args, args.seed).double()
    live = measure.output_change(model, idx, args.delta, args.seed)
    assert live == pytest.approx(first["draws"][0], rel=1e-6), "kept measurement is stale"
    lines = ["configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()), measure.header(args)]
    lines += [measure.depth_line(rows, d) for d in sorted(args.layers)]
    lines += [measure.table(rows, args.arms), "(0.0s)"] + ([f"wrote {args.plot}"] if args.plot else [])
    return "\n".join(lines)


def sweep_output(argv: list[str]) -> str:
    """The tables at a sweep's end (--report: of a results file made on any device, a GPU's too)."""
    args = sweep.parse_args(without_plot(argv) + ([] if "--report" in argv else ["--device", "cpu"]))
    return sweep.summary(args, sweep.load_results(args.results, args.fixed))[1]


def bench_output(argv: list[str]) -> str:
    p = bench.build_parser()
    args = cli.finish(p, p.parse_args(argv + ["--device", "cpu"]))
    inp, one = torch.zeros(args.batch_size, 2 * args.digits), [1.0] * 10  # timings: compared by format
    if args.stuck:
        return "\n".join([bench.header(args, inp)] + [bench.stuck_line(flush, {"vanilla": one, "admin": one})
                                                       for flush in (False, True)])
    return "\n".join([bench.header(args, inp), "training step   " + bench.report(dict.fromkeys(bench.TRAINED, one)),
                      "forward pass    " + bench.report(dict.fromkeys(bench.FORWARD, one))])


def deep_end_output(argv: list[str]) -> str:
    args = deep_end.parse_args(argv + ["--device", "cpu"])
    config = cli.configuration(args)
    kept = kept_results("deep_end", config)
    lines = [deep_end.config_line(config)]
    if args.what == "step":
        first = kept["steps"][0]  # the first step of the first model, again
        model = deep_end.make_model(first["arm"], first["layers"], args, first["seed"])
        data = train_toy.ToyData(args.task, args.digits, first["seed"], "cpu")
        live = deep_end.step_changes(model, train_toy.make_step(model, args), next(data.batches(args.batch_size)),
                                     first["lr"], data.eval_input, first["seed"])
        assert live["all"][0] == pytest.approx(first["changes"]["all"][0], rel=1e-2), "kept steps are stale"
        lines += [deep_end.step_line(kept["steps"], arm, layers) for layers in args.layers for arm in args.arms]
    else:  # a watched run takes minutes: the kept records are shown as they were printed
        lines += [deep_end.watch_line(run["arm"], run["seed"], r, 0.0) for run in kept["runs"] for r in run["records"]]
        lines.append(deep_end.watch_table(kept["runs"]))
    return "\n".join(lines + ["(0.0s)"])


def stock_layers_output(argv: list[str]) -> str:
    """stock_layers_example.render of the kept rows, after one live check: each kept run's step-0
    evaluation is what a freshly built model of that arm and init gives."""
    args = stock_layers_example.parse_args(argv + ["--device", "cpu"])
    config = cli.configuration(args, skip=("json", "plot", "cuda_graph", "omega"))
    kept = kept_results("stock_layers_example", config)
    data = train_toy.ToyData(args.task, args.digits, args.seed, "cpu")
    for row in kept["rows"][:2]:  # vanilla under torch's init, and Admin: the arms differ from step 0
        model = stock_layers_example.make_stock_model(row["arm"], row["init"], args)
        live_loss, live_acc, _ = train_toy.evaluate(model, data)
        assert (live_loss, live_acc) == pytest.approx(tuple(row["history"][0][1:]), rel=1e-4), "stale rows"
    return stock_layers_example.render(config, kept["rows"], 0.0)


RENDER = {"train_toy.py": demo_output, "measure.py": measure_output, "sweep.py": sweep_output,
          "bench.py": bench_output, "deep_end.py": deep_end_output,
          "stock_layers_example.py": stock_layers_output}


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
        assert argv[0] == "python" and argv[1] in RENDER, f"no renderer for the command {line!r}"
        outputs.append(RENDER[argv[1]](argv[2:]))
    return "\n".join(outputs)


@pytest.mark.parametrize("doc", ["README.md", "tutorial.md"])
def test_every_shown_shell_output_is_what_the_code_prints(doc):
    pairs = shell_outputs(ROOT / doc)
    assert pairs or doc == "README.md"
    for commands, shown in pairs:
        mismatch = excerpt_mismatch(rendered(commands), shown)
        assert mismatch is None, f"{doc}, the output of\n{commands}\n{mismatch}"


def test_a_stale_configuration_line_turns_the_check_red():
    printed = rendered("python train_toy.py --layers 6 --json results/demo_6.json")
    stale = printed.replace("steps=200, ", "").replace("eval_every=20, ", "eval_every=20, extra=1, ")
    assert excerpt_mismatch(printed, stale) is not None
    assert excerpt_mismatch(printed, printed.replace("lr=0.002", "lr=0.004")) is not None


# ---------------------------------------------------------------------------------------------------
# results/README.md, the lab notebook: it names every results file, and only files that are there
# ---------------------------------------------------------------------------------------------------

def notebook_names(text: str) -> set[str]:
    """The files results/README.md names: every `results/PATH` written alone in backticks."""
    return set(re.findall(r"`(results/[^`\s]+)`", text))


def test_results_notebook_names_every_results_file_and_no_other():
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "results").rglob("*") if p.is_file()}
    files.discard("results/README.md")
    named = notebook_names((ROOT / "results" / "README.md").read_text())
    assert not files - named, f"results/README.md does not name {sorted(files - named)}"
    assert not named - files, f"results/README.md names files that are not there: {sorted(named - files)}"
