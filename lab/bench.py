"""Speed benchmark: is Admin as cheap as vanilla Post-LN? Prints medians and ratios from one run.

    python -m lab.bench                          # 48 layers, the demo's default sizes, 2 threads
    python -m lab.bench --stuck --layers 192     # whole demo runs, with and without flushing subnormals

Training steps of the vanilla and Admin models, and forward passes of vanilla, Admin and Admin after
reparameterize(), are timed in interleaved rounds, so that a slow moment of the machine hits every
model alike. Ratios near 1.00 mean ω costs nothing worth noticing. A trainable vector ω (the default,
as the paper trains it) adds a per-feature reduction to every sub-layer's backward pass; a fixed scalar
ω does not. DeepNorm's α is a fixed scalar too.

--stuck times something else: whole training runs of the demo (its --steps, --lr, --warmup), vanilla
and Admin, once with subnormal floats flushed to zero (as every script here runs) and once without.
A deep vanilla run gets stuck, its gradients vanish into subnormal floats, and on a CPU each step
slows severalfold; Admin's gradients stay normal. The median step of the first and of the last ten
steps, and the vanilla/Admin ratio over the whole run, show it.
"""

import argparse
import dataclasses
import statistics
import time

import torch

import admin
from lab import cli
from lab import config
import train_toy


def step_seconds(model, opt, inp, target) -> float:
    start = time.perf_counter()
    loss = train_toy.loss_of(model(inp), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    cli.sync(inp.device)
    return time.perf_counter() - start


@torch.no_grad()
def forward_seconds(model, inp) -> float:
    start = time.perf_counter()
    model(inp)
    cli.sync(inp.device)
    return time.perf_counter() - start


TRAINED = ("vanilla", "admin", "admin, fixed ω", "deepnorm")  # the models whose steps are timed
FORWARD = ("vanilla", "admin", "admin folded")  # and whose forward passes are


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=config.DefaultsHelp)
    p.add_argument("--layers", type=cli.whole(1), default=48, help="Transformer layers")
    p.add_argument("--rounds", type=cli.whole(2), default=30, help="timed rounds (one more warms up)")
    p.add_argument("--stuck", action="store_true",
                   help="time whole demo runs, subnormals flushed and not, instead of rounds")
    config.add_schedule_flags(p)  # --stuck trains as the demo does
    return cli.add_model_flags(p)  # the demo's model: --d-model, --batch-size, --threads, --device, ...


def header(cfg: config.TrainConfig, args, shape: tuple) -> str:
    return (f"{cfg.layers} layers, d_model {cfg.d_model}, batch {shape}, "
            f"{cli.device_name(cfg.device)}, {cfg.threads} threads, torch {torch.__version__}"
            + (f", {cfg.steps} steps a run" if args.stuck else f", {args.rounds} rounds"))


def parse_args(argv: list[str] | None = None):
    """The command line, and the demo's training configuration at its depth (vanilla and Admin; no
    --cuda-graph or --omega here: eager steps, closed-form ω)."""
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    return args, config.train_config(args, arms=["vanilla", "admin"])


def render(cfg: config.TrainConfig, args, shape: tuple, timed: dict) -> str:
    """All that bench prints. timed: {"training step": times, "forward pass": times} of the rounds, or
    (--stuck) {flushed: times} of the demo runs; times: {model: [seconds, ...]}."""
    if args.stuck:
        return "\n".join([header(cfg, args, shape)] + [stuck_line(flush, t) for flush, t in timed.items()])
    return "\n".join([header(cfg, args, shape)] + [f"{what:<16}" + report(t) for what, t in timed.items()])


def main(argv: list[str] | None = None) -> dict:
    """Time as the command line asks; print it (all at the end) and return the times."""
    args, cfg = parse_args(argv)
    cli.start(cfg)
    data = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    inp, target = next(data.batches(cfg.batch_size))
    timed = stuck(cfg, data) if args.stuck else rounds(cfg, args, inp, target)
    print(render(cfg, args, tuple(inp.shape), timed))
    return timed


def rounds(cfg: config.TrainConfig, args, inp: torch.Tensor, target: torch.Tensor) -> dict:
    """Training steps and forward passes timed in interleaved rounds (one more warms up)."""
    models = {arm: train_toy.make_model(arm, cfg) for arm in ("vanilla", "admin")}
    fixed = dataclasses.replace(models["admin"].config, omega_as_parameter=False)
    models["admin, fixed ω"] = admin.PostLNTransformer(fixed).to(cfg.device)
    models["deepnorm"] = train_toy.make_model("deepnorm", cfg)
    fused = torch.device(cfg.device).type in ("cpu", "cuda")
    opts = {arm: torch.optim.Adam(m.parameters(), lr=1e-5, betas=train_toy.BETAS, fused=fused)
            for arm, m in models.items()}
    train = {arm: [] for arm in models}
    for r in range(args.rounds + 1):
        for arm in (list(models) if r % 2 else list(models)[::-1]):
            seconds = step_seconds(models[arm], opts[arm], inp, target)
            if r:  # round 0 warms up
                train[arm].append(seconds)

    forward_models = {arm: models[arm] for arm in ("vanilla", "admin")}
    forward_models["admin folded"] = admin.reparameterize(models["admin"])
    for m in forward_models.values():
        m.eval()
    infer = {name: [] for name in forward_models}
    for r in range(args.rounds + 1):
        for name, m in forward_models.items():
            seconds = forward_seconds(m, inp)
            if r:
                infer[name].append(seconds)
    return {"training step": train, "forward pass": infer}


def stuck(cfg: config.TrainConfig, data: train_toy.ToyData) -> dict:
    """The time of every step of the demo's run of vanilla and of Admin (train_arm, to the end of the
    budget), with subnormals kept, then flushed."""
    timed = {}
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        timed[flush] = {arm: train_toy.train_arm(arm, cfg, data, lambda line: None, until_solved=False).step_times
                        for arm in cfg.arms}
    return timed


def stuck_line(flush: bool, times: dict[str, list[float]]) -> str:
    ratio = statistics.median(times["vanilla"]) / statistics.median(times["admin"])
    return (f"subnormals {'flushed' if flush else 'kept   '}  " + ";  ".join(
        f"{arm} {1000 * statistics.median(t[:10]):.1f} ms first 10, {1000 * statistics.median(t[-10:]):.1f} "
        f"ms last 10" for arm, t in times.items()) + f";  whole run vanilla/admin = {ratio:.2f}x")


def report(times: dict[str, list[float]]) -> str:
    """Median and fastest time of each model, and its ratio to vanilla: the median over rounds of the
    two times measured side by side in the same round, so a slow moment of the machine cancels."""
    parts = []
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, times["vanilla"], strict=True))
        parts.append(f"{name} {1000 * statistics.median(t):.1f} ms (min {1000 * min(t):.1f})"
                     + ("" if name == "vanilla" else f" = {ratio:.2f}x"))
    return ";  ".join(parts)


if __name__ == "__main__":
    main()
