"""The deep end, measured: what one real optimizer step changes, and deep runs watched step by step.

    python -m lab.deep_end step --layers 12,48,96,192 --arms vanilla,admin,preln,deepnorm --repeats 3
    python -m lab.deep_end watch --layers 192 --arms admin,deepnorm --lr 2e-3 --warmup 100 --repeats 3

`step`: measure.py perturbs a fresh model by ±δ with random signs; a training step is Adam's update,
which is neither small nor random. For each model (seeds seed, seed + 1, …) this takes the real first
step of the demo's training, and the real step at the peak learning rate (after --warmup − 1 steps),
and splits its update ΔW by parameter group: the branches (Q, K, V, output and feed-forward weights
and biases), the LayerNorm affine parameters, a trainable ω (DeepNorm's α is fixed), the embeddings and
the head (which F does not include: its change is 0). --warmup must be 2 or more. For each group,
and for all together, it reports the output change |F(W + ΔW) − F(W)|² / |F(W)|² of the last layer's
output on the held-out inputs (in float64), against the same update with random signs, |ΔW| ⊙ ±1.

`watch`: trains each arm as the demo does (eagerly, closed-form ω, no early stop; a non-finite loss
ends the run as "diverged") and records, from step --every on and every --every steps: held-out loss
and accuracy, the output's change since step 0, and five-number summaries over the layers (min,
quartiles, max) of each LayerNorm input's RMS, of each layer's gradient norm (also the first and last
layer's) and of the attention entropy, and how far ω has moved from its start (median sub-layer). Besides
the residual kinds, it trains these variants of Admin, the interventions of tutorial.md, Section 12:
    admin-frozen-ln    LayerNorm gains and biases not trained
    admin-fixed-omega  ω not trained
    alpha-only         the shortcut scaled by DeepNorm's fixed α instead of ω, no β
    admin-beta         Admin's ω, with DeepNorm's β on the initial V, output and feed-forward weights
--layers and --arms take comma-separated lists (--arms also the variants); the model and schedule
flags are train_toy's.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time

import torch
import torch.nn.functional as F

import admin
from lab import cli
from lab import config
import train_toy
from lab.config import TrainConfig
from lab.measure import quartiles, relative_change

VARIANTS = ("admin-frozen-ln", "admin-fixed-omega", "alpha-only", "admin-beta")
GROUPS = ("branches", "LayerNorm affine", "omega", "embeddings", "head")


def group_of(name: str) -> str:
    if name.endswith(".omega"):
        return "omega"
    if ".norm" in name or name.startswith("final_norm"):
        return "LayerNorm affine"
    return {"tok_emb": "embeddings", "pos_emb": "embeddings", "head": "head"}.get(name.split(".")[0],
                                                                                    "branches")


def make_model(arm: str, cfg: TrainConfig) -> admin.PostLNTransformer:
    """train_toy's model of `arm`, or Admin's with one of the VARIANTS' changes."""
    if arm in train_toy.ARMS:
        return train_toy.make_model(arm, cfg)
    model, layers = train_toy.make_model("admin", cfg), cfg.layers
    residuals = [s.shortcut for s in model.sublayers()]
    with torch.no_grad():
        if arm == "admin-frozen-ln":
            for m in model.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.requires_grad_(False)
        if arm in ("admin-fixed-omega", "alpha-only"):
            for r in residuals:
                r.omega.requires_grad_(False)
        if arm == "alpha-only":
            for r in residuals:
                r.omega.fill_(admin.deepnorm_alpha(layers))
        if arm == "admin-beta":
            for block in model.blocks:
                block.scale_branch_weights(admin.deepnorm_beta(layers))
    return model


# ---------------------------------------------------------------------------------------------------
# step: the output change of one real optimizer step, per parameter group, against random signs
# ---------------------------------------------------------------------------------------------------


