"""Tests for the depth demo, train_toy.py: tiny models, a few steps each."""

import json
import sys
from pathlib import Path

import pytest
import torch

from lab import config
from lab import report
import train_toy
from lab.testing_tools import TINY_RUN, command_line_error, exit_2_error, run_as_main

ROOT = Path(__file__).parent
TINY = ["--layers", "1", *TINY_RUN]


def test_worked_example_in_the_docstring():
    inp, target = train_toy.to_example(torch.tensor([[3, 1, 4, 1]]), "reverse")
    sep, ign = train_toy.SEP, train_toy.IGNORE
    assert inp.tolist() == [[3, 1, 4, 1, sep, 1, 4, 1]]
    assert target.tolist() == [[ign, ign, ign, ign, 1, 4, 1, 3]]
    inp, target = train_toy.to_example(torch.tensor([[3, 1, 4, 1]]), "copy")
    assert inp.tolist() == [[3, 1, 4, 1, sep, 3, 1, 4]] and target[0, 4:].tolist() == [3, 1, 4, 1]
    assert "3 1 4 1 | 1 4 1 3" in train_toy.__doc__ and "- - - - 1 4 1 3" in train_toy.__doc__


def test_training_batches_never_contain_a_held_out_string():
    data = train_toy.ToyData("reverse", digits=2, seed=0)  # 100 strings, 20 held out
    assert len(data.held_out_codes) == 20
    for _, (inp, _) in zip(range(50), data.batches(64)):
        assert not torch.isin(train_toy.string_codes(inp[:, :2]), data.held_out_codes).any()


def test_every_stream_of_batches_is_the_same_so_every_arm_trains_on_the_same_data():
    data = train_toy.ToyData("copy", digits=4, seed=3)
    first, second = data.batches(8), data.batches(8)
    a = [next(first)[0] for _ in range(5)]
    assert all(torch.equal(x, next(second)[0]) for x in a)
    assert not torch.equal(a[0], a[1]), "the stream repeats one batch"


def test_digits_are_0_to_9_and_every_batch_asks_for_the_task():
    """Kills: a digit 10 (the separator's token) drawn; a batch or the held-out set made for another
    task than the data's (reverse: the answer is the prompt reversed)."""
    digits = train_toy.digit_strings(2000, 1, torch.Generator().manual_seed(0))
    assert set(digits.flatten().tolist()) == set(range(10))  # P(a digit missing) < 10 · 0.9^2000
    data = train_toy.ToyData("reverse", digits=3, seed=0)
    for inp, target in [next(data.batches(8)), (data.eval_input, data.eval_target)]:
        assert torch.equal(target[:, 3:], inp[:, :3].flip(1)), "not the reversed prompt"


def test_a_string_code_is_the_digits_read_as_one_number():
    """Kills: a code that two strings share (digit k weighted 10·k instead of 10^k): the held-out
    set would then clash with training strings it does not equal."""
    codes = train_toy.string_codes(torch.tensor([[3, 1, 4], [0, 0, 9], [9, 0, 0]]))
    assert codes.tolist() == [3 + 10 * 1 + 100 * 4, 900, 9]  # digit k weighs 10**k
    every = torch.cartesian_prod(*[torch.arange(10)] * 3)  # all 1000 strings of 3 digits
    assert len(torch.unique(train_toy.string_codes(every))) == 1000, "two strings share a code"


def test_seed_0_holds_out_the_strings_the_kept_demo_was_evaluated_on():
    """Kills: the held-out set drawn otherwise (more or fewer candidates, digits read back wrongly).
    results/demo_48.json, written by the real 48-layer run, lists its first three held-out examples."""
    kept = json.loads((ROOT / "results/demo_48.json").read_text())["arms"]["admin"]["examples"]
    data = train_toy.ToyData("reverse", digits=6, seed=0)
    for k, line in enumerate(kept):
        asked, expected = (" ".join(map(str, t.tolist())) for t in (data.eval_input[k, :6], data.eval_target[k, 6:]))
        assert line.startswith(f"reversed {asked} -> expected {expected}, "), (k, line)


