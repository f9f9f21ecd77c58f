"""How train_toy reports a run: the summary table, the text plot of the loss curves, the JSON record
and the PNG of the curves. Plain functions of the results; train_toy stands on this file.
"""

from __future__ import annotations

import math

import cli

FOLD_BOUND = 1e-4  # relative logit error of the fold: float32 rounding gives ~1e-7, a wrong fold ~1e-2


def eval_line(arm: str, step: int, loss: float, accuracy: float, seconds: float) -> str:
    return f"  {arm:<8} step {step:>5}  loss {loss:7.4f}  acc {100 * accuracy:6.2f}%  {seconds:6.1f}s"


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
            "history": r.history, "examples": r.examples}


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
