"""How train_toy reports a run: its lines (render: all that the demo prints), the summary table, the
text plot of the loss curves, what to conclude, the JSON record and the PNG of the curves. Plain
functions of the results (train_toy.ArmResult) and the configuration; train_toy stands on this file.
"""

from __future__ import annotations

import math

import admin
import cli
import config
from config import TrainConfig

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over the ten digits

FOLD_BOUND = 1e-4  # relative logit error of the fold: float32 rounding gives ~1e-7, a wrong fold ~1e-2


def eval_line(arm: str, step: int, loss: float, accuracy: float, seconds: float) -> str:
    return f"  {arm:<8} step {step:>5}  loss {loss:7.4f}  acc {100 * accuracy:6.2f}%  {seconds:6.1f}s"


def diverged_line(r) -> str:
    return f"  {r.arm} diverged at step {r.diverged_at}; last finite loss {r.last_finite_loss}"


def interrupted_line(r) -> str:
    return f"  {r.arm} interrupted at step {r.steps}"


def conclusion(results: list, layers: int, lr: float | None = None,
               warmup: int | None = None) -> str:
    by_arm = {r.arm: r for r in results}
    v, a = by_arm.get("vanilla"), by_arm.get("admin")
    if v is None or a is None or v.interrupted or a.interrupted:
        return "Run the vanilla and admin arms to completion to compare them."
    if a.verdict == "learned" and v.verdict != "learned":
        return (f"Conclusion: at {layers} layers plain Post-LN {v.verdict}, while Admin learned the task "
                f"from the same weights, data and optimizer: the only change is ω on the shortcut. "
                f"(In our stability map vanilla learned only at 6 layers; at 12 it learned with 4x the "
                f"steps and 200 warm-up steps: tutorial.md, Sections 5 and 11.)")
    if a.verdict == "learned" and v.verdict == "learned":
        return (f"Conclusion: at {layers} layers both Post-LN arms learn; the failure of vanilla "
                f"Post-LN is a matter of depth (try --layers 48).")
    if a.verdict != "learned" and lr is not None:
        return (f"Conclusion: vanilla {v.verdict}, admin {a.verdict} at peak lr {lr:g} with {warmup} "
                f"warm-up steps. Deep Admin fails when the learning rate climbs too far too fast: halve "
                f"it (--lr {float(f'{lr / 2:.2g}'):g}) or double the warm-up (--warmup {2 * warmup}); "
                f"the rule map behind the defaults is in tutorial.md, Section 12.")
    return f"Conclusion: vanilla {v.verdict}, admin {a.verdict}; see the table above."


def arm_title(arm: str, cfg: TrainConfig) -> str:
    omega = (f"ω = {admin.calculate_init(2 * cfg.layers, cfg.output_change_scale):.3f}"
             if cfg.omega == "closed" else "ω profiled on the first batch")
    deepnorm = (f"α = {admin.deepnorm_alpha(cfg.layers):.3f}, "
                f"V, output and FFN weights start × {admin.deepnorm_beta(cfg.layers):.3f}")
    return f"training {arm} ({dict(vanilla='Post-LN', admin=f'Post-LN, {omega}', preln='Pre-LN', deepnorm=deepnorm)[arm]})"


def summary(results: list, folded: float | None, cfg: TrainConfig) -> str:
    """What follows the training lines: the table, the text plot, examples, the conclusion."""
    parts = ["\nsummary (train ms/step: the median step)", summary_table(results, folded),
             "\n" + text_plot({r.arm: r.history for r in results}, CHANCE_LOSS)]
    parts += [f"\n{r.arm}, held-out examples:\n" + "\n".join("  " + e for e in r.examples)
              for r in results if r.examples]
    return "\n".join(parts + ["\n" + conclusion(results, cfg.layers, cfg.lr, cfg.warmup)])


def render(cfg: TrainConfig, results: list, folded: float | None, seconds: float) -> str:
    """All that the demo prints, from its results: main() prints the first line, each arm's lines as
    train_arm logs them, then the end (test_train_toy checks that they are these lines); test_docs renders
    a kept results file with it."""
    lines = [cli.configuration_line(config.configuration(cfg))]
    for r in results:
        lines += [arm_title(r.arm, cfg)] + [eval_line(r.arm, *h, t) for h, t in zip(r.history, r.eval_seconds)]
        lines += [diverged_line(r)] if r.diverged_at is not None else []
        lines += [interrupted_line(r)] if r.interrupted else []
    return "\n".join(lines + [the_end(results, folded, cfg, seconds)])