def test_held_out_strings_are_a_fair_sample():
    """Every digit position of the held-out set averages about 4.5, as uniform digits do."""
    data = train_toy.ToyData("copy", digits=6, seed=0)
    prompts = data.eval_input[:, :6].double()  # (128, 6)
    assert len(prompts) == 128 and len(set(map(tuple, prompts.tolist()))) == 128
    # Standard error of a mean of 128 uniform digits: 2.87 / sqrt(128) ≈ 0.25; allow four of them.
    assert ((prompts.mean(0) - 4.5).abs() < 1.0).all(), prompts.mean(0)


def test_tiny_end_to_end_run_through_the_command_line(tmp_path):
    out = tmp_path / "run.json"
    code, stdout, stderr = run_as_main("train_toy.py", [*TINY, "--json", str(out)])
    assert code == 0, stderr
    assert stdout.startswith("configuration: layers=1, arms=['vanilla', 'admin'], steps=6")
    result = json.loads(out.read_text())
    assert result["config"]["layers"] == 1 and result["config"]["threads"] == 1
    assert set(result["arms"]) == {"vanilla", "admin"}
    for arm in result["arms"].values():
        assert {"final_loss", "accuracy", "diverged", "diverged_at", "steps", "seconds",
                "history"} <= set(arm)
        assert 0.0 <= arm["accuracy"] <= 1.0 and arm["diverged"] is False and arm["diverged_at"] is None
        assert [h[0] for h in arm["history"]] == [0, 3, 6] and arm["steps"] == 6
        assert arm["history"][-1][1:] == [arm["final_loss"], arm["accuracy"]]
    assert "summary" in stdout and "held-out examples" in stdout
    assert "plain Post-LN, same logits (relative error < 1e-04: float32 rounding)" in stdout


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

    def make_model(arm, cfg):
        model = real_make_model(arm, cfg)
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
    real_batches = train_toy.ToyData.batches

    def batches(self, batch_size):
        for n, batch in enumerate(real_batches(self, batch_size)):
            if n == 2:  # Ctrl-C while the third batch is drawn
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(train_toy.ToyData, "batches", batches)
    out = train_toy.main(TINY)
    printed = capsys.readouterr().out
    assert list(out["arms"]) == ["vanilla"] and out["arms"]["vanilla"]["interrupted"] is True
    assert out["arms"]["vanilla"]["steps"] == 2
    assert "summary" in printed and "(interrupted)" in printed


