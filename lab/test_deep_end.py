"""Tests for deep_end.py, the measurements of the deep end: tiny models, a few steps."""

import copy
import dataclasses

import pytest
import torch

import admin
from lab import cli
from lab import config
from lab import deep_end
import train_toy
from lab.testing_tools import exit_2_error

TINY = ["--d-model", "8", "--n-heads", "2", "--digits", "3", "--batch-size", "8", "--threads", "1",
        "--device", "cpu"]


def parsed(*argv: str):
    return deep_end.parse_args([*argv, *TINY])


def tiny(arm: str, layers: int, what: str = "step") -> config.TrainConfig:
    """The configuration of a run of `arm` at `layers` layers, seed 0, as deep_end builds it."""
    return config.train_config(parsed(what), layers=layers, arms=[arm], seed=0)


@pytest.mark.parametrize("arm", train_toy.ARMS + deep_end.VARIANTS)
def test_every_parameter_is_in_one_named_group(arm):
    model = deep_end.make_model(arm, tiny(arm, 2))
    groups = {name: deep_end.group_of(name) for name, _ in model.named_parameters()}
    assert set(groups.values()) <= set(deep_end.GROUPS)
    assert {n for n, g in groups.items() if g == "omega"} == {n for n in groups if n.endswith(".omega")}
    assert groups["blocks.0.self_attn.in_proj_weight"] == groups["blocks.1.linear2.bias"] == "branches"
    assert groups["blocks.1.norm2.weight"] == "LayerNorm affine" and groups["head.weight"] == "head"
    assert groups["tok_emb.weight"] == groups["pos_emb.weight"] == "embeddings"


def test_the_variants_change_admin_as_their_names_say():
    plain = deep_end.make_model("admin", tiny("admin", 3))
    frozen = deep_end.make_model("admin-frozen-ln", tiny("admin-frozen-ln", 3))
    assert all(not p.requires_grad for m in frozen.modules() if isinstance(m, torch.nn.LayerNorm)
               for p in m.parameters())
    fixed = deep_end.make_model("admin-fixed-omega", tiny("admin-fixed-omega", 3))
    assert all(not s.shortcut.omega.requires_grad for s in fixed.sublayers())
    alpha = deep_end.make_model("alpha-only", tiny("alpha-only", 3))
    assert all(torch.all(s.shortcut.omega == torch.tensor(admin.deepnorm_alpha(3)))
               and not s.shortcut.omega.requires_grad for s in alpha.sublayers())
    beta = deep_end.make_model("admin-beta", tiny("admin-beta", 3))
    b, want = admin.deepnorm_beta(3), plain.state_dict()
    for name, value in beta.state_dict().items():
        scaled = name.endswith(("out_proj.weight", "linear1.weight", "linear2.weight"))
        if name.endswith("in_proj_weight"):
            assert torch.equal(value[16:], want[name][16:] * b) and torch.equal(value[:16], want[name][:16])
        else:
            assert torch.equal(value, want[name] * b if scaled else want[name]), name


def test_a_real_step_is_measured_as_the_change_it_makes_and_kept():
    """The "all" change is the output change of the step itself, computed here a second way (a float64
    copy before and after); the random-sign update has the same sizes, so its change is positive too;
    and the model goes on from the real step."""
    cfg = tiny("admin", 2)
    torch.manual_seed(0)
    model = deep_end.make_model("admin", cfg).double()
    data = train_toy.ToyData("reverse", 3, 0)
    batch, idx = next(data.batches(8)), data.eval_input
    before = copy.deepcopy(model)
    step = train_toy.make_step(model, cfg)
    changes = deep_end.step_changes(model, step, batch, 1e-3, idx, seed=0)
    with torch.no_grad():
        want = deep_end.relative_change(model.eval().hidden(idx), before.eval().hidden(idx))
    assert changes["all"][0] == pytest.approx(want, rel=1e-9)
    assert set(changes) == set(deep_end.GROUPS) | {"all"}
    moved = {g for g, (real, _) in changes.items() if real > 0}
    assert moved == set(deep_end.GROUPS) - {"head"} | {"all"}, changes  # F, the last hidden state, has no head
    assert all(shuffled > 0 for g, (_, shuffled) in changes.items() if g in moved), changes
    assert changes["head"] == [0.0, 0.0], changes["head"]


