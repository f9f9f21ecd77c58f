"""The amplification effect itself, no training: the output change of a fresh model after one small
update, against depth.

    python -m lab.measure --arms vanilla,admin,preln              # 6 to 96 layers, 16 models each
    python -m lab.measure --layers 48,96,192,384 --arms admin,preln --repeats 4

For each depth and arm, `--repeats` fresh models of train_toy's demo (seeds seed, seed + 1, …) get
±δ, random signs drawn per seed and the same for every arm, added to every weight matrix of every block;
the change of the last layer's output F, |F(x, W*) − F(x, W)|² / |F(x, W)|², is computed in float64 on
one batch of the demo's data (--batch-size strings). The table shows the median over the models, the spread (third over first
quartile) and the growth of the median over depth. The other flags are train_toy's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import admin
from lab import cli
from lab import config
import train_toy


@torch.no_grad()
def output_change(model: admin.PostLNTransformer, idx: torch.Tensor, delta: float, seed: int) -> float:
    """|F(x, W*) − F(x, W)|² / |F(x, W)|², where W* adds ±delta (random signs, drawn from `seed`)
    to every weight matrix of every block; F is model.hidden, the last layer's output. ω and the
    embeddings are not perturbed."""
    before = model.hidden(idx)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.dim() == 2:
            signs = torch.randint(2, p.shape, generator=gen).to(p.device, p.dtype) * 2 - 1
            p.add_(delta * signs)
    return relative_change(model.hidden(idx), before)


def relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    """|after − before|² / |before|²: how far an output moved, relative to its size."""
    return ((after - before).pow(2).sum() / before.pow(2).sum()).item()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), as statistics.quantiles computes them."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure(args, log) -> list[dict]:
    """One row per (depth, arm): the output change of `args.repeats` fresh models, median, quartiles."""
    rows = []
    idx, _ = next(train_toy.ToyData(args.task, args.digits, args.seed, args.device).batches(args.batch_size))
    for layers in args.layers:
        for arm in args.arms:
            models = (train_toy.make_model(arm, config.train_config(args, layers=layers, arms=[arm], seed=args.seed + r))
                      for r in range(args.repeats))
            draws = [output_change(m.double(), idx, args.delta, args.seed + r) for r, m in enumerate(models)]
            q1, median, q3 = quartiles(draws)
            rows.append({"arm": arm, "layers": layers, "output_change": median, "q1": q1, "q3": q3,
                         "draws": draws})
        log(depth_line(rows, layers))
    return rows


def depth_line(rows: list[dict], layers: int) -> str:
    return "  " + "  ".join(f"{r['arm']} {r['layers']} layers: {r['output_change']:.3e}"
                            for r in rows if r["layers"] == layers)


def header(delta: float, repeats: int) -> str:
    return (f"output change |F(x, W*) - F(x, W)|^2 / |F(x, W)|^2, W* = W ± {delta:g} on every "
            f"block weight matrix, float64, median of {repeats} seeds")


def table(rows: list[dict], arms: list[str]) -> str:
    """Medians, the spread (third over first quartile) and the growth of the median over depth."""
    depths = sorted({r["layers"] for r in rows})
    row = {(r["arm"], r["layers"]): r for r in rows}
    change = {key: r["output_change"] for key, r in row.items()}
    both = "vanilla" in arms and "admin" in arms
    head = f"{'layers':>6} {'sub-layers':>10}" + "".join(
        f" {a + ' median':>15} {'q3/q1':>6} {'growth':>7}" for a in arms)
    lines = [head + (f" {'vanilla/admin':>14}" if both else "")]
    for d in depths:
        line = f"{d:>6} {2 * d:>10}"
        for a in arms:
            spread = row[a, d]["q3"] / row[a, d]["q1"]
            line += f" {change[a, d]:>15.3e} {spread:>5.2f}x {change[a, d] / change[a, depths[0]]:>6.1f}x"
        if both:
            line += f" {change['vanilla', d] / change['admin', d]:>13.1f}x"
        lines.append(line)
    growth = ", ".join(f"{a} {change[a, depths[-1]] / change[a, depths[0]]:.1f}x" for a in arms)
    ratio = 2 * depths[-1] / (2 * depths[0])
    lines.append(f"From {depths[0]} to {depths[-1]} layers ({ratio:g}x the sub-layers) the median output "
                 f"change grew: {growth}.")
    return "\n".join(lines)


def save_plot(path: str, rows: list[dict], args) -> None:
    """Median and quartile band per arm against sub-layers, log-log, with the theory's growth drawn
    through the first median (∝ n for vanilla, ∝ ln(n + 1) for Admin)."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    n = [2 * d for d in args.layers]
    for arm in args.arms:
        arm_rows = [r for r in rows if r["arm"] == arm]
        line, = ax.loglog(n, [r["output_change"] for r in arm_rows], "o-", label=f"{arm} (median)")
        ax.fill_between(n, [r["q1"] for r in arm_rows], [r["q3"] for r in arm_rows],
                        color=line.get_color(), alpha=0.2, lw=0)
        first = arm_rows[0]["output_change"]
        if arm == "vanilla":
            ax.loglog(n, [first * k / n[0] for k in n], ":", color=line.get_color(), label="∝ n, for reference")
        if arm == "admin":
            ax.loglog(n, [first * math.log(k + 1) / math.log(n[0] + 1) for k in n], ":",
                      color=line.get_color(), label="∝ ln(n + 1), for reference")
    ax.set_xticks(n, [str(k) for k in n])
    ax.minorticks_off()
    ax.set_xlabel("residual sub-layers n (2 per layer)")
    ax.set_ylabel("relative output change |ΔF|² / |F|²")
    ax.set_title(f"Output change after a ±{args.delta:g} update; band: quartiles of {args.repeats} "
                 "models", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=cli.comma_list(cli.whole(1, 512), "layer counts from 1 to 512"),
                   default=[6, 12, 24, 48, 96], help="depths, comma-separated")
    p.add_argument("--arms", type=cli.comma_list(cli.one_of(train_toy.ARMS), "arms"),
                   default=["vanilla", "admin"], help=f"residual kinds, from {', '.join(train_toy.ARMS)}")
    cli.add_model_flags(p)
    p.add_argument("--delta", type=cli.positive_float, default=1e-6,
                   help="size of the random-sign update added to every block weight matrix")
    p.add_argument("--repeats", type=cli.whole(1), default=16,
                   help="fresh models (seeds, each with its own signs) per depth and arm")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON to PATH")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the growth (needs matplotlib)")
    return p


