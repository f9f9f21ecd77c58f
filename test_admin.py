"""Property tests for admin.py: every equation the file states, checked by a second computation."""

import copy
import dataclasses
import math
import numbers
import re

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import admin


U32 = 2.0**-24  # unit roundoff of float32; of each dtype:
UNIT = {torch.float64: 2.0**-53, torch.float32: U32, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: one number for 'how far apart', robust to the scale of the logits."""
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


def tiny_config(**overrides) -> admin.TransformerConfig:
    base = dict(vocab_size=11, max_len=16, d_model=8, n_heads=2, d_ff=16, n_layers=2)
    return admin.TransformerConfig(**{**base, **overrides})


def randomize_omegas(model: admin.PostLNTransformer, gen: torch.Generator, lo=0.2, hi=5.0) -> None:
    """Give every ω random positive entries, so tests do not lean on the initial constant."""
    with torch.no_grad():
        for s in model.sublayers():
            omega = s.shortcut.omega
            omega.copy_(lo + (hi - lo) * torch.rand(omega.shape, generator=gen, dtype=omega.dtype))


# ---------------------------------------------------------------------------------------------------
# 1. ω formulas
# ---------------------------------------------------------------------------------------------------

def test_calculate_init_matches_the_three_formulas_for_n_1_to_10000():
    for n in range(1, 10_001):
        # The formulas written a second way: exp/log for the square root, log1p for ln(n + 1).
        expected = {"O(n)": 1.0,
                    "O(logn)": math.exp(0.5 * math.log((n + 1) / math.log1p(n) - 1)),
                    "O(1)": math.exp(0.5 * math.log(n))}
        expected["default"] = expected["O(logn)"]
        for scale, value in expected.items():
            got = admin.calculate_init(n, scale)
            assert isinstance(got, float), f"calculate_init({n}, {scale}) is a {type(got).__name__}"
            assert math.isclose(got, value, rel_tol=1e-12), f"ω({n}, {scale}) = {got}, want {value}"
            assert got >= 1.0, f"ω({n}, {scale}) = {got} < 1"


def test_calculate_init_is_bit_identical_to_admin_torch_arithmetic():
    """admin-torch 0.1.0 takes the square root as `value ** 0.5`, which differs from the correctly
    rounded math.sqrt in the last bit for some N (2921 for O(1)); our values must equal the package's."""
    assert math.sqrt(2921) != 2921**0.5, "the witness that the choice of square root matters"
    for n in range(1, 10_001):
        assert admin.calculate_init(n, "O(logn)") == ((n + 1) / math.log(n + 1) - 1) ** 0.5, n
        assert admin.calculate_init(n, "O(1)") == n**0.5, n


def test_calculate_init_matches_published_examples():
    # Values quoted for the admin-torch package (N = 12 and N = 96 residual sub-layers).
    assert round(admin.calculate_init(12), 3) == 2.017
    assert round(admin.calculate_init(12, "O(1)"), 3) == 3.464
    assert round(admin.calculate_init(96), 3) == 4.495
    assert round(admin.calculate_init(96, "O(1)"), 3) == 9.798


def test_log_scale_increases_and_grows_slower_than_constant_scale():
    log = [admin.calculate_init(n, "O(logn)") for n in range(1, 5001)]
    const = [admin.calculate_init(n, "O(1)") for n in range(1, 5001)]
    # y / ln y falls until y = e, so with y = N + 1 the O(logn) ω dips once, from N = 1 to N = 2
    # (1.373 → 1.316), and increases from there on.
    assert log[0] > log[1], "expected the dip from N = 1 to N = 2"
    assert all(a < b for a, b in zip(log[1:], log[2:])), "O(logn) ω is not increasing for N >= 2"
    ratios = [a / b for a, b in zip(log, const)]
    assert all(a > b for a, b in zip(ratios, ratios[1:])), "ω_log / ω_const is not decreasing"
    # At N = 1 the log formula gives sqrt(2/ln 2 − 1) ≈ 1.37 > 1; from N = 2 on it is the smaller.
    assert all(a < b for a, b in zip(log[1:], const[1:]))


@pytest.mark.parametrize("bad", [0, -3, 2.5, -2.0, float("nan"), float("inf"), "12", None, True])
def test_calculate_init_rejects_bad_layer_counts(bad):
    with pytest.raises(ValueError, match=re.escape("whole number >= 1") + ".*" + re.escape(repr(bad))):
        admin.calculate_init(bad)


class IntegerLike:
    """Stands in for a NumPy integer: not a subclass of int, but registered as numbers.Integral and
    convertible with int() and float(), as np.int64 is. So this test needs no NumPy (requirements.txt
    does not ask for it); where NumPy is installed, its own types are checked too."""

    def __init__(self, value: int):
        self.value = value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __float__(self) -> float:
        return float(self.value)

    def __ge__(self, other) -> bool:
        return self.value >= other


numbers.Integral.register(IntegerLike)


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
    for n in integer_kinds(24):
        assert admin.calculate_init(n) == admin.calculate_init(24), type(n)
    for C in integer_kinds(3):
        omega = admin.as_module(12, as_parameter=True, embed_dim=C).omega
        assert omega.shape == (3,), type(C)
    with pytest.raises(ValueError, match="embed_dim=2.5"):
        admin.as_module(12, as_parameter=True, embed_dim=2.5)


def test_calculate_init_rejects_unknown_scale():
    with pytest.raises(ValueError, match=r"'O\(log n\)'.*|O\(logn\)"):
        admin.calculate_init(12, "O(log n)")


# ---------------------------------------------------------------------------------------------------
# 2. The ω residual and the admin-torch compatible helpers
# ---------------------------------------------------------------------------------------------------

@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 8)),
       omega=st.floats(0.1, 20.0), as_param=st.booleans(), seed=st.integers(0, 2**16))
