"""The lab's command-line pieces: the validators of its multi-value flags (argparse types that refuse a
bad value with what is allowed), devices, checks across flags, output files, the configuration line.
The demo's own flags and checks are train_toy's; the lab's scripts take them from there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Callable

import torch

import train_toy
from train_toy import (add_model_flags, available_devices, configuration_line, device_name,  # noqa: F401
                       pyplot, start)  # the lab's, through this file

TASKS = ("reverse", "copy")  # train_toy's tasks


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


def sync(device: str | torch.device) -> None:
    """Wait for the device to finish what was queued, so that a clock read after it is honest."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def finish(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """train_toy.finish (the demo's checks across flags, --device resolved), then the lab's output
    paths: --results and --out must be writable files too."""
    train_toy.finish(p, args)
    check_outputs(p, {flag: getattr(args, flag[2:], None) for flag in ("--results", "--out")}, plots=())
    return args


def check_outputs(p: argparse.ArgumentParser, paths: dict[str, str | None], plots: tuple[str, ...] = ()) -> None:
    """Exit 2, naming the flag, for an output path that is not a writable file, and for a flag whose
    whole product is a figure (`plots`: diagram's --out) given without matplotlib (which is optional).
    A --plot beside other output is not refused: write_outputs says how to get the figure instead."""
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


def configuration(settings: dict, skip=("json", "plot")) -> dict:
    """The resolved settings, as a script's first line of output shows them: the device by name, and
    the torch version."""
    config = {k: v for k, v in settings.items() if k not in skip}
    return config | dict(device=device_name(settings["device"]), threads=settings["threads"],
                         torch=torch.__version__)


def write_outputs(args: argparse.Namespace, out: dict, plot: Callable[[str], None], log) -> None:
    """--json PATH: `out` as JSON; --plot PATH: plot(PATH), and say where it went (or, without
    matplotlib, how to get it)."""
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if getattr(args, "plot", None):  # a script with no --plot flag has none
        if pyplot() is None:
            log(train_toy.no_figure(args.plot))
        else:
            plot(args.plot)
            log(f"wrote {args.plot}")
