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
import torch.nn.functional as F

import admin
import train_toy


def step_seconds(model, opt, inp, target) -> float:
    start = time.perf_counter()
    loss = F.cross_entropy(model(inp).flatten(0, 1), target.flatten(), ignore_index=train_toy.IGNORE)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    train_toy.sync(inp.device)
    return time.perf_counter() - start


@torch.no_grad()
def forward_seconds(model, inp) -> float:
    start = time.perf_counter()
    model(inp)
    train_toy.sync(inp.device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=train_toy.whole(1), default=48)
    p.add_argument("--rounds", type=train_toy.whole(2), default=30)
    p.add_argument("--threads", type=train_toy.whole(1), default=2)
    p.add_argument("--device", choices=train_toy.DEVICES, default="auto",
                   help="auto = cuda if there is one, else mps if there is one, else cpu")
    args = p.parse_args()
    args.device = train_toy.resolve_device(args.device, p)
    torch.set_num_threads(args.threads)
    demo = train_toy.parse_args(["--layers", str(args.layers), "--device", args.device])
    models = {arm: train_toy.make_model(arm, demo, seed=0) for arm in ("vanilla", "admin")}
    fixed = dataclasses.replace(models["admin"].config, omega_as_parameter=False)
    models["admin, fixed ω"] = admin.PostLNTransformer(fixed).to(args.device)
    fused = torch.device(args.device).type in ("cpu", "cuda")
    opts = {arm: torch.optim.Adam(m.parameters(), lr=1e-5, betas=(0.9, 0.98), fused=fused)
            for arm, m in models.items()}
    inp, target = train_toy.ToyData("reverse", demo.digits, demo.batch_size, 0, args.device).batch()
    print(f"{args.layers} layers, d_model {demo.d_model}, batch {tuple(inp.shape)}, "
          f"{train_toy.device_name(args.device)}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.rounds} rounds")

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
