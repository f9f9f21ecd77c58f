"""Command-line pieces shared by the scripts (train_toy, measure, sweep, bench, deep_end): validators,
the --device flag, the model flags, checks across flags, output paths, the configuration line. A bad
value is argparse's exit 2 naming the flag.

Stands on torch alone; the scripts stand on it (admin.py → cli.py → train_toy.py → the others).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Callable

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
TASKS = ("reverse", "copy")  # train_toy's tasks


# ---------------------------------------------------------------------------------------------------
# Validators: argparse types that refuse a bad value with what is allowed
# ---------------------------------------------------------------------------------------------------


def whole(low: int, high: int | None = None):
    """A whole number from `low` (to `high`)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got {text!r}")
        return value
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def one_of(choices):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text
    return parse


def comma_list(parse_one, name: str):
    """A comma-separated list of distinct values, each checked by `parse_one`."""
    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {name}, got {text!r}")
        values = [parse_one(p) for p in parts]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"has a value twice, got {text!r}")
        return values
    return parse


# ---------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(asked: str, parser: argparse.ArgumentParser) -> str:
    """`auto` → cuda, else mps, else cpu; an absent device is exit 2 naming the flag."""
    found = available_devices()
    if asked == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if d in found)
    if asked not in found:
        parser.error(f"argument --device: {asked} is not available on this machine "
                     f"(available: {', '.join(found)})")
    return asked


def device_name(device: str) -> str:
    """The device as a configuration line reports it: cpu, or e.g. cuda (NVIDIA H100 80GB HBM3)."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device == "cuda" else device


def sync(device: str | torch.device) -> None:
    """Wait for the device to finish what was queued, so that a clock read after it is honest."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


# ---------------------------------------------------------------------------------------------------
# The model flags every script shares
# ---------------------------------------------------------------------------------------------------


def add_model_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags that make train_toy's model, data and device, shared by every script."""
    p.add_argument("--task", choices=TASKS, default="reverse", help="what the answer is")
    p.add_argument("--output-change-scale", choices=("O(logn)", "O(1)"), default="O(logn)",
                   help="admin arm: ω = admin.calculate_init(2 * layers, this)")
    p.add_argument("--batch-size", type=whole(1), default=16, help="examples per training batch")
    p.add_argument("--d-model", type=whole(1), default=64, help="model width C (d_ff = 4C)")
    p.add_argument("--n-heads", type=whole(1), default=4, help="attention heads; must divide --d-model")
    p.add_argument("--digits", type=whole(1, 16), default=6, help="length of each digit string")
    p.add_argument("--seed", type=whole(0), default=0,
                   help="seeds the weights and the data: same seed, same numbers")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where model, data and "
                   "evaluation live: auto = cuda if there is one, else mps if there is one, else cpu")
    p.add_argument("--threads", type=whole(1), default=2, help="torch threads on the CPU")
    return p


# ---------------------------------------------------------------------------------------------------
# The parsed command line: checks across flags, output files, the configuration line
# ---------------------------------------------------------------------------------------------------


def finish(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Check what one flag alone cannot (exit 2 naming it) and resolve --device and --cuda-graph."""
    args.device = resolve_device(args.device, p)
    if getattr(args, "cuda_graph", None) == "on" and args.device != "cuda":
        p.error(f"argument --cuda-graph: on needs --device cuda (the device is {args.device})")
    if hasattr(args, "cuda_graph"):
        args.cuda_graph = args.cuda_graph != "off" and args.device == "cuda"
    if args.d_model % args.n_heads:
        p.error(f"argument --n-heads: must divide --d-model={args.d_model}, got {args.n_heads}")
    check_outputs(p, {flag: getattr(args, flag[2:], None) for flag in ("--json", "--plot")})
    return args


def start(settings) -> None:
    """Set torch up for a run (settings: anything with .threads, a command line or a TrainConfig): its
    threads, and subnormal floats flushed to zero on the CPU, because a stuck deep model's vanishing
    gradients turn subnormal, which slows every CPU step severalfold."""
    torch.set_num_threads(settings.threads)
    torch.set_flush_denormal(True)


def configuration(settings: dict, skip=("json", "plot")) -> dict:
    """The resolved settings, as a script's first line of output shows them: the device by name, and
    the torch version."""
    config = {k: v for k, v in settings.items() if k not in skip}
    return config | dict(device=device_name(settings["device"]), threads=settings["threads"],
                         torch=torch.__version__)


def configuration_line(config: dict) -> str:
    """A script's first line: `configuration: k=v, ...` (every script that prints one, through this)."""
    return "configuration: " + ", ".join(f"{k}={v}" for k, v in config.items())


def check_outputs(p: argparse.ArgumentParser, paths: dict[str, str | None],
                  plots: tuple[str, ...] = ("--plot",)) -> None:
    """Exit 2, naming the flag, for an output path that is not a writable file, and for a plot flag
    (`plots`: the flags whose file matplotlib draws) given without matplotlib (which is optional)."""
    for flag, path in paths.items():
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK) \
                or (os.path.exists(path) and not os.access(path, os.W_OK)):
            p.error(f"argument {flag}: cannot write to {path!r} (need a writable file path)")
    for flag in plots:
        if paths.get(flag) is None:
            continue
        try:
            import matplotlib  # noqa: F401  (only whether it imports)
        except ImportError:
            p.error(f"argument {flag}: needs matplotlib, which is optional: pip install matplotlib")


def write_outputs(args: argparse.Namespace, out: dict, plot: Callable[[str], None], log) -> None:
    """--json PATH: `out` as JSON; --plot PATH: plot(PATH), and say where it went."""
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if getattr(args, "plot", None):  # a script with no --plot flag has none
        plot(args.plot)
        log(f"wrote {args.plot}")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (check_outputs has made sure it is there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
