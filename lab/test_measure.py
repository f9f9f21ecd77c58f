"""Tests for measure.py, the output-change experiment: tiny models, float64."""

import json
import statistics
import sys

import pytest

from lab import cli
from lab import config
from lab import measure
import train_toy
from lab.testing_tools import exit_2_error, run_as_main


def test_measure_shows_vanilla_changing_more_than_admin_at_depth(tmp_path, capsys):
    path = tmp_path / "m.json"
    out = measure.main(["--layers", "1,8", "--d-model", "16", "--n-heads", "2", "--repeats", "3",
                        "--threads", "1", "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))
    rows = {(r["arm"], r["layers"]): r["output_change"] for r in out["rows"]}
    assert set(rows) == {(a, d) for a in ("vanilla", "admin") for d in (1, 8)}
    assert all(v > 0 for v in rows.values())
    assert rows["vanilla", 8] > 2 * rows["admin", 8], rows
    for r in out["rows"]:  # the median of the drawn models, and quartiles around it
        assert len(r["draws"]) == 3 and r["output_change"] == statistics.median(r["draws"])
        assert min(r["draws"]) <= r["q1"] <= r["output_change"] <= r["q3"] <= max(r["draws"])
    assert "vanilla/admin" in capsys.readouterr().out


def test_measured_change_is_quadratic_in_a_small_delta():
    """|ΔF|² / |F|² ∝ δ² while δ is small: the default δ is in that range even at depth, so the
    measurement does not depend on it (a tenth of δ gives the same change / δ² within 5%)."""
    p = measure.build_parser()
    args = cli.finish(p, p.parse_args(["--arms", "vanilla,admin", "--d-model", "16", "--n-heads", "2",
                                       "--device", "cpu"]))
    idx, _ = next(train_toy.ToyData("reverse", 6, 0).batches(16))
    for arm in args.arms:
        per_delta = []
        for delta in (args.delta, args.delta / 10):
            model = train_toy.make_model(arm, config.train_config(args, layers=24, arms=[arm], seed=0))
            per_delta.append(measure.output_change(model.double(), idx, delta, 0) / delta**2)
        assert per_delta[1] == pytest.approx(per_delta[0], rel=0.05), (arm, per_delta)


@pytest.mark.parametrize("argv, words", [
    (["--layers", "0,4"], "argument --layers"), (["--layers", "4,4"], "argument --layers"),
    (["--delta", "0"], "argument --delta"), (["--repeats", "0"], "argument --repeats"),
    (["--arms", "bogus"], "argument --arms"), (["--json", "/no/such/folder/out.json"], "argument --json"),
    (["--steps", "5"], "unrecognized arguments: --steps 5")])  # measure trains nothing: no --steps
def test_bad_input_exits_2_naming_the_flag(argv, words, capsys):
    assert words in exit_2_error(measure.main, argv, capsys)


def test_runs_on_its_own_from_the_command_line():
    code, out, err = run_as_main("lab.measure", ["--layers", "1,2", "--repeats", "1", "--d-model", "8",
                                                "--n-heads", "2", "--threads", "1"])
    assert code == 0, err
    assert out.startswith("configuration: layers=[1, 2], arms=['vanilla', 'admin']")
    assert "From 1 to 2 layers (2x the sub-layers) the median output change grew" in out


def test_plot_without_matplotlib_runs_to_the_end_and_says_how_to_get_the_figure(monkeypatch, tmp_path):
    """The README's install has no matplotlib: a core command's --plot is a bonus, never a reason to stop."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    png = tmp_path / "growth.png"
    code, out, err = run_as_main("lab.measure", ["--layers", "1,2", "--repeats", "1", "--d-model", "8",
                                                "--n-heads", "2", "--threads", "1", "--plot", str(png)])
    last = out.rstrip().splitlines()[-1]
    assert code == 0 and not png.exists(), err
    assert str(png) in last and "pip install matplotlib" in last
