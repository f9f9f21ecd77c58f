"""Tests for the stability map, sweep.py: tiny models, a few steps per run."""

import json
import sys
from pathlib import Path

import pytest

from lab import cli
from lab import config
from lab import sweep
import train_toy
from lab.testing_tools import TINY_RUN, command_line_error, exit_2_error

ROOT = Path(__file__).parent
TINY = TINY_RUN


def grid(tmp_path, *extra, name="results.jsonl"):
    return TINY + ["--results", str(tmp_path / name), *extra]


def test_a_2x2_grid_end_to_end(tmp_path, capsys):
    out = sweep.main(grid(tmp_path, "--arms", "vanilla,admin", "--layers", "1,2", "--lr", "1e-3",
                          "--seed", "0", "--json", str(tmp_path / "map.json")))
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "map.json").read_text()) == json.loads(json.dumps(out))
    assert [(r["arm"], r["layers"]) for r in out["runs"]] == [
        ("vanilla", 1), ("vanilla", 2), ("admin", 1), ("admin", 2)]
    keys = {"arm", "layers", "lr", "warmup", "steps", "task", "seed", "omega", "accuracy", "final_loss",
            "verdict", "diverged", "steps_run", "seconds"}
    assert all(set(r) == keys for r in out["runs"])
    assert out["config"]["d_model"] == 8 and out["config"]["layers"] == [1, 2]
    assert "[4/4]" in printed and "about" in printed and "estimate" in printed
    assert "vanilla: runs that learned" in printed and "admin: runs that learned" in printed
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["fixed"]["d_model"] == 8 and len(lines) == 5


def test_one_grid_point_is_exactly_the_train_toy_run(tmp_path, capsys):
    point = ["--layers", "2", "--lr", "3e-3", "--warmup", "1", "--seed", "4", "--task", "copy"]
    swept = sweep.main(grid(tmp_path, "--arms", "admin", *point))["runs"][0]
    alone = train_toy.main(TINY + ["--arms", "admin", *point])["arms"]["admin"]
    assert swept["accuracy"] == alone["accuracy"] and swept["final_loss"] == alone["final_loss"]
    assert swept["steps_run"] == alone["steps"] and swept["verdict"] == alone["verdict"]
    assert swept["diverged"] == alone["diverged"]


def test_a_second_run_retrains_nothing_and_gives_the_same_json(tmp_path, monkeypatch, capsys):
    argv = grid(tmp_path, "--arms", "vanilla,admin", "--layers", "1", "--lr", "1e-3,2e-3", "--seed", "0")
    first = sweep.main(argv)

    def no_training(*args, **kwargs):
        raise AssertionError("a run already in the results file was trained again")

    monkeypatch.setattr(sweep, "run_point", no_training)
    second = sweep.main(argv)
    assert second == first
    assert "4 already in" in capsys.readouterr().out


def test_an_interrupted_sweep_keeps_the_finished_runs(tmp_path, monkeypatch, capsys):
    argv = grid(tmp_path, "--arms", "vanilla", "--layers", "1", "--lr", "1e-3,2e-3,4e-3", "--seed", "0")
    real, calls = sweep.run_point, {"n": 0}

    def interrupt_third(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sweep, "run_point", interrupt_third)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(argv)
    assert exit_info.value.code == 130
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1 + 2
    monkeypatch.setattr(sweep, "run_point", real)
    out = sweep.main(argv)  # goes on: only the third run is trained
    assert "2 already in" in capsys.readouterr().out and len(out["runs"]) == 3


def test_a_line_cut_short_by_a_crash_is_run_again(tmp_path, capsys):
    argv = grid(tmp_path, "--arms", "admin", "--layers", "1", "--lr", "1e-3", "--seed", "0,1")
    first = sweep.main(argv)
    path = tmp_path / "results.jsonl"
    path.write_text(path.read_text()[:-20])  # the last run's line, half written
    second = sweep.main(argv)
    assert "1 already in" in capsys.readouterr().out.split("sweep:")[-1]
    assert second["runs"][1] == {**first["runs"][1], "seconds": second["runs"][1]["seconds"]}


def test_a_results_file_with_other_fixed_settings_is_refused(tmp_path, capsys):
    sweep.main(grid(tmp_path, "--arms", "admin", "--layers", "1", "--lr", "1e-3", "--seed", "0"))
    other = grid(tmp_path, "--arms", "admin", "--layers", "1", "--lr", "1e-3", "--seed", "0")
    other[other.index("--d-model") + 1] = "16"
    err = exit_2_error(sweep.main, other, capsys)
    assert "argument --results" in err and "d_model=8 (now 16)" in err


def test_two_jobs_give_the_same_runs_as_one(tmp_path, capsys):
    base = ["--arms", "vanilla,admin", "--layers", "1,2", "--lr", "2e-3", "--seed", "0"]
    one = sweep.main(grid(tmp_path, *base, "--jobs", "1", name="one.jsonl"))
    two = sweep.main(grid(tmp_path, *base, "--jobs", "2", name="two.jsonl"))
    strip = lambda runs: [{k: v for k, v in r.items() if k != "seconds"} for r in runs]  # noqa: E731
    assert strip(one["runs"]) == strip(two["runs"])