def render(config: dict, out: dict, seconds: float) -> str:
    """All that measure prints, from what --json writes: main() prints each line as it is measured."""
    rows, arms = out["rows"], config["arms"]
    lines = [cli.configuration_line(config), header(config["delta"], config["repeats"])]
    lines += [depth_line(rows, d) for d in sorted(config["layers"])]
    return "\n".join(lines + [table(rows, arms), f"({seconds:.1f}s)"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    if args.device == "mps":
        p.error("argument --device: measure.py computes in float64, which mps does not support; "
                "use --device cpu")
    args.layers = sorted(args.layers)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement as the command line asks; return what --json writes."""
    args = parse_args(argv)
    cli.start(args)
    log = lambda line: print(line, flush=True)  # noqa: E731
    settings = cli.configuration(vars(args))
    log(cli.configuration_line(settings))
    log(header(args.delta, args.repeats))
    start = time.perf_counter()
    rows = measure(args, log)
    log(table(rows, args.arms))
    log(f"({time.perf_counter() - start:.1f}s)")
    out = {"config": settings, "rows": rows,
           "output_change": "|F(x,W*)-F(x,W)|^2 / |F(x,W)|^2 of the last layer's output",
           "update": f"+-{args.delta:g} random sign on every block weight matrix"}
    cli.write_outputs(args, out, lambda path: save_plot(path, rows, args), log)
    return out


if __name__ == "__main__":
    main()
