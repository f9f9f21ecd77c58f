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

VOCAB = 13


def build(seed: int, heads=2, head_dim=4, d_ff=16, n_encoder=2, n_decoder=2) -> s2s.Seq2Seq:
    torch.manual_seed(seed)
    return s2s.Seq2Seq(VOCAB, heads * head_dim, heads, d_ff, n_encoder, n_decoder, max_len=16)


def batch(seed: int, B=3, S=7, T=5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(VOCAB, (B, S), generator=gen), torch.randint(VOCAB, (B, T), generator=gen)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()  # max |a − b| / max |b|


def train(model: s2s.Seq2Seq, src: torch.Tensor, tgt: torch.Tensor, steps: int = 3) -> None:
    """Adam steps (lr 1e-2) on predicting each next target token: ω becomes a vector of different entries."""
    optimizer = torch.optim.Adam(model.train().parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten()).backward()
        optimizer.step()


def shortcuts_called(model: s2s.Seq2Seq, src: torch.Tensor, tgt: torch.Tensor) -> list[tuple]:
    """(residual, x, f_x) at each OmegaResidual, in the order one eval pass without gradients calls them."""
    calls, residuals = [], [m for m in model.modules() if isinstance(m, admin.OmegaResidual)]
    handles = [m.register_forward_hook(lambda m, args, out: calls.append((m, *args))) for m in residuals]
    with torch.no_grad():
        model.eval()(src, tgt)
    for handle in handles:
        handle.remove()
    return calls


def message(call) -> str:
    """The message of the ValueError that call() raises; the tests check what it names, not its words."""
    with pytest.raises(ValueError) as error:
        call()
    return str(error.value)


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
    seen = shortcuts_called(model, src, tgt)
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
def test_profile_train_fold_gives_admin_folds_checked_weights(dtype, shape, seed):
    """The example's fold, by hand, gives the weights of admin.fold, whose float64 check vouches that
    they compute the trained model's logits (it raises otherwise). Each folded entry is one product
    (ω ⊙ γ, ω ⊙ b, ω ⊙ embedding) or one quotient (W / ω) of the same numbers: the example rounds it
    once in the model's dtype, admin.fold once in float64 and once more to the dtype, so each lies
    within a unit roundoff u (plus u²) of the exact value, and the two within 2u of each other,
    entry by entry; 3u is the bound. (In float32 too they come out equal: float64 has more than
    2 × 24 + 2 bits, so its rounding to float32 lands where float32's own does; the bound does not
    lean on that.) A
    wrong fold (K and V of cross-attention, a missed embedding) is off by a factor ω."""
    model = build(seed, **shape).to(dtype)
    src, tgt = batch(seed)
    admin.profile_omega(model, src, tgt, stacks=[model.encoder, model.decoder])
    train(model, src, tgt)  # three Adam steps: ω is now a vector of different entries
    by_admin = copy.deepcopy(model)
    embeddings = {by_admin.encoder: [by_admin.src_tok.weight, by_admin.src_pos.weight],
                  by_admin.decoder: [by_admin.tgt_tok.weight, by_admin.tgt_pos.weight]}
    want = admin.fold(by_admin, src, tgt, embeddings=embeddings)
    assert want.change <= admin.FOLD_BOUND
    s2s.fold(model)
    assert all(torch.all(m.omega == 1) for m in model.modules() if isinstance(m, admin.OmegaResidual))
    got, u = model.state_dict(), {torch.float64: 2.0**-53, torch.float32: 2.0**-24}[dtype]
    for name, value in want.state_dict.items():
        assert torch.allclose(got[name], value, rtol=3 * u, atol=0), f"{name}: {rel_err(got[name], value):.1e}"


def test_folded_layers_are_pytorch_transformer_layers():
    model, (src, tgt) = build(2, heads=2, head_dim=6, d_ff=20).double(), batch(2)
    train(model, src, tgt)
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
    train(model, src, tgt)
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
    said = message(lambda: admin.profile_omega(torch.nn.Linear(8, 8), x))
    assert "Linear" in said and "OmegaResidual" in said, said
    shared = Shared().train()
    said = message(lambda: admin.profile_omega(shared, x))
    assert "'layer.res1'" in said and "twice" in said, said
    assert not any(m._forward_pre_hooks for m in shared.modules()), "hooks left behind after an error"
    assert shared.training, "train mode not restored after an error"
    said = message(lambda: admin.profile_omega(shared, x, twice=False))  # keyword arguments reach the model
    assert "'unused.res1'" in said and "never called" in said, said
    model, (src, tgt) = build(4), batch(4)
    said = message(lambda: admin.profile_omega(model, src, tgt, stacks=[model.encoder]))
    assert "'decoder.0.res1'" in said and "stack" in said, said
    said = message(lambda: admin.profile_omega(model, src, tgt, stacks=[model, model.decoder]))
    assert "0 and 1" in said, said


def test_profiling_refuses_when_nothing_varies():
    """Width 1: LayerNorm's output is its bias alone, a constant, so the ratio becomes 0 and ω = 0
    would follow; profile_omega says so, naming the value and the residual, instead of setting a ω
    that cannot be folded."""
    model, (src, tgt) = build(5, heads=1, head_dim=1), batch(5)
    said = message(lambda: admin.profile_omega(model, src, tgt, stacks=[model.encoder, model.decoder]))
    assert "0.0" in said and "number 3" in said, said
