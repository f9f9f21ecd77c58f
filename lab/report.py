"""The demo's output rendered again from a results file (--json): train_toy.main prints these lines
as it runs; test_docs renders a kept results file with render() and compares it with the docs.
"""

from __future__ import annotations

import train_toy
from train_toy import ArmResult, TrainConfig


def arm_result(arm: str, r: dict) -> ArmResult:
    """The ArmResult whose JSON train_toy.main wrote (older files: no times of evaluations)."""
    return ArmResult(arm, r["history"], r["steps"], r["diverged_at"], r.get("last_finite_loss"), r["seconds"],
                     r["train_ms_per_step"], r["examples"], r["interrupted"],
                     eval_seconds=r.get("eval_seconds", [0.0] * len(r["history"])))


def render(cfg: TrainConfig, results: list[ArmResult], folded: float | None, seconds: float) -> str:
    """All that the demo prints, from its results: the configuration line, each arm's lines as
    train_arm logs them, then the end (test_train_toy checks that main prints these lines)."""
    lines = [train_toy.configuration_line(train_toy.configuration(cfg))]
    for r in results:
        lines += [train_toy.arm_title(r.arm, cfg)]
        lines += [train_toy.eval_line(r.arm, *h, t) for h, t in zip(r.history, r.eval_seconds)]
        lines += [train_toy.stop_line(r)] if r.diverged_at is not None or r.interrupted else []
    return "\n".join(lines + [train_toy.the_end(results, folded, cfg, seconds)])