@pytest.mark.parametrize("arm", ["admin", "admin-beta"])  # a variant: deep_end's model, not train_toy's
def test_the_measured_steps_are_the_first_and_the_peak_step_of_the_full_run(arm):
    """step's two rows, measured a second way: the first step taken on a fresh model by step_changes;
    the peak step as the run with its whole budget (train_arm, 30 steps, not the warm-up alone) takes
    it, stopped right after it."""
    cfg = dataclasses.replace(tiny(arm, 2), warmup=4, steps=30)
    first, peak = deep_end.warm_up_steps(cfg)
    data = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    model = deep_end.make_model(arm, cfg)
    want_first = deep_end.step_changes(model, train_toy.make_step(model, cfg), next(data.batches(cfg.batch_size)),
                                       cfg.lr / cfg.warmup, data.eval_input, cfg.seed)
    before_peak = {}

    def stop_after_the_peak(i, model):
        if i == cfg.warmup - 1:
            before_peak.update({n: p.detach().clone() for n, p in model.named_parameters()})
        if i == cfg.warmup:
            raise KeyboardInterrupt  # train_arm keeps what ran, as on Ctrl-C
    full = train_toy.train_arm(arm, cfg, data, lambda line: None, model=deep_end.make_model(arm, cfg),
                               watch=stop_after_the_peak, until_solved=False)
    assert full.steps == cfg.warmup
    want_peak = deep_end.changes_since(before_peak, full.model, data.eval_input, cfg.seed)
    assert (first["when"], first["lr"], peak["when"], peak["lr"]) == ("first", cfg.lr / 4, "peak", cfg.lr)
    assert first["changes"] == want_first and peak["changes"] == want_peak
    assert want_first["all"][0] != want_peak["all"][0]


def test_a_warm_up_that_diverges_gives_both_rows_the_peak_not_a_number(capsys):
    out = deep_end.main(["step", "--layers", "2", "--arms", "admin", "--warmup", "2", "--lr", "1e38",
                         "--repeats", "1", *TINY])
    assert [r["when"] for r in out["steps"]] == ["first", "peak"]
    assert all(v != v for pair in out["steps"][1]["changes"].values() for v in pair), out["steps"][1]
    assert "peak: nan (random nan)" in capsys.readouterr().out


def test_watch_records_every_few_steps_and_says_whether_it_learned(capsys):
    out = deep_end.main(["watch", "--layers", "1", "--arms", "admin,deepnorm", "--steps", "6",
                         "--every", "3", "--warmup", "2", "--repeats", "2", *TINY])
    assert [(r["arm"], r["seed"]) for r in out["runs"]] == [("admin", 0), ("admin", 1), ("deepnorm", 0),
                                                             ("deepnorm", 1)]
    for run in out["runs"]:
        assert [r["step"] for r in run["records"]] == [3, 6]
        last = run["records"][-1]
        assert run["verdict"] == ("learned" if last["accuracy"] >= 0.99 else "did not learn")
        assert last["change"] > 0 and len(last["ln_input_rms"]) == len(last["grad_norm"]) == 5
        assert last["ln_input_rms"] == sorted(last["ln_input_rms"])  # min, quartiles, max
    assert out["runs"][0]["records"][-1]["omega_drift"] > 0 and "99% at" in capsys.readouterr().out


def test_a_diverging_watched_run_says_so_and_the_table_still_prints(capsys):
    out = deep_end.main(["watch", "--layers", "1", "--steps", "4", "--every", "2", "--warmup", "0",
                         "--lr", "1e30", "--repeats", "1", *TINY])
    assert out["runs"][0]["verdict"].startswith("diverged at step")
    assert "diverged at step" in capsys.readouterr().out.split("99% at")[1]


@pytest.mark.parametrize("argv, flag", [(["step", "--arms", "bogus"], "--arms"),
                                        (["step", "--warmup", "1"], "--warmup"),
                                        (["watch", "--every", "0"], "--every"),
                                        (["sideways"], "what")])
def test_bad_input_exits_2_naming_the_flag(argv, flag, capsys):
    assert f"argument {flag}" in exit_2_error(deep_end.main, argv, capsys)


def test_the_scripts_flush_subnormals_to_zero():
    try:
        torch.set_flush_denormal(False)
        small = torch.tensor([1e-30], dtype=torch.float32)  # normal; times 1e-10 it is subnormal
        assert (small * 1e-10).item() > 0, "no subnormals here to begin with"
        cli.start(parsed("step"))
        assert (small * 1e-10).item() == 0.0, "a subnormal product was not flushed"
    finally:
        torch.set_flush_denormal(False)
