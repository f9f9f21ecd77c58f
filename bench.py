"""Speed benchmark: is Admin as cheap as vanilla Post-LN? Prints medians and ratios from one run.

    python bench.py                          # 48 layers, the demo's default sizes, 2 threads
    python bench.py --stuck --layers 192     # whole demo runs, with and without flushing subnormals

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
import cli
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=cli.whole(1), default=48, help="Transformer layers")
    p.add_argument("--rounds", type=cli.whole(2), default=30, help="timed rounds (one more warms up)")
    p.add_argument("--stuck", action="store_true",
                   help="time whole demo runs, subnormals flushed and not, instead of rounds")
    train_toy.add_schedule_flags(p)  # --stuck trains as the demo does
    return cli.add_model_flags(p)  # the demo's model: --d-model, --batch-size, --threads, --device, ...


def header(args, inp: torch.Tensor) -> str:
    return (f"{args.layers} layers, d_model {args.d_model}, batch {tuple(inp.shape)}, "
            f"{cli.device_name(args.device)}, {args.threads} threads, torch {torch.__version__}"
            + (f", {args.steps} steps a run" if args.stuck else f", {args.rounds} rounds"))


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    args.cuda_graph, args.omega = False, "closed"  # the eager step, the closed-form ω
    cli.start(args)
    if args.stuck:
        return stuck(args)
    models = {arm: train_toy.make_model(arm, args.layers, args, seed=0) for arm in ("vanilla", "admin")}
    fixed = dataclasses.replace(models["admin"].config, omega_as_parameter=False)
    models["admin, fixed ω"] = admin.PostLNTransformer(fixed).to(args.device)
    models["deepnorm"] = train_toy.make_model("deepnorm", args.layers, args, seed=0)
    fused = torch.device(args.device).type in ("cpu", "cuda")
    opts = {arm: torch.optim.Adam(m.parameters(), lr=1e-5, betas=train_toy.BETAS, fused=fused)
            for arm, m in models.items()}
    data = train_toy.ToyData(args.task, args.digits, args.seed, args.device)
    inp, target = next(data.batches(args.batch_size))
    print(header(args, inp))

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

    print("training step   " + report(train))
    print("forward pass    " + report(infer))


def run_seconds(arm: str, args, data: train_toy.ToyData) -> list[float]:
    """The time of every step of one demo run of `arm` (the full budget: no evaluations, no stop)."""
    model = train_toy.make_model(arm, args.layers, args, args.seed)
    step, times = train_toy.make_step(model, args), []
    for i, (inp, target) in zip(range(args.steps), data.batches(args.batch_size)):
        start = time.perf_counter()
        step(inp, target, args.lr * train_toy.lr_factor(i, args.warmup, args.steps)).item()
        times.append(time.perf_counter() - start)
    return times


def stuck(args) -> None:
    data = train_toy.ToyData(args.task, args.digits, args.seed, args.device)
    print(header(args, data.eval_input[: args.batch_size]))
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        print(stuck_line(flush, {arm: run_seconds(arm, args, data) for arm in ("vanilla", "admin")}))


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