def test_the_table_marks_divergence_and_counts_seeds():
    args = sweep.parse_args(["--arms", "admin", "--layers", "6,48", "--lr", "2e-3", "--seed", "0,1",
                             "--results", "/tmp/never-written.jsonl"])
    runs = [{"arm": "admin", "layers": 6, "lr": 2e-3, "warmup": 50, "steps": 200, "task": "reverse",
             "seed": s, "verdict": "learned", "diverged": False} for s in (0, 1)]
    runs.append({**runs[0], "layers": 48, "verdict": "diverged at step 3", "diverged": True})
    table = sweep.tables(runs, args)
    assert "    0.002 |        2/2       0/1!" in table, table


@pytest.mark.parametrize("argv, flag", [
    (["--lr", ""], "--lr"), (["--lr", "0"], "--lr"), (["--lr", "-1e-3"], "--lr"), (["--lr", "fast"], "--lr"),
    (["--lr", "1e-3,1e-3"], "--lr"), (["--layers", "6,,12"], "--layers"), (["--layers", "0"], "--layers"),
    (["--arms", "admin,bogus"], "--arms"), (["--seed", "1,1"], "--seed"), (["--task", "sort"], "--task"),
    (["--jobs", "0"], "--jobs"), (["--results", "/no/such/folder/r.jsonl"], "--results"),
    (["--d-model", "30", "--n-heads", "4"], "--n-heads"),
    (["--warmup", "deep"], "--warmup"), (["--warmup", "-1"], "--warmup"), (["--steps", "+0"], "--steps"),
    (["--steps", "+x"], "--steps"), (["--edge", "--lr", "1e-3,2e-3"], "--lr"),
    (["--report", "--results", "/no/such/file.jsonl"], "--results"),
])
def test_bad_input_exits_2_naming_the_flag(argv, flag, capsys):
    assert f"argument {flag}" in exit_2_error(sweep.parse_args, argv, capsys)


def test_bad_input_on_the_real_command_line_has_no_traceback():
    assert "argument --lr: must be a positive number, got '-1'" in command_line_error("lab.sweep", ["--lr", "1e-3,-1"])


def test_the_sweep_takes_train_toys_device_flag(tmp_path, capsys):
    args = sweep.parse_args(["--device", "cpu", "--results", str(tmp_path / "r.jsonl")])
    assert sweep.fixed_settings(args)["device"] == "cpu"
    absent = next(d for d in ("cuda", "mps") if d not in cli.available_devices())
    err = exit_2_error(sweep.parse_args, ["--device", absent, "--results", str(tmp_path / "r.jsonl")], capsys)
    assert f"argument --device: {absent} is not available" in err


