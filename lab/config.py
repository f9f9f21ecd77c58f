"""How the lab's scripts build their runs from the demo's configuration (train_toy.TrainConfig): one
run's configuration from a command line and what the script varies, the schedule flags, the schedule of
several depths for one configuration line.

    cfg = config.train_config(args, layers=192, seed=1)    # a script's run: what it varies, over args

Every script that trains as the demo does (sweep, deep_end, bench, measure) builds its runs with
train_config, so a run at the same depth and settings has the same configuration in every script and
trains identically (test_config.py proves it at 48 and 192 layers).
"""

from __future__ import annotations

import argparse
from dataclasses import fields

import train_toy
from lab import cli
from train_toy import SHALLOW, DefaultsHelp, TrainConfig, schedule_for  # noqa: F401 (the lab's, through this file)

EVAL_EVERY = TrainConfig().eval_every  # steps between held-out evaluations, the demo's default


def add_schedule_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--steps, --lr, --warmup: the demo's schedule, for the scripts that train as it does. Their
    defaults are None: TrainConfig takes what is left unset from schedule_for(layers)."""
    shallow = schedule_for(SHALLOW)
    for name, kind, text in (
            ("steps", cli.whole(1), "training budget per arm; an arm that neither learns nor diverges runs all of it"),
            ("lr", cli.positive_float, "peak Adam learning rate"), ("warmup", cli.whole(0), "linear warm-up steps to --lr")):
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{text} (default: {shallow[name]:g} up "
                       f"to {SHALLOW} layers, deeper by the rule: {train_toy.LR_RULE}, warmup 100, steps 400)")
    return p


def train_config(args: argparse.Namespace, **run) -> TrainConfig:
    """The configuration of one run: `run`'s values (what a script varies: layers, arms, lr, seed, …)
    over the command line's (args; a setting a script has no flag for keeps the demo's default), and
    lr, warmup and steps still unset (None) taken by TrainConfig from schedule_for(layers)."""
    names = [f.name for f in fields(TrainConfig) if f.name != "schedule"]
    return TrainConfig(**{k: run[k] if k in run else getattr(args, k) for k in names if k in run or hasattr(args, k)})


def schedule_at(args: argparse.Namespace, depths: list[int]) -> dict:
    """steps, lr and warmup as the runs at `depths` layers train: one value where every depth has the
    same, else the list of them, depth by depth (for a configuration line over several depths)."""
    runs = [train_config(args, layers=d, arms=[]) for d in depths]
    per = {k: [getattr(c, k) for c in runs] for k in ("steps", "lr", "warmup")}
    return {k: v[0] if len(set(v)) == 1 else v for k, v in per.items()}