def test_omega_residual_is_the_displayed_equation(shape, omega, as_param, seed):
    gen = torch.Generator().manual_seed(seed)
    x, f_x = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    res = admin.OmegaResidual(omega, as_parameter=as_param, embed_dim=shape[-1]).double()
    w = res.omega.detach().expand(shape[-1])  # ω as stored (rounded to float32, then widened)
    assert torch.allclose(w, torch.tensor(omega, dtype=torch.float64), rtol=1e-7)
    expected = torch.empty_like(x)
    for idx in torch.cartesian_prod(*(torch.arange(d) for d in shape)).reshape(-1, 3).tolist():
        i = tuple(idx)
        expected[i] = w[i[-1]].item() * x[i].item() + f_x[i].item()
    assert rel_err(res(x, f_x).detach(), expected) <= 1e-15, "OmegaResidual != ω·x + f_x"


def test_omega_residual_with_omega_one_is_the_plain_sum():
    x, f_x = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for res in (admin.OmegaResidual(1.0), admin.OmegaResidual(1.0, as_parameter=True, embed_dim=4)):
        assert torch.equal(res(x, f_x), x + f_x)
    assert torch.equal(admin.PlainResidual()(x, f_x), x + f_x)


def test_omega_storage_buffer_scalar_or_trainable_vector():
    buf = admin.OmegaResidual(2.0)
    assert [n for n, _ in buf.named_buffers()] == ["omega"] and not list(buf.parameters())
    assert buf.omega.shape == (1,)
    vec = admin.OmegaResidual(2.0, as_parameter=True, embed_dim=5)
    assert vec.omega.shape == (5,) and vec.omega.requires_grad
    assert torch.all(vec.omega == 2.0)


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


# ---------------------------------------------------------------------------------------------------
# 3. The model
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, words", [
    ("n_heads", 3, "must divide d_model=8"), ("residual", "postln", "'admin', 'vanilla', 'preln'"),
    ("n_layers", 0, "n_layers must be an integer >= 1, got 0"), ("output_change_scale", "O(n^2)", "O(n^2)"),
    ("dropout", 1.5, "dropout must be in")])
