"""Helpers shared by the test files (a test file never imports another test file)."""

from __future__ import annotations

import contextlib
import copy
import io
import runpy
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import admin
from lab import cli

# ---------------------------------------------------------------------------------------------------
# admin.py: relative error, tiny configs, the inputs of each shortcut, the fold error, training steps
# ---------------------------------------------------------------------------------------------------

U32 = 2.0**-24  # unit roundoff of float32; of each dtype:
UNIT = {torch.float64: 2.0**-53, torch.float32: U32, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: one number for 'how far apart', robust to the scale of the logits."""
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


def tiny_config(**overrides) -> admin.TransformerConfig:
    """A TransformerConfig small enough for a property test: vocabulary 11, width 8, 2 layers."""
    base = dict(vocab_size=11, max_len=16, d_model=8, n_heads=2, d_ff=16, n_layers=2)
    return admin.TransformerConfig(**{**base, **overrides})


def shortcut_inputs(model: torch.nn.Module, *inputs) -> list[tuple]:
    """(residual, x_{i-1}, f_i(x_{i-1})) for every OmegaResidual, in call order, from one eval pass
    model(*inputs) without gradients. Leaves the model in eval mode."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, *args)))
             for m in model.modules() if isinstance(m, admin.OmegaResidual)]
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


# How close must a folded model be? Folding is exact in exact arithmetic, so what is left is rounding,
# and how much rounding moves the logits depends on the input: a LayerNorm over 2 or 3 features of
# nearly equal values (which hypothesis finds) divides by a tiny standard deviation and magnifies every
# rounding error a thousandfold. So no fixed bound holds for every drawn model, and the tests measure
# the rounding scale of each model on its own input instead, against a float64 copy of it:
#   own    the model's own error in its dtype (the rounding of its operations), and
#   bumped what rounding every parameter once does: each one times (1 ± u), random signs, in float64,
#          with u the dtype's unit roundoff.
# The folded model differs from the model by exactly these two things: its own forward pass in the
# same dtype, and one rounding of each folded product (ω ⊙ γ, ω ⊙ β, W / ω, ω ⊙ embedding). So its
# error should be of the order of own + bumped; FOLD_NOISE_FACTOR = 8 allows for random signs landing
# less favourably than the actual roundings (over 5,000 drawn models the largest ratio we saw was below
# 3). float64 has no wider reference: there both terms are measured in float32 and scaled by 2⁻²⁹, the
# ratio of the two unit roundoffs. A wrong fold (one ω entry not folded) is off by 10⁻² and more:
# test_admin.py::test_a_wrong_fold_fails_the_check shows the check catches it.
FOLD_NOISE_FACTOR = 8


@torch.no_grad()
def rounding_scale(model: torch.nn.Module, inputs: tuple, gen: torch.Generator) -> float:
    """own + bumped (see above), relative to the largest float64 logit of `model` on `inputs`."""
    dtype = next(model.parameters()).dtype
    unit, model64 = UNIT[dtype], copy.deepcopy(model).double()
    reference = model64(*inputs)
    if dtype == torch.float64:  # measured in float32, scaled down to float64's unit
        own = rel_err(copy.deepcopy(model64).float()(*inputs).double(), reference) * unit / U32
    else:
        own = rel_err(model(*inputs).double(), reference)
    bump = max(unit, U32)  # 1 ± 2⁻⁵³ would round to 1 in float64: bump by 2⁻²⁴ and scale
    for t in [*model64.parameters(), *model64.buffers()]:
        t.mul_(1 + bump * (torch.randint(2, t.shape, generator=gen, dtype=t.dtype) * 2 - 1))
    return own + rel_err(model64(*inputs), reference) * unit / bump


def fold_error(model: torch.nn.Module, plain: torch.nn.Module, inputs: tuple,
               gen: torch.Generator) -> tuple[float, float]:
    """The folded model's relative logit error against the model in float64, and what rounding in
    the model's dtype allows (FOLD_NOISE_FACTOR times its rounding scale)."""
    with torch.no_grad():
        err = rel_err(plain(*inputs).double(), copy.deepcopy(model).double()(*inputs))
    return err, FOLD_NOISE_FACTOR * rounding_scale(model, inputs, gen)


def next_token_loss(model: torch.nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting each next token of the last input (B, T) from the tokens before
    it: model(*context, tokens[:, :-1]) against tokens[:, 1:]. inputs: (idx,) for the causal
    language model, (src, tgt) for an encoder–decoder."""
    *context, tokens = inputs
    logits = model(*context, tokens[:, :-1])  # (B, T-1, V)
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def train_steps(model: torch.nn.Module, batches: Iterable,
                optimizer: torch.optim.Optimizer | None = None) -> None:
    """A few training steps, in train mode: one step of next_token_loss per batch. A batch is the
    model's inputs, a tuple such as (src, tgt), or one tensor of token ids (B, T). batches may be a
    generator: each batch is then drawn just before its step. optimizer: Adam with lr 1e-2 if none."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for batch in batches:
        loss = next_token_loss(model, *(batch if isinstance(batch, tuple) else (batch,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


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
