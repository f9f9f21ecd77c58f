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
import re
from pathlib import Path

import pytest

import admin

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
        assert f"--plot {path}" in text, f"no command in tutorial.md regenerates {path}"
