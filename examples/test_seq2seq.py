"""Admin in a model that is not ours: profile_omega and fold_omega on the encoder–decoder of
examples/seq2seq.py (Post-LN layers built from torch parts and admin.OmegaResidual)."""

import copy
import doctest
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import admin
from examples import seq2seq as s2s
from lab.testing_tools import fold_error, rel_err, shortcut_inputs, train_steps

VOCAB = 13


def build(seed: int, heads=2, head_dim=4, d_ff=16, n_encoder=2, n_decoder=2) -> s2s.Seq2Seq:
    torch.manual_seed(seed)
    return s2s.Seq2Seq(VOCAB, heads * head_dim, heads, d_ff, n_encoder, n_decoder, max_len=16)


def batch(seed: int, B=3, S=7, T=5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(VOCAB, (B, S), generator=gen), torch.randint(VOCAB, (B, T), generator=gen)


# d_model >= 2: a LayerNorm over one feature outputs its bias whatever comes in, so from the first
# sub-layer on nothing varies, profiling has no variance to measure and refuses (tested below).
shapes = st.fixed_dictionaries({"heads": st.integers(1, 3), "head_dim": st.integers(2, 4),
                                "d_ff": st.integers(1, 16), "n_encoder": st.integers(1, 3),
                                "n_decoder": st.integers(1, 3)})


def test_module_docstring_example_runs():
    result = doctest.testmod(s2s, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 13 and result.failed == 0, result


def test_closed_form_omega_per_stack():
    model = build(0, n_encoder=4, n_decoder=3)
    for layer in model.encoder:  # 2 sub-layers per encoder layer: n = 2 × 4
        assert all(torch.all(r.omega == admin.calculate_init(8)) for r, _, _ in layer.fold_pieces())
    for layer in model.decoder:  # 3 per decoder layer: n = 3 × 3
        assert all(torch.all(r.omega == admin.calculate_init(9)) for r, _, _ in layer.fold_pieces())


@given(shape=shapes, seed=st.integers(0, 2**16))
def test_profiled_omega_follows_the_recurrence_in_each_stack(shape, seed):
    model = build(seed, **shape).double()
    src, tgt = batch(seed)
    omegas = admin.profile_omega(model, src, tgt, stacks=[model.encoder, model.decoder])
    seen = shortcut_inputs(model, src, tgt)
    assert len(omegas) == len(seen) == 2 * shape["n_encoder"] + 3 * shape["n_decoder"]
    n_enc = 2 * shape["n_encoder"]
    for stack in (seen[:n_enc], seen[n_enc:]):  # call order: the whole encoder, then the decoder
        assert torch.all(stack[0][0].omega == 1.0), "each stack's ratio starts at 1"
        for (res, x, f_x), (nxt, _, _) in zip(stack, stack[1:]):
            omega = res.omega[0].item()
            want = math.sqrt((omega * x).var(correction=0).item() + f_x.var(correction=0).item())
            assert math.isclose(nxt.omega[0].item(), want, rel_tol=1e-12), "ω recurrence"
    assert omegas == [res.omega[0].item() for res, _, _ in seen]
    assert all(torch.all(res.omega == res.omega[0]) for res, _, _ in seen), "ω is filled, not varied"


def test_one_stack_by_default_counts_the_decoder_on_from_the_encoder():
    model, (src, tgt) = build(1).double(), batch(1)
    two = admin.profile_omega(model, src, tgt, stacks=[model.encoder, model.decoder])
    one = admin.profile_omega(model, src, tgt)
    assert one[:4] == two[:4] and two[4] == 1.0 and one[4] > 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_profile_train_fold_gives_the_same_logits(dtype, shape, seed):
    model = build(seed, **shape).to(dtype)
    src, tgt = batch(seed)
    admin.profile_omega(model, src, tgt, stacks=[model.encoder, model.decoder])
    train_steps(model, [(src, tgt)] * 3)  # three Adam steps: ω is now a vector of different entries
    trained = copy.deepcopy(model).eval()
    s2s.fold(model)
    assert all(torch.all(m.omega == 1) for m in model.modules() if isinstance(m, admin.OmegaResidual))
    err, allowed = fold_error(trained, model.eval(), (src, tgt), torch.Generator().manual_seed(seed))
    assert err <= allowed, f"folded encoder–decoder: relative logit error {err:.2e} > {allowed:.2e}"


def test_folded_layers_are_pytorch_transformer_layers():
    model, (src, tgt) = build(2, heads=2, head_dim=6, d_ff=20).double(), batch(2)
    train_steps(model, [(src, tgt)] * 3)
    s2s.fold(model)
    model.eval()
    C, H, F = 12, 2, 20
    x, memory = torch.randn(3, 7, C, dtype=torch.float64), torch.randn(3, 9, C, dtype=torch.float64)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64)
    no_omega = lambda layer: {k: v for k, v in layer.state_dict().items() if not k.endswith(".omega")}  # noqa: E731
    with torch.no_grad():
        for ours in model.encoder:
            theirs = torch.nn.TransformerEncoderLayer(C, H, F, 0.0, batch_first=True, norm_first=False)
            theirs.double().eval().load_state_dict(no_omega(ours), strict=True)
            assert rel_err(ours(x), theirs(x)) <= 1e-12, "encoder layer != nn.TransformerEncoderLayer"
        for ours in model.decoder:
            theirs = torch.nn.TransformerDecoderLayer(C, H, F, 0.0, batch_first=True, norm_first=False)
            theirs.double().eval().load_state_dict(no_omega(ours), strict=True)
            want = theirs(x, memory, tgt_mask=mask, tgt_is_causal=True)
            assert rel_err(ours(x, memory), want) <= 1e-12, "decoder layer != nn.TransformerDecoderLayer"


def test_folding_cross_attention_keys_and_values_too_is_wrong():
    """Only W_Q of cross-attention reads the decoder stream: folding W_K and W_V as well changes
    the function (they read the encoder's output, which carries no ω of this sub-layer)."""
    model, (src, tgt) = build(3).double(), batch(3)
    train_steps(model, [(src, tgt)] * 3)
    trained = copy.deepcopy(model).eval()
    layer = model.decoder[0]
    C = layer.norm1.normalized_shape[0]
    producers = [layer.norm1.weight, layer.norm1.bias]
    admin.fold_omega(layer.res2.omega, producers, [layer.multihead_attn.in_proj_weight])  # all of Q, K, V
    with torch.no_grad():
        layer.res2.omega.fill_(1.0)
        err = rel_err(model.eval()(src, tgt), trained(src, tgt))
    assert err > 1e-3, f"folding K and V of cross-attention should break the model, error {err:.1e}"
    assert layer.multihead_attn.in_proj_weight[C:].shape == (2 * C, C)


@given(C=st.integers(1, 6), rows=st.integers(1, 5), scalar=st.booleans(), seed=st.integers(0, 2**16))
def test_fold_then_unfold_is_the_identity(C, rows, scalar, seed):
    gen = torch.Generator().manual_seed(seed)
    omega = 0.2 + 4.8 * torch.rand(1 if scalar else C, generator=gen, dtype=torch.float64)
    gamma, beta = (torch.randn(C, generator=gen, dtype=torch.float64) for _ in range(2))
    W = torch.randn(rows, C, generator=gen, dtype=torch.float64)
    before = [t.clone() for t in (gamma, beta, W)]
    admin.fold_omega(omega, [gamma, beta], [W])
    assert torch.allclose(gamma, before[0] * omega) and torch.allclose(W, before[2] / omega)
    admin.fold_omega(1 / omega, [gamma, beta], [W])
    for t, b in zip((gamma, beta, W), before):
        assert torch.allclose(t, b, rtol=1e-14, atol=0), "fold then unfold changed a tensor"


def test_fold_omega_rejects_a_zero_entry_and_wrong_shapes():
    gamma, W = torch.ones(4), torch.ones(3, 4)
    with pytest.raises(ValueError, match="entry 2 is zero"):
        admin.fold_omega(torch.tensor([1.0, 2.0, 0.0, 1.0]), [gamma], [W])
    with pytest.raises(ValueError, match=r"producer of shape \(5,\) does not match ω of 4 features"):
        admin.fold_omega(torch.full((4,), 2.0), [torch.ones(5)], [W])
    with pytest.raises(ValueError, match=r"reader of shape \(4, 3\) does not match ω of 4 features"):
        admin.fold_omega(torch.full((4,), 2.0), [gamma], [torch.ones(4, 3)])
    assert torch.equal(gamma, torch.ones(4)) and torch.equal(W, torch.ones(3, 4)), "changed before refusing"


class Shared(torch.nn.Module):
    """One encoder layer used twice (weight sharing), and one never used."""

    def __init__(self):
        super().__init__()
        self.layer = s2s.EncoderLayer(8, 2, 16, 2.0)
        self.unused = s2s.EncoderLayer(8, 2, 16, 2.0)

    def forward(self, x, twice=True):
        return self.layer(self.layer(x)) if twice else self.layer(x)


def test_profiling_errors_name_what_is_wrong():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="Linear has no OmegaResidual to profile"):
        admin.profile_omega(torch.nn.Linear(8, 8), x)
    shared = Shared().train()
    with pytest.raises(ValueError, match="called twice in one forward pass"):
        admin.profile_omega(shared, x)
    assert not any(m._forward_pre_hooks for m in shared.modules()), "hooks left behind after an error"
    assert shared.training, "train mode not restored after an error"
    with pytest.raises(ValueError, match="'unused.res1' was never called"):
        admin.profile_omega(shared, x, twice=False)  # keyword arguments reach the model
    model, (src, tgt) = build(4), batch(4)
    with pytest.raises(ValueError, match="'decoder.0.res1' is outside every given stack"):
        admin.profile_omega(model, src, tgt, stacks=[model.encoder])
    with pytest.raises(ValueError, match="is in stacks 0 and 1"):
        admin.profile_omega(model, src, tgt, stacks=[model, model.decoder])


def test_profiling_refuses_when_nothing_varies():
    """Width 1: LayerNorm's output is its bias alone, a constant, so the ratio becomes 0 and ω = 0
    would follow; profile_omega says so instead of setting a ω that cannot be folded."""
    model, (src, tgt) = build(5, heads=1, head_dim=1), batch(5)
    with pytest.raises(ValueError, match=r"ω would be 0.0 at residual number 3 of the pass"):
        admin.profile_omega(model, src, tgt, stacks=[model.encoder, model.decoder])
