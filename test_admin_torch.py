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
from testing_tools import tiny_config

# ---------------------------------------------------------------------------------------------------
# 1. The drop-in
# ---------------------------------------------------------------------------------------------------

def test_calculate_init_is_bit_identical_to_admin_torch_arithmetic():
    """admin-torch 0.1.0 takes the square root as `value ** 0.5`, which differs from the correctly
    rounded math.sqrt in the last bit for some N (2921 for O(1)); our values must equal the package's."""
    assert math.sqrt(2921) != 2921**0.5, "the witness that the choice of square root matters"
    for n in range(1, 10_001):
        assert admin.calculate_init(n, "O(logn)") == ((n + 1) / math.log(n + 1) - 1) ** 0.5, n
        assert admin.calculate_init(n, "O(1)") == n**0.5, n


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
    with pytest.raises(ValueError, match=re.escape("whole number >= 1") + ".*" + re.escape(repr(bad))):
        admin.calculate_init(bad)


def test_calculate_init_rejects_unknown_scale():
    with pytest.raises(ValueError, match=r"'O\(log n\)'.*|O\(logn\)"):
        admin.calculate_init(12, "O(log n)")


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
