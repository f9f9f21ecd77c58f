"""Claims of admin.py that no test stated until mutation testing (.ci/mutation) showed them unguarded:
each test names the claim, and the mutant it kills is in its docstring."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

import admin
from lab.testing_tools import tiny_config


def test_attention_dropout_drops_in_training_and_not_in_eval():
    """Kills: dropout_p always 0. With p = 0.5 two training passes differ; in eval mode the pass
    equals the same weights with p = 0."""
    torch.manual_seed(0)
    dropping = admin.CausalSelfAttention(8, 2, dropout=0.5)
    torch.nn.init.xavier_uniform_(dropping.in_proj_weight)  # torch.empty until PostLNTransformer inits it
    exact = admin.CausalSelfAttention(8, 2, dropout=0.0)
    exact.load_state_dict(dropping.state_dict())
    x = torch.randn(2, 5, 8)
    assert not torch.equal(dropping.train()(x), dropping(x)), "attention dropout does not drop"
    assert torch.equal(dropping.eval()(x), exact.eval()(x)), "attention dropout drops in eval mode"


@pytest.mark.parametrize("field", ["vocab_size", "max_len", "d_model", "n_heads", "d_ff", "n_layers"])
@pytest.mark.parametrize("value", [8.0, 2.5, "8", True, None])
def test_config_sizes_must_be_integers(field, value):
    """Kills: the isinstance(value, int) check dropped or inverted. A size such as 8.0 would build
    layers of shape 8.0 deep inside torch; the config refuses it, naming the field and the value."""
    with pytest.raises(ValueError, match=f"{field} must be an integer >= 1, got {value!r}"):
        tiny_config(**{field: value})


@pytest.mark.parametrize("scale, want", [("O(1)", 24**0.5), ("O(n)", 1.0), ("O(logn)", 2.6012855825524324)])
def test_as_buffer_and_as_parameter_use_the_scale_they_are_given(scale, want):
    """Kills: as_buffer (or as_parameter) calling calculate_init without output_change_scale."""
    net = torch.nn.Module()
    buffer = admin.as_buffer(net, "omega_attn", 24, output_change_scale=scale)
    parameter = admin.as_parameter(net, "omega_ffn", 24, embed_dim=3, output_change_scale=scale)
    assert buffer.shape == (1,) and buffer.item() == pytest.approx(want, rel=1e-7), scale
    assert parameter.tolist() == pytest.approx([want] * 3, rel=1e-7), scale


def test_pre_ln_baseline_ends_with_its_final_layernorm():
    """Kills: the Pre-LN model built without its final LayerNorm (Post-LN ends on one already).
    Pre-LN's stream x_L is a sum that grows with depth: the head reads LN(x_L)."""
    torch.manual_seed(0)
    model = admin.PostLNTransformer(tiny_config(residual="preln")).eval()
    idx = torch.randint(11, (2, 6))
    with torch.no_grad():
        x = model.embed(idx)
        for block in model.blocks:
            x = block(x)
        norm = model.final_norm
        assert isinstance(norm, torch.nn.LayerNorm), "Pre-LN has no final LayerNorm"
        want = model.head(F.layer_norm(x, (8,), norm.weight, norm.bias, norm.eps))
        assert torch.allclose(model(idx), want, rtol=0, atol=1e-6)
    for residual in ("admin", "vanilla", "deepnorm"):
        post = admin.PostLNTransformer(tiny_config(residual=residual))
        assert isinstance(post.final_norm, torch.nn.Identity), f"{residual}: a second LayerNorm at the end"


@pytest.mark.parametrize("scale", ["O(1)", "O(n)", "O(logn)"])
def test_every_admin_block_takes_omega_from_the_configs_output_change_scale(scale):
    """Kills: Block ignoring TransformerConfig.output_change_scale (every Admin model O(log n))."""
    model = admin.PostLNTransformer(tiny_config(n_layers=3, output_change_scale=scale))
    want = admin.calculate_init(6, scale)
    for i, s in enumerate(model.sublayers()):
        assert s.shortcut.omega.tolist() == pytest.approx([want] * 8, rel=1e-7), (scale, i)


def test_q_k_and_v_each_start_xavier_uniform_on_their_own():
    """Kills: in_proj_weight Xavier-initialized as 4 chunks (or as one (3C, C) matrix, or left at
    torch's default). Each of W_Q, W_K, W_V is (C, C), so Xavier's bound is b = sqrt(6 / (C + C)) and
    every |w| <= b. Of C² = 4096 draws uniform on [-b, b], all stay under 0.99 b with probability
    0.99^4096 < 1e-17, so the largest lies in (0.99 b, b]. 4 chunks of (3C/4, C) give a bound 6.9%
    higher (some |w| > b), one (3C, C) matrix a bound 29% lower, torch's default 42% lower."""
    C = 64
    torch.manual_seed(0)
    model = admin.PostLNTransformer(admin.TransformerConfig(vocab_size=11, d_model=C, n_layers=2))
    bound = math.sqrt(6 / (C + C))
    for block in model.blocks:
        for name, w in zip("QKV", block.self_attn.in_proj_weight.detach().chunk(3)):
            largest = w.abs().max().item()
            assert 0.99 * bound < largest <= bound, f"W_{name}: max |w| {largest:.4f}, Xavier bound {bound:.4f}"


def test_embed_takes_a_sequence_of_exactly_max_len_and_refuses_a_longer_one():
    """Kills: `T >= max_len` for `T > max_len` in embed's check."""
    model = admin.PostLNTransformer(tiny_config(max_len=16))
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 11)
    with pytest.raises(ValueError, match="sequence length 17 exceeds max_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("call, want", [
    (lambda: admin.calculate_init(0), "num_res_layers must be a whole number >= 1 (residual sub-layers, e.g. "
                                      "2 * n_layers), got num_res_layers=0"),
    (lambda: admin.omega_vector(2.0, None), "embed_dim must be a whole number >= 1 (the feature size; a "
                                            "trainable ω vector needs it), got embed_dim=None")])
def test_a_bad_count_is_refused_saying_what_it_counts(call, want):
    """Kills: calculate_init's or omega_vector's refusal without (or with another) meaning of the count."""
    with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
        call()


def test_x_0_is_the_token_embedding_plus_the_position_embedding():
    """Kills: x_0 = tok − pos (any sign or mix of the two tables)."""
    torch.manual_seed(0)
    model = admin.PostLNTransformer(tiny_config())
    idx = torch.randint(11, (2, 5))
    want = model.tok_emb.weight[idx] + model.pos_emb.weight[:5]
    assert torch.equal(model.embed(idx), want)


@pytest.mark.parametrize("dropout, ok", [(0.0, True), (0.999, True), (1.0, False), (-0.1, False)])
def test_dropout_is_a_probability_below_one(dropout, ok):
    """Kills: dropout = 1 accepted (every activation dropped: the model trains on zeros)."""
    if ok:
        assert tiny_config(dropout=dropout).dropout == dropout
    else:
        with pytest.raises(ValueError, match=re.escape(f"dropout must be in [0, 1), got {dropout!r}")):
            tiny_config(dropout=dropout)


def test_an_unknown_scale_is_refused_when_the_config_is_made():
    """TransformerConfig checks its output_change_scale at once, not when the first block is built."""
    with pytest.raises(ValueError, match=r"output_change_scale must be one of .*got 'O\(log n\)'"):
        tiny_config(output_change_scale="O(log n)")
