"""Tests for diagram.py, the picture of four residual sub-layers: it draws what admin.py computes."""

import sys
from pathlib import Path

import pytest

import admin
from lab import diagram
from lab.testing_tools import command_line_error, exit_2_error

ADMIN_SOURCE = (Path(__file__).parents[1] / "admin.py").read_text()


@pytest.mark.parametrize("panel", diagram.PANELS, ids=lambda p: p.name)
def test_each_equation_under_a_panel_is_the_one_admin_py_states(panel):
    assert panel.equation in ADMIN_SOURCE, f"{panel.name}: {panel.equation!r} is not admin.py's equation"


@pytest.mark.parametrize("panel", diagram.PANELS, ids=lambda p: p.name)
def test_each_block_diagram_is_its_equation(panel):
    """Where the LN sits, and what multiplies the shortcut, read off the equation and off the picture."""
    norm_after_the_add = panel.equation.startswith("x_i = LN(")
    assert panel.pre_ln == (not norm_after_the_add), f"{panel.name}: the LN box is on the wrong side of ⊕"
    addend = panel.equation.split(" = LN(" if norm_after_the_add else " = ")[1].split(" + f_i")[0]
    on_the_shortcut = set(addend.split()) - {"x_{i-1}"}  # e.g. {"ω_i", "⊙"}
    drawn = set((panel.shortcut_scale or "").split()) - {"×"}  # "× α" draws a plain product
    assert drawn == on_the_shortcut, \
        f"{panel.name}: the shortcut node shows {drawn}, the equation {on_the_shortcut}"


def test_the_deepnorm_panel_states_admin_py_s_alpha_and_weight_scale():
    note = diagram.PANELS[-1].note
    assert "(2N)^(1/4)" in admin.deepnorm_alpha.__doc__ and "(2N)^{1/4}" in note
    assert "(8N)^(-1/4)" in admin.deepnorm_beta.__doc__ and r"\beta_\mathrm{DN} = (8N)^{-1/4}" in note


def test_equations_become_mathtext_symbol_for_symbol():
    assert diagram.math("x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))") == \
        r"$x_i = \mathrm{LN}(\omega_i \odot x_{i-1} + f_i(x_{i-1}))$"
    assert diagram.math("x_i = LN(α x_{i-1} + f_i(x_{i-1}))") == \
        r"$x_i = \mathrm{LN}(\alpha\,x_{i-1} + f_i(x_{i-1}))$"
    assert diagram.math("weights\n× β_DN") == "weights\n$× \\beta_\\mathrm{DN}$"


def test_a_bad_out_is_exit_2_naming_out(capsys, tmp_path):
    err = exit_2_error(diagram.parse_args, ["--out", str(tmp_path / "no such folder" / "s.png")], capsys)
    assert "argument --out: cannot write to" in err
    assert "argument --out: cannot write to" in command_line_error("lab.diagram", ["--out", str(tmp_path)])


def test_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    err = exit_2_error(diagram.parse_args, ["--out", str(tmp_path / "s.png")], capsys)
    assert "argument --out: needs matplotlib, which is optional: pip install matplotlib" in err
