"""Speed benchmark: is Admin as cheap as vanilla Post-LN? Prints medians and ratios from one run.

    python bench.py                 # 48 layers, the demo's default sizes, 2 threads

Training steps of the vanilla and Admin models, and forward passes of vanilla, Admin and Admin after
reparameterize(), are timed in interleaved rounds, so that a slow moment of the machine hits every
model alike. Ratios near 1.00 mean ω costs nothing worth noticing. A trainable vector ω (the default,
as the paper trains it) adds a per-feature reduction to every sub-layer's backward pass; a fixed scalar
ω does not.
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=cli.whole(1), default=48, help="Transformer layers")
    p.add_argument("--rounds", type=cli.whole(2), default=30, help="timed rounds (one more warms up)")
    return cli.add_model_flags(p)  # the demo's model: --d-model, --batch-size, --threads, --device, ...


def header(args, inp: torch.Tensor) -> str:
    return (f"{args.layers} layers, d_model {args.d_model}, batch {tuple(inp.shape)}, "
            f"{cli.device_name(args.device)}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, {args.rounds} rounds")


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    torch.set_num_threads(args.threads)
    models = {arm: train_toy.make_model(arm, args.layers, args, seed=0) for arm in ("vanilla", "admin")}
    fixed = dataclasses.replace(models["admin"].config, omega_as_parameter=False)
    models["admin, fixed ω"] = admin.PostLNTransformer(fixed).to(args.device)
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