def test_config_rejects_bad_values(field, value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        tiny_config(**{field: value})


def test_admin_with_unit_omega_equals_vanilla_with_the_same_weights():
    torch.manual_seed(0)
    model = admin.PostLNTransformer(tiny_config(n_layers=3)).double()
    with torch.no_grad():
        for s in model.sublayers():
            s.shortcut.omega.fill_(1.0)
    vanilla = admin.PostLNTransformer(tiny_config(n_layers=3, residual="vanilla")).double()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(".omega")}
    vanilla.load_state_dict(state, strict=True)
    idx = torch.randint(11, (3, 7))
    assert rel_err(model(idx), vanilla(idx)) <= 1e-14, "Admin(ω = 1) != vanilla Post-LN"


def test_admin_model_omega_starts_at_the_closed_form_value():
    cfg = tiny_config(n_layers=5)
    model = admin.PostLNTransformer(cfg)
    want = admin.calculate_init(2 * cfg.n_layers)  # N counts sub-layers: 2 per layer
    for s in model.sublayers():
        assert s.shortcut.omega.shape == (cfg.d_model,) and s.shortcut.omega.requires_grad
        assert torch.allclose(s.shortcut.omega, torch.tensor(want)), "initial ω != calculate_init(2L)"
    fixed = admin.PostLNTransformer(tiny_config(n_layers=5, omega_as_parameter=False))
    assert all(s.shortcut.omega.shape == (1,) for s in fixed.sublayers())
    assert not any("omega" in name for name, _ in fixed.named_parameters())


def test_model_is_causal_a_future_token_does_not_change_earlier_logits():
    for residual in admin.RESIDUALS:
        model = admin.PostLNTransformer(tiny_config(residual=residual)).double()
        idx = torch.randint(11, (2, 9))
        changed = idx.clone()
        changed[:, 6] = (idx[:, 6] + 1) % 11
        a, b = model(idx), model(changed)
        assert rel_err(a[:, :6], b[:, :6]) <= 1e-13, f"{residual}: position 6 leaked into 0..5"
        assert rel_err(a[:, 6:], b[:, 6:]) > 1e-6, f"{residual}: position 6 had no effect at all"


def test_preln_block_is_pytorch_norm_first_layer():
    model = admin.PostLNTransformer(tiny_config(residual="preln")).double().eval()
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True, norm_first=True)
    layer = layer.double().eval()
    layer.load_state_dict(model.blocks[0].state_dict(), strict=True)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    assert rel_err(model.blocks[0](x), layer(x, src_mask=mask, is_causal=True)) <= 1e-12


def test_sequence_longer_than_max_len_is_rejected():
    model = admin.PostLNTransformer(tiny_config())
    with pytest.raises(ValueError, match="sequence length 17 exceeds max_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_autocast_at_48_layers_is_finite_and_close_to_float64(dtype):
    """Admin's ω at 48 layers is 4.5: it multiplies activations that LayerNorm keeps near unit scale,
    far from float16's largest number (65504). Under autocast the logits are computed, and stored, in
    the half format, so they cannot be closer to the truth than about one of its roundings; LayerNorm
    renormalizes what earlier layers got wrong, so the error does not grow with depth. We measured
    2–2.5 units of the format's roundoff over seeds 0–3; 8 units is the bound."""
    torch.manual_seed(0)
    model = admin.PostLNTransformer(tiny_config(n_layers=48, d_model=32, n_heads=4, d_ff=64))
    idx = torch.randint(11, (4, 12))
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(idx)
    with torch.autocast("cpu", dtype=dtype):
        low = model(idx)
        loss = low.float().logsumexp(-1).mean()
    loss.backward()
    assert low.dtype == dtype and torch.isfinite(low).all(), f"{dtype} logits not finite"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters()), f"{dtype} gradients not finite"
    assert all(s.shortcut.omega.grad.abs().sum() > 0 for s in model.sublayers()), "ω got no gradient"
    err = rel_err(low.double(), reference)
    assert err <= 8 * UNIT[dtype], f"{dtype} logits {err:.1e} from float64, more than 8 roundings"