def step_changes(model, step, batch, lr: float, idx: torch.Tensor, seed: int,
                 groups: tuple[str, ...] = GROUPS + ("all",)) -> dict:
    """Take one real step; return {group: (real change, random-sign change)} for `groups` ("all": every
    parameter at once). The model keeps the real step, so training can go on."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(*batch, lr)
    return changes_since(before, model, idx, seed, groups)


def changes_since(before: dict, model, idx: torch.Tensor, seed: int,
                  groups: tuple[str, ...] = GROUPS + ("all",)) -> dict:
    """step_changes' measurement of the update from the parameters `before` (name -> tensor) to the
    model's own: for each group, the output change of that update and of |update| with random signs."""
    delta = {n: (p.detach() - before[n]).double() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    shuffled = {n: d.abs() * (torch.randint(2, d.shape, generator=gen).double() * 2 - 1)
                for n, d in delta.items()}
    ref = copy.deepcopy(model).double().eval()
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(before[n])
        base = ref.hidden(idx)
        out = {}
        for group in groups:
            pair = []
            for update in (delta, shuffled):
                for n, p in params.items():
                    p.copy_(before[n].double() + (update[n] if group in ("all", group_of(n)) else 0))
                pair.append(relative_change(ref.hidden(idx), base))
            out[group] = pair
    return out


def run_step(args, log) -> list[dict]:
    rows = []
    for layers in args.layers:
        for arm in args.arms:
            for seed in range(args.seed, args.seed + args.repeats):
                rows += warm_up_steps(config.train_config(args, layers=layers, arms=[arm], seed=seed))
            log(step_line(rows, arm, layers))
    return rows


def warm_up_steps(cfg: TrainConfig) -> list[dict]:
    """The first and the peak step of cfg's warm-up, measured by changes_since: the run trained by
    train_toy.train_arm for its warm-up steps alone (a warm-up's learning rates do not depend on the
    budget), a watch keeping the parameters before each measured step and measuring after it."""
    arm, seed = cfg.arms[0], cfg.seed
    data = train_toy.ToyData(cfg.task, cfg.digits, seed, cfg.device)
    measured, before, rows = {0: "first", cfg.warmup - 1: "peak"}, {}, {}

    def row(i: int, changes: dict) -> dict:
        return {"arm": arm, "layers": cfg.layers, "seed": seed, "when": measured[i],
                "lr": cfg.lr * train_toy.lr_factor(i, cfg.warmup, cfg.steps), "changes": changes}

    def watch(i: int, model) -> None:  # model: as after i steps
        if i - 1 in before:
            rows[i - 1] = row(i - 1, changes_since(before.pop(i - 1), model, data.eval_input, seed))
        if i in measured:
            before[i] = {n: p.detach().clone() for n, p in model.named_parameters()}

    warm_up = dataclasses.replace(cfg, steps=cfg.warmup, eval_every=cfg.warmup)
    train_toy.train_arm(arm, warm_up, data, lambda line: None, model=make_model(arm, cfg), watch=watch,
                        until_solved=False)
    not_reached = {g: [math.nan, math.nan] for g in GROUPS + ("all",)}  # the loss went non-finite first
    return [rows.get(i) or row(i, not_reached) for i in measured]


def step_line(rows: list[dict], arm: str, layers: int) -> str:
    """Medians over seeds: all groups, real and random, and the real change of each group."""
    parts = []
    for when in ("first", "peak"):
        mine = [r["changes"] for r in rows if (r["arm"], r["layers"], r["when"]) == (arm, layers, when)]
        med = {g: [statistics.median(c[g][k] for c in mine) for k in (0, 1)] for g in GROUPS + ("all",)}
        parts.append(f"{when}: {med['all'][0]:.2e} (random {med['all'][1]:.2e}); " + ", ".join(
            f"{g} {med[g][0]:.1e}" for g in GROUPS if med[g][0] > 0))
    return f"  {arm:<17} {layers:>3} layers  " + " | ".join(parts)


# ---------------------------------------------------------------------------------------------------
# watch: a deep run, recorded every few steps
# ---------------------------------------------------------------------------------------------------


def five(values: list[float]) -> list[float]:
    """min, first quartile, median, third quartile, max (measure.quartiles)."""
    return [min(values), *quartiles(values), max(values)]


@torch.no_grad()
def snapshot(model, data, hidden0, omega0) -> dict:
    """What one record holds; the gradients are those of the last step."""
    ln_rms, entropy, hidden = [], [], []  # hidden: the last layer's output, as the head reads it

    def norm_input(module, inputs):
        ln_rms.append(inputs[0].pow(2).mean().sqrt().item())

    def attention_entropy(module, inputs):
        x = inputs[0]
        B, T, C = x.shape
        q, k = F.linear(x, module.in_proj_weight[: 2 * C], module.in_proj_bias[: 2 * C]).chunk(2, -1)
        h = module.n_heads
        q, k = (t.view(B, T, h, C // h).transpose(1, 2) for t in (q, k))  # (B, H, T, C/H)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(C // h)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        p = scores.softmax(-1)
        entropy.append(-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item())

    hooks = [m.register_forward_pre_hook(norm_input) for m in model.modules()
             if isinstance(m, torch.nn.LayerNorm)]
    hooks += [b.self_attn.register_forward_pre_hook(attention_entropy) for b in model.blocks]
    hooks.append(model.head.register_forward_pre_hook(lambda module, inputs: hidden.append(inputs[0])))
    loss, acc, _ = train_toy.evaluate(model, data)
    for hook in hooks:
        hook.remove()
    grads = [math.sqrt(sum(p.grad.pow(2).sum().item() for p in b.parameters() if p.grad is not None))
             for b in model.blocks]
    omegas = [s.shortcut.omega for s in model.sublayers() if hasattr(s.shortcut, "omega")]
    drift = [((w - w0).norm() / w0.norm()).item() for w, w0 in zip(omegas, omega0)]
    return {"loss": loss, "accuracy": acc, "change": relative_change(hidden[0], hidden0), "ln_input_rms": five(ln_rms),
            "grad_norm": five(grads), "grad_first_last": [grads[0], grads[-1]],
            "omega_drift": statistics.median(drift) if drift else 0.0, "attention_entropy": five(entropy)}


def run_watch(args, log) -> list[dict]:
    """Each arm and seed trained by train_toy.train_arm to the end of its budget, recorded from step
    --every on, every --every steps and at the end."""
    return [watch_run(cfg, args.every, log) for cfg in watch_configs(args)]


def watch_configs(args) -> list[TrainConfig]:
    """The watched runs' configurations: each arm, seeds --seed on, at the first --layers."""
    return [config.train_config(args, layers=args.layers[0], arms=[arm], seed=seed)
            for arm in args.arms for seed in range(args.seed, args.seed + args.repeats)]


def watch_run(cfg: TrainConfig, every: int, log) -> dict:
    arm, seed = cfg.arms[0], cfg.seed
    model = make_model(arm, cfg)
    data = train_toy.ToyData(cfg.task, cfg.digits, seed, cfg.device)
    with torch.no_grad():
        hidden0 = model.eval().hidden(data.eval_input)
    model.train()
    omega0 = [s.shortcut.omega.detach().clone() for s in model.sublayers() if hasattr(s.shortcut, "omega")]
    records, start = [], time.perf_counter()

    def watch(i: int, model) -> None:
        if i and (i % every == 0 or i == cfg.steps):  # at step 0 there are no gradients yet
            records.append({"step": i, **snapshot(model, data, hidden0, omega0), "seconds": time.perf_counter() - start})
            log(watch_line(arm, seed, records[-1]))

    result = train_toy.train_arm(arm, cfg, data, lambda line: None, model=model, watch=watch, until_solved=False)
    return {"arm": arm, "seed": seed, "layers": cfg.layers, "lr": cfg.lr, "warmup": cfg.warmup,
            "steps": cfg.steps, "verdict": result.verdict, "records": records}


def watch_line(arm: str, seed: int, r: dict) -> str:
    return (f"  {arm:<17} seed {seed} step {r['step']:>4}  loss {r['loss']:.3f}  acc {100 * r['accuracy']:5.1f}%  "
            f"change {r['change']:.2e}  LN input RMS median {r['ln_input_rms'][2]:.2f} max "
            f"{r['ln_input_rms'][4]:.2f}  grad first/last layer {r['grad_first_last'][0]:.1e}/"
            f"{r['grad_first_last'][1]:.1e}  ω drift {r['omega_drift']:.3f}  attention entropy "
            f"{r['attention_entropy'][2]:.2f}  {r.get('seconds', 0.0):6.1f}s")  # kept files from before: no time


def watch_table(runs: list[dict]) -> str:
    """One row per run: its verdict, when it first reached 99%, and the record at the peak learning
    rate (the first at or after --warmup): output change since step 0, the largest LayerNorm input
    RMS, the first layer's gradient norm, ω's drift and the attention entropy (median layer)."""
    lines = [f"{'arm':<17} {'seed':>4} {'lr':>7} {'warmup':>6}  {'verdict':<14} {'99% at':>6}   at the peak:"
             f" {'change':>8} {'LN-in RMS max':>13} {'grad layer 1':>12} {'ω drift':>7} {'entropy':>7}"]
    for run in runs:
        if not run["records"]:  # diverged before its first record
            lines.append(f"{run['arm']:<17} {run['seed']:>4} {run['lr']:>7g} {run['warmup']:>6}  {run['verdict']}")
            continue
        solved = next((r["step"] for r in run["records"] if r["accuracy"] >= train_toy.SOLVED), None)
        peak = next(r for r in run["records"] if r["step"] >= run["warmup"] or r is run["records"][-1])
        lines.append(f"{run['arm']:<17} {run['seed']:>4} {run['lr']:>7g} {run['warmup']:>6}  "
                     f"{run['verdict']:<14} {'-' if solved is None else solved:>6}   step {peak['step']:>4}:"
                     f" {peak['change']:>8.2e} {peak['ln_input_rms'][4]:>13.2f} "
                     f"{peak['grad_first_last'][0]:>12.2e} {peak['omega_drift']:>7.3f} "
                     f"{peak['attention_entropy'][2]:>7.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=config.DefaultsHelp)
    p.add_argument("what", choices=("step", "watch"), help="the measurement (see the docstring)")
    p.add_argument("--layers", type=cli.comma_list(cli.whole(1, 512), "layer counts"), default=[192],
                   help="depths (watch: the first)")
    p.add_argument("--arms", type=cli.comma_list(cli.one_of(train_toy.ARMS + VARIANTS), "arms"),
                   default=["admin"], help=f"from {', '.join(train_toy.ARMS + VARIANTS)}")
    config.add_schedule_flags(p)  # as the demo trains
    p.add_argument("--repeats", type=cli.whole(1), default=3, help="seeds, from --seed on")
    p.add_argument("--every", type=cli.whole(1), default=10, help="watch: steps between records")
    p.add_argument("--json", metavar="PATH", help="write the rows or runs as JSON to PATH")
    return cli.add_model_flags(p)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    if args.device == "mps":
        p.error("argument --device: deep_end.py computes in float64, which mps does not support")
    if args.what == "step" and args.warmup is not None and args.warmup < 2:
        p.error(f"argument --warmup: step measures the first and the peak step, so it needs 2 or more, "
                f"got {args.warmup}")
    return args  # no --cuda-graph, no --omega: the runs train eagerly, with closed-form ω


def configuration(args) -> dict:
    """The command line's settings, its schedule as the runs at its depths train (config.schedule_at)."""
    return cli.configuration(vars(args) | config.schedule_at(args, args.layers))


def render(config: dict, out: dict, seconds: float) -> str:
    """All that deep_end prints, from what --json writes: main() prints each line as it is measured."""
    lines = [cli.configuration_line(config)]
    if "steps" in out:
        lines += [step_line(out["steps"], arm, layers) for layers in config["layers"] for arm in config["arms"]]
    else:
        lines += [watch_line(run["arm"], run["seed"], r) for run in out["runs"] for r in run["records"]]
        lines.append(watch_table(out["runs"]))
    return "\n".join(lines + [f"({seconds:.1f}s)"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cli.start(args)
    log = lambda line: print(line, flush=True)  # noqa: E731
    out = {"config": configuration(args)}
    log(cli.configuration_line(out["config"]))
    start = time.perf_counter()
    if args.what == "step":
        out["steps"] = run_step(args, log)
    else:
        out["runs"] = run_watch(args, log)
        log(watch_table(out["runs"]))
    log(f"({time.perf_counter() - start:.1f}s)")
    cli.write_outputs(args, out, lambda path: None, log)
    return out


if __name__ == "__main__":
    main()
