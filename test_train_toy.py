"""Tests for the depth demo, train_toy.py: tiny models, a few steps each."""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_toy

ROOT = Path(__file__).parent
TINY = ["--layers", "1", "--d-model", "8", "--n-heads", "2", "--digits", "3", "--batch-size", "8",
        "--steps", "6", "--eval-every", "3", "--warmup", "2", "--threads", "1"]


def test_worked_example_in_the_docstring():
    inp, target = train_toy.to_example(torch.tensor([[3, 1, 4, 1]]), "reverse")
    sep, ign = train_toy.SEP, train_toy.IGNORE
    assert inp.tolist() == [[3, 1, 4, 1, sep, 1, 4, 1]]
    assert target.tolist() == [[ign, ign, ign, ign, 1, 4, 1, 3]]
    inp, target = train_toy.to_example(torch.tensor([[3, 1, 4, 1]]), "copy")
    assert inp.tolist() == [[3, 1, 4, 1, sep, 3, 1, 4]] and target[0, 4:].tolist() == [3, 1, 4, 1]
    assert "3 1 4 1 | 1 4 1 3" in train_toy.__doc__ and "- - - - 1 4 1 3" in train_toy.__doc__


def test_training_batches_never_contain_a_held_out_string():
    data = train_toy.ToyData("reverse", digits=2, batch_size=64, seed=0)  # 100 strings, 20 held out
    assert len(data.held_out_codes) == 20
    for _ in range(50):
        inp, _ = data.batch()
        assert not torch.isin(train_toy.string_codes(inp[:, :2]), data.held_out_codes).any()


def test_held_out_strings_are_a_fair_sample():
    """Every digit position of the held-out set averages about 4.5, as uniform digits do."""
    data = train_toy.ToyData("copy", digits=6, batch_size=4, seed=0)
    prompts = data.eval_input[:, :6].double()  # (128, 6)
    assert len(prompts) == 128 and len(set(map(tuple, prompts.tolist()))) == 128
    # Standard error of a mean of 128 uniform digits: 2.87 / sqrt(128) ≈ 0.25; allow four of them.
    assert ((prompts.mean(0) - 4.5).abs() < 1.0).all(), prompts.mean(0)