# ---------------------------------------------------------------------------------------------------
# 4. Profiling
# ---------------------------------------------------------------------------------------------------

def test_profiled_omega_follows_the_recurrence_on_the_same_pass():
    torch.manual_seed(1)
    cfg = tiny_config(n_layers=4, d_model=16, d_ff=32, dropout=0.3)
    model = admin.PostLNTransformer(cfg).double().train()
    batch = torch.randint(11, (6, 10))
    omegas = admin.profile_omega(model, batch)
    assert model.training, "profile_omega did not restore train mode"
    assert len(omegas) == 2 * cfg.n_layers and omegas[0] == 1.0
    assert all(p.grad is None for p in model.parameters())

    # Capture (x_{i-1}, f_i(x_{i-1})) at every shortcut in an ordinary eval pass with the profiled ω:
    # ω_i only affects x_i onwards, so this pass sees the same tensors as profiling did.
    seen = []
    hooks = [s.shortcut.register_forward_hook(lambda m, args, out: seen.append(args))
             for s in model.sublayers()]
    model.eval()(batch)
    for h in hooks:
        h.remove()
    for i, ((x, f_x), omega) in enumerate(zip(seen, omegas, strict=True)):
        stored = model.sublayers()[i].shortcut.omega
        assert torch.all(stored == omega), f"ω_{i + 1} stored on the model != returned value"
        if i + 1 < len(omegas):
            want_sq = (omega * x).var(correction=0).item() + f_x.var(correction=0).item()
            assert math.isclose(omegas[i + 1] ** 2, want_sq, rel_tol=1e-10), f"ω_{i + 2}² recurrence"

    # The paper's closed reading: ω_i² ≈ Var[x_0] + Σ_{j<i} Var[f_j] (LayerNorm outputs have Var ≈ 1).
    var_x0 = seen[0][0].var(correction=0).item()
    for i in range(1, len(omegas)):
        approx = var_x0 + sum(f.var(correction=0).item() for _, f in seen[:i])
        assert math.isclose(omegas[i] ** 2, approx, rel_tol=1e-3), f"ω_{i + 1}² vs Σ Var f"


def test_profiling_is_deterministic_with_dropout_and_restores_eval_mode():
    torch.manual_seed(2)
    model = admin.PostLNTransformer(tiny_config(dropout=0.5)).train()
    batch = torch.randint(11, (4, 8))
    assert admin.profile_omega(model, batch) == admin.profile_omega(model, batch)
    model.eval()
    admin.profile_omega(model, batch)
    assert not model.training


@pytest.mark.parametrize("residual", ["vanilla", "preln"])
def test_profile_and_reparameterize_need_an_admin_model(residual):
    model = admin.PostLNTransformer(tiny_config(residual=residual))
    with pytest.raises(ValueError, match="PostLNTransformer has no OmegaResidual to profile"):
        admin.profile_omega(model, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=f"residual='admin'.*residual='{residual}'"):
        admin.reparameterize(model)
    with pytest.raises(ValueError, match="got Linear"):
        admin.reparameterize(torch.nn.Linear(2, 2))


def walk_profile(model: admin.PostLNTransformer, batch: torch.Tensor) -> list[float]:
    """The built-in model profiled as admin.py did before profile_omega took any model: walking
    its sub-layers by hand. The hook-based profile_omega must give exactly these values."""
    omegas, r = [], 1.0
    with torch.no_grad():
        x = model.embed(batch)
        for s in model.sublayers():
            s.shortcut.omega.fill_(r)
            f_x = s.branch(x)
            r_next = math.sqrt(torch.var(r * x, correction=0).item() + torch.var(f_x, correction=0).item())
            x = s.norm(s.shortcut(x, f_x))
            omegas.append(r)
            r = r_next
    return omegas