@pytest.mark.parametrize("argv, flag", [
    (["--layers", "0"], "--layers"), (["--layers", "-2"], "--layers"), (["--layers", "ten"], "--layers"),
    (["--steps", "2.5"], "--steps"), (["--task", "sort"], "--task"), (["--arms", "vanilla,bogus"], "--arms"),
    (["--lr", "0"], "--lr"), (["--lr", "-1e-3"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--d-model", "30", "--n-heads", "4"], "--n-heads"), (["--digits", "17"], "--digits"),
    (["--json", "/no/such/folder/out.json"], "--json"), (["--arms", "vanilla", "--omega", "profiled"], "--omega"),
    (["--threads", "0"], "--threads"), (["--layers", "192", "--lr", "0"], "--lr"),
    (["--layers", "384", "--warmup", "-1"], "--warmup"), (["--layers", "96", "--steps", "0"], "--steps")])
def test_bad_input_exits_2_naming_the_flag(argv, flag, capsys):
    assert f"argument {flag}" in exit_2_error(train_toy.parse_args, argv, capsys)


# ---------------------------------------------------------------------------------------------------
# The defaults by depth (the rule map, tutorial.md Section 12)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 6, 24, 48])
def test_up_to_48_layers_the_demo_keeps_its_own_settings(layers):
    args = train_toy.parse_args(["--layers", str(layers)])
    assert (args.lr, args.warmup, args.steps) == (2e-3, 50, 200)
    assert "schedule" not in train_toy.configuration(args)  # the configuration line is today's


@pytest.mark.parametrize("layers", [49, 96, 100, 192, 384, 512])
def test_deeper_the_peak_falls_as_the_square_root_of_depth(layers):
    args = train_toy.parse_args(["--layers", str(layers)])
    exact = 2e-3 * (48 / layers) ** 0.5
    assert abs(args.lr / exact - 1) < 5e-3  # rounded to 3 significant figures: off by at most 0.5%
    assert (args.warmup, args.steps) == (100, 400)
    twice = train_toy.parse_args(["--layers", str(2 * layers)])
    assert abs(twice.lr / args.lr * 2 ** 0.5 - 1) < 1.01e-2  # one √2 step per doubling (two roundings)
    reason = train_toy.configuration(args)["schedule"]
    assert f"{layers} > 48 layers" in reason and f"lr {args.lr:g}" in reason and "Section 12" in reason


def test_flags_given_win_and_the_reason_names_only_what_the_depth_set():
    args = train_toy.parse_args(["--layers", "192", "--lr", "3e-3", "--steps", "50"])
    assert (args.lr, args.warmup, args.steps) == (3e-3, 100, 50)
    assert "warmup 100" in args.schedule and "lr 0" not in args.schedule and "steps" not in args.schedule
    given = train_toy.parse_args(["--layers", "192", "--lr", "3e-3", "--steps", "50", "--warmup", "7"])
    assert given.schedule is None and "schedule" not in train_toy.configuration(given)


def test_a_deep_admin_that_fails_is_told_what_to_change():
    stuck = [train_toy.ArmResult(arm, history=[[0, 2.3, 0.0], [400, 2.3, 0.0]], steps=400)
             for arm in ("vanilla", "admin")]
    advice = train_toy.conclusion(stuck, train_toy.TrainConfig(layers=384, lr=7.07e-4, warmup=100))
    assert "admin did not learn at peak lr 0.000707 with 100 warm-up steps" in advice
    assert "--lr 0.00035" in advice  # half of 7.07e-4, to 2 figures
    assert "--warmup 200" in advice  # twice the warm-up


def test_bad_input_on_the_real_command_line_has_no_traceback():
    err = command_line_error("train_toy.py", ["--layers", "0"])
    assert "argument --layers" in err and ">= 1" in err and "got 0" in err


def test_plot_without_matplotlib_runs_to_the_end_and_says_how_to_get_the_figure(monkeypatch, capsys, tmp_path):
    """The README's install has no matplotlib: --plot must not stop a run; it says where the figure
    would go and how to get it, and draws nothing."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    png = tmp_path / "c.png"
    out = train_toy.main([*TINY, "--plot", str(png)])
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert out["arms"] and not png.exists()
    assert str(png) in last and "pip install matplotlib" in last


def test_fold_verdict_says_rounding_below_the_bound_and_the_number_above_it():
    assert train_toy.summary_table([], 3e-7).endswith("same logits (relative error < 1e-04: float32 rounding)")
    assert train_toy.summary_table([], 2e-2).endswith("logits DIFFER (relative error 2.0e-02 >= 1e-04)")


def test_profiled_omega_is_profiled_on_the_first_training_batch_before_any_step(monkeypatch, capsys):
    seen = []
    real = train_toy.admin.profile_omega

    def profile(model, batch):
        seen.append((batch.clone(), [p.detach().clone() for p in model.parameters()]))
        return real(model, batch)

    monkeypatch.setattr(train_toy.admin, "profile_omega", profile)
    profiled = train_toy.main(TINY + ["--arms", "vanilla,admin,preln", "--omega", "profiled"])
    assert len(seen) == 1, "profiled for another arm than admin, or not once"
    batch, weights = seen[0]
    data = train_toy.ToyData("reverse", 3, 0)
    assert torch.equal(batch, next(data.batches(8))[0]), "not the first training batch"
    fresh = train_toy.make_model("admin", train_toy.parse_args(TINY + ["--device", "cpu"]))
    assert all(torch.equal(a, b) for a, b in zip(weights, fresh.parameters())), "profiled after a step"
    closed = train_toy.main(TINY + ["--arms", "admin"])
    assert profiled["arms"]["admin"]["history"][0] != closed["arms"]["admin"]["history"][0]
    assert "ω profiled on the first batch" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# The training pieces, each claim on its own (.ci/mutation found them guarded only by printed numbers)
# ---------------------------------------------------------------------------------------------------


def test_the_schedule_warms_up_linearly_then_decays_linearly_to_zero():
    """lr_factor: (step + 1) / warmup during warm-up, reaching 1 at the last warm-up step, then
    (steps - step) / (steps - warmup): 1 right after, 0 at the end of the budget, never below 0."""
    assert [train_toy.lr_factor(i, 4, 10) for i in range(12)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.0])
    assert [train_toy.lr_factor(i, 0, 4) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]  # no warm-up
    assert [train_toy.lr_factor(i, 3, 3) for i in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.0])
    # one decay step: the peak, then 0 (kills .ci/mutation's max(2, steps - warmup) for max(1, ...))
    assert [train_toy.lr_factor(i, 3, 4) for i in range(5)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 0.0])


def test_the_loss_covers_the_answer_alone():
    """loss_of: cross-entropy over the positions whose target is not IGNORE (the prompt)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 8, train_toy.VOCAB)
    _, target = train_toy.to_example(torch.randint(10, (3, 4)), "reverse")
    answer = target != train_toy.IGNORE
    want = torch.nn.functional.cross_entropy(logits[answer], target[answer])
    assert train_toy.loss_of(logits, target).item() == pytest.approx(want.item(), rel=1e-6)


class FixedLogits(torch.nn.Module):
    """A stand-in model that answers with given logits, and checks it is asked in eval mode."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, inp):
        assert not self.training, "evaluated in training mode (dropout on)"
        return self.logits


def test_evaluation_is_exact_match_of_whole_answers_in_eval_mode():
    data = train_toy.ToyData("reverse", 2, 0)  # 20 held-out strings, answers of 2 tokens
    target = data.eval_target.clamp_min(0)  # the prompt's targets (IGNORE) as token 0
    logits = 10 * torch.nn.functional.one_hot(target, train_toy.VOCAB).float()
    logits[:, :2] = torch.roll(logits[:, :2], 1, dims=-1)  # wrong tokens on the prompt: not asked for
    model = FixedLogits(logits.clone()).train()
    loss, accuracy, pred = train_toy.evaluate(model, data)
    assert model.training, "evaluate leaves the model in eval mode"
    assert accuracy == 1.0 and pred.shape == (20, 4)
    assert loss == pytest.approx(train_toy.loss_of(logits, data.eval_target).item())
    logits[0, 3] = torch.roll(logits[0, 3], 1)  # one wrong answer token: that answer is wrong
    logits[1, 2:] = torch.roll(logits[1, 2:], 1, dims=-1)  # both wrong: one answer
    assert train_toy.evaluate(FixedLogits(logits), data)[1] == pytest.approx(18 / 20)


@pytest.mark.parametrize("accuracy, diverged_at, verdict", [
    (0.99, None, "learned"), (1.0, None, "learned"), (0.985, None, "partly learned (98%)"),
    (0.01, None, "partly learned (1%)"), (0.0099, None, "did not learn"), (0.0, None, "did not learn"),
    (1.0, 7, "diverged at step 7"), (0.0, 0, "diverged at step 0")])
def test_the_verdict_rule(accuracy, diverged_at, verdict):
    r = train_toy.ArmResult("admin", history=[[0, 2.3, 0.0], [20, 1.0, accuracy]], diverged_at=diverged_at)
    assert r.verdict == verdict
