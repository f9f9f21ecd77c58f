"""The training configuration: one dataclass, built once from a script's command line, that the demo's
make_model, make_step and train_arm take; the schedule by depth that fills what was left unset; and
the demo's command line (train_toy.py's flags, which sweep.py takes as its parents).

    cfg = config.train_config(args)                        # train_toy: the command line, resolved
    cfg = config.train_config(args, layers=192, seed=1)    # a script's run: what it varies, over args

Every script that trains as the demo does (train_toy, sweep, deep_end, bench, measure) builds its runs'
configurations with train_config, so a run at the same depth and settings has the same configuration
in every script, and trains identically (test_config.py proves it at 48 and 192 layers).

Stands on cli.py; train_toy.py and the scripts on top of it stand on this file.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

import cli

ARMS = ("vanilla", "admin", "preln", "deepnorm")  # the residual kinds the demo trains
SHALLOW = 48  # up to this depth the demo trains at 2e-3, 50 warm-up steps of 200; deeper, by the rule
LR_RULE = f"lr = 2e-3·√({SHALLOW}/layers)"  # schedule_for's deep peak, in words (help, configuration)
EVAL_EVERY = 20  # steps between held-out evaluations, the demo's default


def schedule_for(layers: int) -> dict:
    """The demo's default peak learning rate, warm-up and budget at `layers` layers.

    Deeper than 48 layers the largest rate at which Admin trains falls about one √2 step per doubling
    of depth (the rule map, tutorial.md Section 12), so the default peak falls as √(48/layers), a step
    under that edge (at 96 and 192 layers; 0 or 1 at 384), with 100 warm-up steps of 400 (deep models
    need more steps to learn)."""
    if layers <= SHALLOW:
        return {"lr": 2e-3, "warmup": 50, "steps": 200}
    # lr = 2e-3·√(48/layers), to 3 figures: 96, 192 and 384 layers land on rungs of sweep.py's ladder
    return {"lr": float(f"{2e-3 * math.sqrt(SHALLOW / layers):.3g}"), "warmup": 100, "steps": 400}


def add_schedule_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--steps, --lr, --warmup: the demo's schedule, shared with the scripts that train as it does.
    Their defaults are None: train_config takes what is left unset from schedule_for(layers)."""
    shallow = schedule_for(SHALLOW)
    for name, kind, text in (
            ("steps", cli.whole(1), "training budget per arm; an arm that neither learns nor diverges runs all of it"),
            ("lr", cli.positive_float, "peak Adam learning rate"), ("warmup", cli.whole(0), "linear warm-up steps to --lr")):
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{text} (default: {shallow[name]:g} up "
                       f"to {SHALLOW} layers, deeper by the rule: {LR_RULE}, warmup 100, steps 400)")
    return p


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except those the depth sets (None until train_config)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How one arm (or each of `arms`, alike) is trained: model sizes, data, schedule, device. In
    the order the demo's configuration line shows them; `schedule` says why the depth set lr, warmup
    or steps (None: it set none of them)."""

    layers: int
    arms: list
    steps: int
    lr: float
    warmup: int
    omega: str = "closed"  # the admin arm's ω: closed form, or profiled on the first batch
    eval_every: int = EVAL_EVERY
    cuda_graph: bool = False  # each step replayed as a CUDA graph (train_toy's --cuda-graph, resolved)
    task: str
    output_change_scale: str
    batch_size: int
    d_model: int
    n_heads: int
    digits: int
    seed: int
    device: str
    threads: int
    schedule: str | None = field(default=None, compare=False)  # why, not what: not compared


def train_config(args: argparse.Namespace, **run) -> TrainConfig:
    """The configuration of one run: `run`'s values (what a script varies: layers, arms, lr, seed, …)
    over the command line's (args; a setting a script has no flag for keeps the demo's default), and
    lr, warmup and steps still unset (None) taken from schedule_for(layers)."""
    given = {}
    for f in fields(TrainConfig):
        if f.name != "schedule":
            unset = None if f.default is MISSING else f.default
            given[f.name] = run[f.name] if f.name in run else getattr(args, f.name, unset)
    chosen = {k: v for k, v in schedule_for(given["layers"]).items() if given[k] is None}
    reason = None
    if given["layers"] > SHALLOW and chosen:
        reason = (f"by depth, {given['layers']} > {SHALLOW} layers: "
                  + ", ".join(f"{k} {v:g}" for k, v in chosen.items())
                  + f" ({LR_RULE}; the rule map, tutorial.md Section 12)")
    return TrainConfig(**given | chosen, schedule=reason)


def settings(cfg: TrainConfig) -> dict:
    """The configuration as the demo's configuration line shows it (no schedule where none was set)."""
    return {k: v for k, v in asdict(cfg).items() if not (k == "schedule" and v is None)}


def configuration(cfg: TrainConfig) -> dict:
    """The settings of the demo's configuration line and of --json's "config"."""
    return cli.configuration(settings(cfg))


def schedule_at(args: argparse.Namespace, depths: list[int]) -> dict:
    """steps, lr and warmup as the runs at `depths` layers train: one value where every depth has the
    same, else the list of them, depth by depth (for a configuration line over several depths)."""
    runs = [train_config(args, layers=d, arms=[]) for d in depths]
    per = {k: [getattr(c, k) for c in runs] for k in ("steps", "lr", "warmup")}
    return {k: v[0] if len(set(v)) == 1 else v for k, v in per.items()}


# ---------------------------------------------------------------------------------------------------
# The demo's command line (train_toy.py's flags), and the configuration it makes
# ---------------------------------------------------------------------------------------------------


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The demo's flags: its training settings, then the model flags it shares (cli.py)."""
    p = argparse.ArgumentParser(description="Vanilla Post-LN vs Admin on a toy sequence task.",
                                formatter_class=DefaultsHelp, add_help=add_help)
    p.add_argument("--layers", type=cli.whole(1), default=48,
                   help="Transformer layers; each has 2 residual sub-layers, so ω uses n = 2 * layers. "
                        f"Deeper than {SHALLOW}, the unset --lr, --warmup and --steps follow the rule: "
                        f"{LR_RULE}, warmup 100, steps 400")
    p.add_argument("--arms", type=cli.comma_list(cli.one_of(ARMS), "arms"), default=["vanilla", "admin"],
                   help=f"comma-separated residual kinds to compare, from {', '.join(ARMS)}")
    add_schedule_flags(p)
    p.add_argument("--omega", choices=("closed", "profiled"), default="closed",
                   help="admin arm: ω from the closed form, or profiled on the first batch (the paper)")
    p.add_argument("--eval-every", type=cli.whole(1), default=EVAL_EVERY,
                   help="steps between held-out evaluations")
    p.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                   help="replay each training step as one CUDA graph (auto: on with --device cuda); "
                        "off trains eagerly, the reference")
    cli.add_model_flags(p)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the curves (needs matplotlib)")
    return p


def parse_command_line(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    """The command line as parsed (its output paths) and the training configuration it asks for."""
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    if args.omega == "profiled" and "admin" not in args.arms:
        p.error(f"argument --omega: profiled applies to the admin arm, which --arms={','.join(args.arms)} lacks")
    return args, train_config(args)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The training configuration that the command line asks for."""
    return parse_command_line(argv)[1]