@given(layers=st.integers(1, 4), as_param=st.booleans(), seed=st.integers(0, 2**16))
def test_profiling_the_built_in_model_gives_the_values_of_the_walk(layers, as_param, seed):
    torch.manual_seed(seed)
    model = admin.PostLNTransformer(tiny_config(n_layers=layers, omega_as_parameter=as_param)).eval()
    batch = torch.randint(11, (3, 6), generator=torch.Generator().manual_seed(seed))
    assert admin.profile_omega(model, batch) == walk_profile(copy.deepcopy(model), batch)


# ---------------------------------------------------------------------------------------------------
# 5. Reparameterization
# ---------------------------------------------------------------------------------------------------

configs = st.builds(
    lambda layers, heads, head_dim, d_ff, as_param: tiny_config(
        n_layers=layers, n_heads=heads, d_model=heads * head_dim, d_ff=d_ff, omega_as_parameter=as_param),
    layers=st.integers(1, 6), heads=st.integers(1, 3), head_dim=st.integers(1, 4),
    d_ff=st.integers(1, 24), as_param=st.booleans()).filter(
    # d_model = 1 is left out: a LayerNorm over one feature outputs its bias whatever comes in, so
    # every logit is the head's bias (zero here) and a relative error has no meaning; in bfloat16 the
    # rounded mean even makes x − mean a nonzero speck that eps then magnifies. Widths 2 and 3, the
    # near-degenerate ones, stay in.
    lambda cfg: cfg.d_model >= 2)


# How close must the folded model be? Folding is exact in exact arithmetic, so what is left is rounding,
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
# test_a_wrong_fold_fails_the_check shows the check catches it.
FOLD_NOISE_FACTOR = 8


@torch.no_grad()
def rounding_scale(model: torch.nn.Module, inputs: tuple, gen) -> float:
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


def fold_error(model, plain, inputs: tuple, gen) -> tuple[float, float]:
    """The folded model's relative logit error against the model in float64, and what rounding in
    the model's dtype allows (FOLD_NOISE_FACTOR times its rounding scale)."""
    with torch.no_grad():
        err = rel_err(plain(*inputs).double(), copy.deepcopy(model).double()(*inputs))
    return err, FOLD_NOISE_FACTOR * rounding_scale(model, inputs, gen)


def check_reparameterization(model, idx, gen):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = admin.reparameterize(model)
    assert plain.config.residual == "vanilla"
    assert not any("omega" in k for k in plain.state_dict()), "ω left in the folded state_dict"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "input changed"
    err, allowed = fold_error(model, plain, (idx,), gen)
    assert err <= allowed, f"reparameterized logits differ: relative error {err:.2e} > {allowed:.2e}"
    return plain