def test_tiny_end_to_end_run_through_the_command_line(tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "train_toy.py", *TINY, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("configuration: layers=1, task=reverse")
    result = json.loads(out.read_text())
    assert result["config"]["layers"] == 1 and result["config"]["threads"] == 1
    assert set(result["arms"]) == {"vanilla", "admin"}
    for arm in result["arms"].values():
        assert {"final_loss", "accuracy", "diverged", "diverged_at", "steps", "seconds",
                "history"} <= set(arm)
        assert 0.0 <= arm["accuracy"] <= 1.0 and arm["diverged"] is False and arm["diverged_at"] is None
        assert [h[0] for h in arm["history"]] == [0, 3, 6] and arm["steps"] == 6
        assert arm["history"][-1][1:] == [arm["final_loss"], arm["accuracy"]]
    assert "summary" in proc.stdout and "held-out examples" in proc.stdout
    assert "plain Post-LN, same logits (relative error < 1e-04: float32 rounding)" in proc.stdout


def test_same_seed_gives_identical_histories(capsys):
    first = train_toy.main(TINY + ["--seed", "5"])
    second = train_toy.main(TINY + ["--seed", "5"])
    other = train_toy.main(TINY + ["--seed", "6"])
    for arm in ("vanilla", "admin"):
        assert first["arms"][arm]["history"] == second["arms"][arm]["history"]
    assert first["arms"]["admin"]["history"] != other["arms"]["admin"]["history"]


def test_a_diverging_arm_is_reported_and_the_next_arm_still_runs(capsys):
    out = train_toy.main(TINY + ["--lr", "1e30", "--warmup", "0", "--arms", "vanilla,admin"])
    printed = capsys.readouterr().out
    for arm in ("vanilla", "admin"):
        result = out["arms"][arm]
        assert result["diverged"] is True and 0 <= result["diverged_at"] <= 6
        assert result["history"], f"{arm} never evaluated: it did not run"
        assert f"{arm} diverged at step {result['diverged_at']}; last finite loss" in printed
    assert "diverged at step" in printed.split("summary")[1]


def test_one_arm_diverging_leaves_the_other_to_learn(monkeypatch, capsys):
    """Poison only the vanilla model (a NaN weight after three steps); admin must run untouched."""
    real_make_model = train_toy.make_model

    def make_model(arm, args, seed):
        model = real_make_model(arm, args, seed)
        if arm == "vanilla":
            calls = {"n": 0}

            def poison(module, inputs):
                calls["n"] += 1
                if calls["n"] == 5:  # step-0 evaluation, 3 training steps, then this one
                    with torch.no_grad():
                        model.head.bias[0] = float("nan")
            model.register_forward_pre_hook(poison)
        return model

    monkeypatch.setattr(train_toy, "make_model", make_model)
    out = train_toy.main(TINY)
    assert out["arms"]["vanilla"]["diverged_at"] == 3
    assert out["arms"]["admin"]["diverged"] is False and out["arms"]["admin"]["steps"] == 6


def test_ctrl_c_prints_the_summary_of_what_ran(monkeypatch, capsys):
    real_batch, calls = train_toy.ToyData.batch, {"n": 0}

    def batch(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_batch(self)

    monkeypatch.setattr(train_toy.ToyData, "batch", batch)
    out = train_toy.main(TINY)
    printed = capsys.readouterr().out
    assert list(out["arms"]) == ["vanilla"] and out["arms"]["vanilla"]["interrupted"] is True
    assert out["arms"]["vanilla"]["steps"] == 2
    assert "summary" in printed and "(interrupted)" in printed


def test_measure_shows_vanilla_changing_more_than_admin_at_depth(tmp_path, capsys):
    path = tmp_path / "m.json"
    out = train_toy.main(["--measure", "1,8", "--d-model", "16", "--n-heads", "2", "--repeats", "3",
                          "--threads", "1", "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))
    rows = {(r["arm"], r["layers"]): r["output_change"] for r in out["measure"]["rows"]}
    assert set(rows) == {(a, d) for a in ("vanilla", "admin") for d in (1, 8)}
    assert all(v > 0 for v in rows.values())
    assert rows["vanilla", 8] > 2 * rows["admin", 8], rows
    for r in out["measure"]["rows"]:  # the median of the drawn models, and quartiles around it
        assert len(r["draws"]) == 3 and r["output_change"] == statistics.median(r["draws"])
        assert min(r["draws"]) <= r["q1"] <= r["output_change"] <= r["q3"] <= max(r["draws"])
    assert "vanilla/admin" in capsys.readouterr().out


def test_measured_change_is_quadratic_in_a_small_delta():
    """|ΔF|² / |F|² ∝ δ² while δ is small: the default δ is in that range even at depth, so the
    measurement does not depend on it (a tenth of δ gives the same change / δ² within 5%)."""
    args = train_toy.parse_args(["--measure", "24", "--arms", "vanilla,admin", "--repeats", "1",
                                 "--d-model", "16", "--n-heads", "2"])
    idx, _ = train_toy.ToyData("reverse", 6, 16, 0).batch()
    for arm in args.arms:
        per_delta = []
        for delta in (args.delta, args.delta / 10):
            model = train_toy.make_model(arm, argparse.Namespace(**{**vars(args), "layers": 24}), 0)
            per_delta.append(train_toy.output_change(model.double(), idx, delta, 0) / delta**2)
        assert per_delta[1] == pytest.approx(per_delta[0], rel=0.05), (arm, per_delta)


@pytest.mark.parametrize("argv, flag", [
    (["--layers", "0"], "--layers"), (["--layers", "-2"], "--layers"), (["--layers", "ten"], "--layers"),
    (["--steps", "2.5"], "--steps"), (["--task", "sort"], "--task"), (["--arms", "vanilla,bogus"], "--arms"),
    (["--lr", "0"], "--lr"), (["--lr", "-1e-3"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--d-model", "30", "--n-heads", "4"], "--n-heads"), (["--digits", "17"], "--digits"),
    (["--json", "/no/such/folder/out.json"], "--json"), (["--measure", "0,4"], "--measure"),
    (["--threads", "0"], "--threads")])
def test_bad_input_exits_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_toy.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"argument {flag}" in err and "Traceback" not in err, err


def test_bad_input_on_the_real_command_line_has_no_traceback():
    proc = subprocess.run([sys.executable, "train_toy.py", "--layers", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "argument --layers: must be a whole number >= 1, got '0'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit) as exit_info:
        train_toy.parse_args(["--plot", str(tmp_path / "curves.png")])
    assert exit_info.value.code == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_fold_verdict_says_rounding_below_the_bound_and_the_number_above_it():
    assert train_toy.fold_verdict(3e-7) == "same logits (relative error < 1e-04: float32 rounding)"
    assert train_toy.fold_verdict(2e-2) == "logits DIFFER (relative error 2.0e-02 >= 1e-04)"
