"""Helpers shared by the lab's test files (a test file never imports another test file): the accelerators
present, a tiny run of the demo, and a script's command line run as __main__ in this process."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lab import cli

# ---------------------------------------------------------------------------------------------------
# The scripts: the accelerators present, and a tiny run of the demo
# ---------------------------------------------------------------------------------------------------

ACCELERATORS = [d for d in cli.available_devices() if d != "cpu"]  # the device checks run on each

# train_toy flags for a run of a second or less (add --layers; sweep takes it as a grid flag). Later
# flags win, so a test overrides one by appending it.
TINY_RUN = ["--d-model", "8", "--n-heads", "2", "--digits", "3", "--batch-size", "8", "--steps", "6",
            "--eval-every", "3", "--warmup", "2", "--threads", "1"]


def exit_2_error(parse: Callable, argv: list[str], capsys) -> str:
    """What parse(argv) wrote on its way to argparse's exit 2, checked to hold no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def run_as_main(script: str, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python SCRIPT ARGV` (SCRIPT: a file of the repository's root, or
    a module such as lab.sweep, run with python -m), run as __main__ in this process: runpy
    executes the script's own `if __name__ == "__main__":` lines with sys.argv set, so no second
    interpreter (and torch import, about 1.5 s) starts. An exception other than SystemExit is raised
    here, as it would be a traceback on the command line. torch's thread count is restored."""
    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    saved_argv, sys.argv = sys.argv, [script, *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if script.endswith(".py"):
                runpy.run_path(str(Path(__file__).parents[1] / script), run_name="__main__")
            else:
                runpy.run_module(script, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1  # as Python exits
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def command_line_error(script: str, argv: list[str]) -> str:
    """stderr of `python SCRIPT ARGV` (run_as_main), checked to be exit 2 with no traceback."""
    code, _, err = run_as_main(script, argv)
    assert code == 2 and "Traceback" not in err, err
    return err