@given(cfg=configs, batch=st.integers(1, 3), length=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_reparameterized_model_has_the_same_logits_float64(cfg, batch, length, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = admin.PostLNTransformer(cfg).double()
    randomize_omegas(model, gen)
    check_reparameterization(model, torch.randint(11, (batch, length), generator=gen), gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(cfg=configs, seed=st.integers(0, 2**16))
def test_reparameterized_model_has_the_same_logits_in_low_precision(dtype, cfg, seed):
    """float32, and a model whose parameters are bfloat16: the fold is as exact as the format allows
    (the same rounding-scale bound, with bf16's unit roundoff 2⁻⁸ in place of float32's 2⁻²⁴)."""
    # bfloat16 keeps 8 bits: a LayerNorm over 2 or 3 features then has no stable output at all where
    # two features lie within one bf16 rounding of each other (it switches between ±1 there), so two
    # bf16 computations of the same function, folded or not, can differ by O(1). Widths >= 4 in bf16.
    assume(dtype != torch.bfloat16 or cfg.d_model >= 4)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = admin.PostLNTransformer(cfg).to(dtype)
    randomize_omegas(model, gen)
    check_reparameterization(model, torch.randint(11, (2, 7), generator=gen), gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_wrong_fold_fails_the_check(dtype):
    """The rounding-scale bound is loose enough for every machine, and still far too tight for a
    fold that forgets one ω entry of one sub-layer."""
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    model = admin.PostLNTransformer(tiny_config(n_layers=3, d_model=16, d_ff=32)).to(dtype)
    randomize_omegas(model, gen)
    plain = admin.reparameterize(model)
    with torch.no_grad():
        plain.sublayers()[3].input_weight[:, 5] *= model.sublayers()[3].shortcut.omega[5]  # undo one
    err, allowed = fold_error(model, plain, (torch.randint(11, (2, 7), generator=gen),), gen)
    assert err > 1e-3 and err > 100 * allowed, (err, allowed)


def test_reparameterization_after_real_training_steps():
    torch.manual_seed(3)
    model = admin.PostLNTransformer(tiny_config(n_layers=3, d_model=16, d_ff=32)).double()
    admin.profile_omega(model, torch.randint(11, (8, 10)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        idx = torch.randint(11, (8, 10))
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    omegas = torch.stack([s.shortcut.omega for s in model.sublayers()])
    assert omegas.std(dim=1).min() > 0, "training did not make ω a non-constant vector"
    check_reparameterization(model, torch.randint(11, (4, 10)), torch.Generator().manual_seed(3))


def test_reparameterized_blocks_are_pytorch_transformer_encoder_layers():
    torch.manual_seed(4)
    cfg = tiny_config(n_layers=3, d_model=12, n_heads=3, d_ff=20)
    model = admin.PostLNTransformer(cfg).double()
    randomize_omegas(model, torch.Generator().manual_seed(4))
    plain = admin.reparameterize(model)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64)
    for train in (True, False):
        plain.train(train)
        for i, block in enumerate(plain.blocks):
            layer = torch.nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout,
                                                     batch_first=True, norm_first=False).double()
            layer.load_state_dict(block.state_dict(), strict=True)
            layer.train(train)
            err = rel_err(block(x), layer(x, src_mask=mask, is_causal=True))
            assert err <= 1e-12, f"block {i} (train={train}) != nn.TransformerEncoderLayer: {err:.1e}"


def test_reparameterize_draws_no_random_numbers():
    """Folding after training must not shift the random stream of whatever the caller does next."""
    model = admin.PostLNTransformer(tiny_config())
    state = torch.get_rng_state()
    admin.reparameterize(model)
    assert torch.equal(state, torch.get_rng_state())


def test_reparameterize_rejects_a_zero_omega():
    model = admin.PostLNTransformer(tiny_config())
    with torch.no_grad():
        model.sublayers()[2].shortcut.omega[3] = 0.0
    with pytest.raises(ValueError, match="sub-layer 3"):
        admin.reparameterize(model)


# ---------------------------------------------------------------------------------------------------
# 6. Checkpoints
# ---------------------------------------------------------------------------------------------------

def test_checkpoints_load_back_and_the_folded_one_loads_into_a_vanilla_model(tmp_path):
    torch.manual_seed(6)
    cfg = tiny_config(n_layers=3)
    model = admin.PostLNTransformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # a trained model: ω is a vector of different entries
        idx = torch.randint(11, (4, 8))
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    idx = torch.randint(11, (2, 8))
    torch.save(model.state_dict(), tmp_path / "admin.pt")
    restored = admin.PostLNTransformer(cfg)
    restored.load_state_dict(torch.load(tmp_path / "admin.pt", weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(restored(idx), model(idx)), "the reloaded Admin model computes otherwise"
    torch.save(admin.reparameterize(model).state_dict(), tmp_path / "plain.pt")
    vanilla = admin.PostLNTransformer(dataclasses.replace(cfg, residual="vanilla"))
    vanilla.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True), strict=True)
    err, allowed = fold_error(model, vanilla, (idx,), torch.Generator().manual_seed(6))
    assert err <= allowed, f"the folded checkpoint in a vanilla model: relative error {err:.1e}"