def test_plot_without_matplotlib_is_no_reason_to_stop(monkeypatch, capsys, tmp_path):
    """A figure is a bonus: without matplotlib --plot is accepted, and the run says how to get it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    args = sweep.parse_args(["--plot", str(tmp_path / "map.png"), "--results", str(tmp_path / "r.jsonl")])
    assert args.plot == str(tmp_path / "map.png")


def test_omega_varies_the_admin_arm_alone_and_old_results_read_as_closed_form(tmp_path, capsys):
    argv = grid(tmp_path, "--arms", "vanilla,admin", "--layers", "1", "--lr", "1e-3", "--seed", "0",
                "--omega", "closed,profiled")
    out = sweep.main(argv)
    assert [(r["arm"], r["omega"]) for r in out["runs"]] == [
        ("vanilla", "closed"), ("admin", "closed"), ("admin", "profiled")]
    printed = capsys.readouterr().out
    assert "admin (profiled ω): runs that learned" in printed
    alone = train_toy.main(TINY + ["--arms", "admin", "--layers", "1", "--lr", "1e-3", "--omega", "profiled"])
    assert out["runs"][2]["final_loss"] == alone["arms"]["admin"]["final_loss"]
    assert out["runs"][2]["final_loss"] != out["runs"][1]["final_loss"]
    old = {k: v for k, v in out["runs"][1].items() if k != "omega"}  # a line written before --omega
    assert sweep.run_key(old) == sweep.run_key(out["runs"][1])


# ---------------------------------------------------------------------------------------------------
# --edge: the walk on the ladder, checked against a stand-in trainer whose edge is known
# ---------------------------------------------------------------------------------------------------


def test_the_ladder_is_sqrt2_apart_and_holds_the_round_rates():
    ratios = [b / a for a, b in zip(sweep.LADDER, sweep.LADDER[1:])]
    # rounding to 3 figures moves a rung by at most 0.05/1.00 = 0.5%, so a ratio by at most about 1%
    assert all(abs(r / 2 ** 0.5 - 1) < 1.01e-2 for r in ratios)
    assert {2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2} <= set(sweep.LADDER)
    assert all(sweep.LADDER[sweep.rung(lr)] == lr for lr in sweep.LADDER)


@pytest.mark.parametrize("warmup, steps, layers, want", [
    (100, "+300", 384, (100, 400)), ("layers", "+300", 192, (192, 492)), ("layers", 500, 48, (48, 500)),
    (50, 200, 6, (50, 200))])
def test_a_schedule_spec_resolves_at_each_depth(warmup, steps, layers, want):
    assert sweep.schedule(warmup, steps, layers) == want


EDGE = {("admin", 2): 2e-3, ("admin", 4): 1e-3, ("preln", 2): 1.0, ("preln", 4): 1e-4}


def stand_in(point, args):
    """Learns exactly when lr <= EDGE[arm, layers], except seed 1 above half the edge."""
    edge = EDGE[point["arm"], point["layers"]] * (2 if point["warmup"] == point["layers"] else 1)
    ok = point["lr"] <= (edge / 2 if point["seed"] == 1 else edge)
    return {**point, "accuracy": float(ok), "final_loss": 0.0, "verdict": "learned" if ok else "did not learn",
            "diverged": False, "steps_run": point["steps"], "seconds": 0.0}


def test_the_walk_finds_each_edge_from_any_first_rung(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "run_point", stand_in)
    trained = []
    monkeypatch.setattr(sweep, "append_line", lambda path, run: trained.append(run))
    for first in ("2.5e-4", "1e-3", "0.032"):
        trained.clear()
        out = sweep.main(["--edge", "--arms", "admin,preln", "--layers", "2,4", "--warmup", "100,layers",
                          "--steps", "+300", "--seed", "0,1,2", "--lr", first,
                          "--results", str(tmp_path / f"edge_{first}.jsonl")])
        got = {(e["arm"], e["layers"], e["warmup"]): (e["found"], e["largest_lr"], e["failing_lr"])
               for e in out["edges"]}
        # the edge is where seed 1 stops learning: half the stand-in's edge, as a rung of the ladder
        want_admin = {(2, 100): (1e-3, 1.41e-3), (4, 100): (5e-4, 7.07e-4), (2, 2): (2e-3, 2.83e-3),
                      (4, 4): (1e-3, 1.41e-3)}
        for (layers, warmup), (largest, failing) in want_admin.items():
            assert got["admin", layers, warmup] == (True, largest, failing), (first, layers, warmup)
        assert got["preln", 2, 100] == (True, 0.032, None)  # the top of the ladder passes
        assert got["preln", 4, 100] == (True, None, 2.5e-4)  # even the bottom fails
        runs = [r for r in trained if "fixed" not in r]
        assert len(runs) == len({sweep.run_key(r) for r in runs})  # no run twice
        fails = [r for r in runs if r["verdict"] != "learned"]
        # one worker stops a rung at its first seed that fails: no failing rung has a seed after it
        for r in fails:
            later = [s for s in runs if s["seed"] > r["seed"] and
                     (s["arm"], s["layers"], s["warmup"], s["lr"]) == (r["arm"], r["layers"], r["warmup"], r["lr"])]
            assert later == []
    printed = capsys.readouterr().out
    assert "largest learning rate at which all 3 seeds learned: warmup layers, steps +300" in printed


def test_report_trains_nothing_and_reads_the_edges_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "run_point", stand_in)
    argv = ["--edge", "--arms", "admin", "--layers", "2,4", "--warmup", "100", "--steps", "+300",
            "--seed", "0,1", "--lr", "1e-3", "--results", str(tmp_path / "e.jsonl")]
    made = sweep.main(argv)

    def no_training(*args, **kwargs):
        raise AssertionError("--report trained a run")

    monkeypatch.setattr(sweep, "run_point", no_training)
    assert sweep.main(argv + ["--report"])["edges"] == made["edges"]
    # a walk cut short: its edge is a bracket, not a value
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:3]) + "\n")
    cut = sweep.main(argv[:-1] + [str(tmp_path / "cut.jsonl"), "--report"])["edges"]
    assert not all(e["found"] for e in cut)
    assert sweep.edge_text({"found": False, "largest_lr": 1e-3, "failing_lr": None}) == ">=0.001"
    assert sweep.edge_text({"found": False, "largest_lr": 1e-3, "failing_lr": 4e-3}) == "0.001-0.004?"
    assert sweep.edge_text({"found": True, "largest_lr": 1e-3, "failing_lr": 1.41e-3}) == "0.001"


def test_a_run_cut_short_is_not_written_as_a_result(tmp_path, monkeypatch, capsys):
    real = train_toy.train_arm

    def interrupted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.interrupted = True  # as train_arm returns on Ctrl-C (or timeout -s INT)
        return result

    monkeypatch.setattr(train_toy, "train_arm", interrupted)
    with pytest.raises(SystemExit):
        sweep.main(grid(tmp_path, "--arms", "admin", "--layers", "1", "--lr", "1e-3", "--seed", "0"))
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1  # the header alone


def test_the_demos_deep_learning_rates_are_rungs_of_the_ladder():
    """So the map's runs at 96, 192 and 384 layers are the demo's own runs there."""
    for layers in (96, 192, 384):
        assert config.schedule_for(layers)["lr"] in sweep.LADDER
