"""The admin-torch 0.1.0 drop-in and bad input.

admin.py's last section offers the package's helpers under its names (calculate_init, as_module,
as_buffer, as_parameter). Section 1 checks that they compute what the package computes: the same ω to
the last bit, from the same kinds of number, stored the same way. Section 2 checks that every bad
input to admin.py is a ValueError that names the argument and the value it got.
"""

import math
import numbers
import re

import pytest
import torch

import admin
from lab.testing_tools import tiny_config

# ---------------------------------------------------------------------------------------------------
# 1. The drop-in
# ---------------------------------------------------------------------------------------------------

# ω as the admin-torch 0.1.0 package itself computes it (repr: every bit), N residual sub-layers. Made
# once in a fresh virtual environment with the package, which this suite does not depend on:
#     python3 -m venv /tmp/at && /tmp/at/bin/pip install admin-torch==0.1.0 torch==2.13.0
#     /tmp/at/bin/python -c 'import admin_torch as a; [print(n, repr(a.calculate_init(n, s)))
#         for n in (1, 2, 12, 24, 96, 384, 2921, 10000) for s in ("O(logn)", "O(1)", "O(n)")]'
# (2026-12-01, Python 3.11, admin-torch 0.1.0 and torch 2.13.0+cpu from PyPI). O(n) is 1.0 at every N.
ADMIN_TORCH_0_1_0 = {  # N: (O(logn), O(1))
    1: (1.373095073830624, 1.0), 2: (1.3155674364624994, 1.4142135623730951),
    12: (2.017009218686578, 3.4641016151377544), 24: (2.6012855825524324, 4.898979485566356),
    96: (4.49483317887631, 9.797958971132712), 384: (7.979387853004898, 19.595917942265423),
    2921: (19.109273429271354, 54.046276467486635), 10000: (32.936802966987216, 100.0)}


def test_calculate_init_is_bit_identical_to_admin_torch():
    """Our ω equals, to the last bit, what the admin-torch 0.1.0 package printed (above). The package
    takes the square root as `value ** 0.5`, which differs from the correctly rounded math.sqrt in the
    last bit for some N: 2921 for O(1) is such a witness, so a math.sqrt here would fail."""
    assert math.sqrt(2921) != ADMIN_TORCH_0_1_0[2921][1], "the witness that the choice of square root matters"
    for n, (logn, one) in ADMIN_TORCH_0_1_0.items():
        assert admin.calculate_init(n, "O(logn)") == admin.calculate_init(n, "default") == logn, n
        assert admin.calculate_init(n, "O(1)") == one, n
        assert admin.calculate_init(n, "O(n)") == 1.0, n


def _int_method(name: str):
    """The int's method `name`, called on the wrapped value."""
    return lambda self, *args: getattr(self.value, name)(*args)


# Every abstract method of numbers.Integral (arithmetic, bit operations, comparisons, rounding),
# answered by the wrapped int: what a subclass must define before it can have instances.
IntMethods = type("IntMethods", (), {name: _int_method(name)
                                     for name in numbers.Integral.__abstractmethods__})


class IntegerLike(IntMethods, numbers.Integral):
    """Stands in for a NumPy integer: a numbers.Integral that is not an int, convertible with int()
    and float(), as np.int64 is. NumPy registers its integers with numbers.Integral, a change to the
    ABC that every later test would see; this class subclasses it instead, so nothing global changes.
    So this test needs no NumPy (requirements.txt does not ask for it); where NumPy is installed, its
    own types are checked too."""

    def __init__(self, value: int):
        self.value = value

    def __ge__(self, other) -> bool:
        return self.value >= other

    def __repr__(self) -> str:
        return f"IntegerLike({self.value})"


def integer_kinds(value: int) -> list:
    kinds = [value, IntegerLike(value), float(value)]
    try:
        import numpy as np
    except ImportError:  # requirements.txt does not ask for NumPy
        return kinds
    return kinds + [np.int64(value), np.int32(value), np.float64(value)]


def test_drop_in_counts_accept_what_admin_torch_accepts():
    """admin-torch computes with whatever number it is given: integral floats and NumPy integers work
    there, so they work here (and give the same ω as the int); fractions are still refused."""
    assert isinstance(IntegerLike(24), numbers.Integral) and not isinstance(IntegerLike(24), int)
    for n in integer_kinds(24):
        assert admin.calculate_init(n) == admin.calculate_init(24), type(n)
    for C in integer_kinds(3):
        omega = admin.as_module(12, as_parameter=True, embed_dim=C).omega
        assert omega.shape == (3,), type(C)
    with pytest.raises(ValueError, match="embed_dim=2.5"):
        admin.as_module(12, as_parameter=True, embed_dim=2.5)


def test_as_module_as_buffer_as_parameter():
    n = 24
    omega = admin.calculate_init(n)
    assert admin.as_module(n).omega.item() == pytest.approx(omega, rel=1e-7)
    assert admin.as_module(n, "O(1)", as_parameter=True, embed_dim=3).omega.tolist() == \
        pytest.approx([math.sqrt(n)] * 3, rel=1e-7)
    net = torch.nn.Module()
    admin.as_buffer(net, "omega_attn", n)
    admin.as_parameter(net, "omega_ffn", n, embed_dim=4, output_change_scale="O(n)")
    assert dict(net.named_buffers())["omega_attn"].item() == pytest.approx(omega, rel=1e-7)
    assert dict(net.named_parameters())["omega_ffn"].tolist() == [1.0] * 4


# ---------------------------------------------------------------------------------------------------
# 2. Bad input: a ValueError that names the argument and the value
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -3, 2.5, -2.0, float("nan"), float("inf"), "12", None, True])
def test_calculate_init_rejects_bad_layer_counts(bad):
    with pytest.raises(ValueError, match="num_res_layers.*" + re.escape("whole number >= 1") + ".*" + re.escape(repr(bad))):
        admin.calculate_init(bad)


def test_calculate_init_rejects_unknown_scale():
    """The error names the bad value and what is allowed."""
    with pytest.raises(ValueError, match=r"output_change_scale .*'O\(log n\)'") as error:
        admin.calculate_init(12, "O(log n)")
    assert all(allowed in str(error.value) for allowed in ("O(logn)", "O(1)", "O(n)")), error.value


@pytest.mark.parametrize("embed_dim", [None, 0, 2.5, True])
def test_trainable_omega_needs_embed_dim(embed_dim):
    with pytest.raises(ValueError, match=re.escape(f"embed_dim={embed_dim!r}")):
        admin.OmegaResidual(2.0, as_parameter=True, embed_dim=embed_dim)
    with pytest.raises(ValueError, match=re.escape(f"embed_dim={embed_dim!r}")):
        admin.as_parameter(torch.nn.Module(), "omega", 12, embed_dim=embed_dim)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "2.0", None])
def test_omega_must_be_a_finite_number(value):
    for as_param in (False, True):
        with pytest.raises(ValueError, match=re.escape(f"got {value!r}")):
            admin.OmegaResidual(value, as_parameter=as_param, embed_dim=4)


@pytest.mark.parametrize("field, value, words", [
    ("n_heads", 3, "must divide d_model=8"), ("residual", "postln", "'admin', 'vanilla', 'preln'"),
    ("n_layers", 0, "n_layers must be an integer >= 1, got 0"), ("output_change_scale", "O(n^2)", "O(n^2)"),
    ("dropout", 1.5, "dropout must be in")])
def test_config_rejects_bad_values(field, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        tiny_config(**{field: value})