def the_end(results: list, folded: float | None, cfg: TrainConfig, seconds: float) -> str:
    return f"{summary(results, folded, cfg)}  ({seconds:.1f}s in all)"


def fold_verdict(relative_error: float) -> str:
    """The folded model's relative logit error, said against FOLD_BOUND: the fold is exact, so any
    difference is float32 rounding, whose digits vary between machines and mean nothing."""
    if relative_error < FOLD_BOUND:
        return f"same logits (relative error < {FOLD_BOUND:.0e}: float32 rounding)"
    return f"logits DIFFER (relative error {relative_error:.1e} >= {FOLD_BOUND:.0e})"


def summary_table(results, fold_error: float | None) -> str:
    """One row per arm (train_toy.ArmResult); `fold_error` is the relative logit error of the trained
    Admin model after reparameterize, when there is one."""
    lines = [f"{'arm':<8} {'steps':>6} {'final loss':>10} {'accuracy':>9}  {'verdict':<26}"
             f"{'seconds':>8} {'train ms/step':>14}"]
    for r in results:
        lines.append(f"{r.arm:<8} {r.steps:>6} {r.final_loss:>10.4f} {100 * r.accuracy:>8.2f}%  "
                     f"{r.verdict + (' (interrupted)' if r.interrupted else ''):<26}"
                     f"{r.seconds:>8.1f} {r.step_ms:>14.1f}")
    if fold_error is not None:
        lines.append(f"admin folded by reparameterize(): plain Post-LN, {fold_verdict(fold_error)}")
    return "\n".join(lines)


def result_json(r) -> dict:
    return {"final_loss": r.final_loss, "accuracy": r.accuracy, "diverged": r.diverged_at is not None,
            "diverged_at": r.diverged_at, "verdict": r.verdict, "steps": r.steps,
            "seconds": r.seconds, "train_ms_per_step": r.step_ms, "interrupted": r.interrupted,
            "history": r.history, "examples": r.examples, "eval_seconds": r.eval_seconds,
            "last_finite_loss": r.last_finite_loss}


def text_plot(histories: dict[str, list], chance: float, height: int = 10, width: int = 60) -> str:
    """Held-out loss against step, one letter per arm (first letter; '*' where two overlap).
    histories: arm -> [[step, loss, accuracy], ...]."""
    curves = {arm: [(step, loss) for step, loss, _ in h if math.isfinite(loss)]
              for arm, h in histories.items()}
    curves = {a: c for a, c in curves.items() if c}
    if not curves:
        return "(nothing to plot)"
    last = max(c[-1][0] for c in curves.values()) or 1
    top = min(max(loss for c in curves.values() for _, loss in c), 3 * chance)
    grid = [[" "] * (width + 1) for _ in range(height + 1)]
    for arm, curve in curves.items():
        for step, loss in curve:
            row = height - round(min(loss, top) / top * height)  # loss 0 on the bottom row
            col = round(step / last * width)
            grid[row][col] = arm[0] if grid[row][col] in (" ", arm[0]) else "*"
    lines = [f"{top * (height - i) / height:7.2f} |" + "".join(row) for i, row in enumerate(grid)]
    lines.append(" " * 8 + "+" + "-" * (width + 1))
    lines.append(" " * 8 + f"step 0{str(last).rjust(width - 4)}")
    lines.append(" " * 8 + "held-out loss; " + ", ".join(f"{a[0]} = {a}" for a in curves)
                 + f"; chance = ln 10 = {chance:.2f}")
    return "\n".join(lines)


def curves_png(path: str, curves: dict[str, tuple[list, str]], chance: float, title: str) -> None:
    """The held-out loss curves as a PNG. curves: arm -> (history, verdict)."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for arm, (history, verdict) in curves.items():
        ax.plot([h[0] for h in history], [h[1] for h in history], label=f"{arm}: {verdict}")
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance (ln 10)")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
