"""admin.attach_omega (ω on the shortcuts a Post-LN layer adds inline, its forward untouched) and
Folded.load_into (the folded weights in the user's stock model, checked on fold's example), on tiny
torch-only encoder–decoders written the way Hugging Face writes BART and FSMT: `norm(residual + hidden)`.
With them: the silent wrong results a fold could leave (a stock model that ties its tables again at
load, a position table the model rebuilds), the float64 copy that fails, and the hints that must hold."""

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import admin
from lab.testing_tools import rel_err

V, C, H, D_FF, MAX_LEN = 13, 16, 2, 32, 12  # vocabulary, d_model, heads, d_ff, position table rows
ENC, DEC = ["self_attn_layer_norm", "final_layer_norm"], ["self_attn_layer_norm", "encoder_attn_layer_norm",
                                                         "final_layer_norm"]


class EncoderLayer(nn.Module):
    """BART's encoder layer, reduced: Post-LN with the residual added inline, norm(residual + branch)."""

    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(C, H, batch_first=True)
        self.self_attn_layer_norm = nn.LayerNorm(C)
        self.fc1, self.fc2 = nn.Linear(C, D_FF), nn.Linear(D_FF, C)
        self.final_layer_norm = nn.LayerNorm(C)

    def attention(self, hidden, padding):
        return self.self_attn(hidden, hidden, hidden, key_padding_mask=padding, need_weights=False)[0]

    def feed_forward(self, hidden):
        return self.fc2(F.relu(self.fc1(hidden)))

    def forward(self, hidden, padding):
        residual = hidden
        hidden = self.self_attn_layer_norm(residual + self.attention(hidden, padding))
        residual = hidden
        return self.final_layer_norm(residual + self.feed_forward(hidden))


class DecoderLayer(EncoderLayer):
    """BART's decoder layer, reduced: causal self-attention, cross-attention, feed-forward, each
    norm(residual + branch); the cross-attention sub-layer only when there is an encoder output."""

    def __init__(self):
        super().__init__()
        self.encoder_attn = nn.MultiheadAttention(C, H, batch_first=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(C)

    def attention(self, hidden, padding):
        causal = torch.ones(hidden.size(1), hidden.size(1), dtype=torch.bool).triu(1)
        return self.self_attn(hidden, hidden, hidden, attn_mask=causal, need_weights=False)[0]

    def cross_attention(self, hidden, memory, padding):
        return self.encoder_attn(hidden, memory, memory, key_padding_mask=padding, need_weights=False)[0]

    def forward(self, hidden, memory, padding):
        residual = hidden
        hidden = self.self_attn_layer_norm(residual + self.attention(hidden, padding))
        if memory is not None:
            residual = hidden
            hidden = self.encoder_attn_layer_norm(residual + self.cross_attention(hidden, memory, padding))
        residual = hidden
        return self.final_layer_norm(residual + self.feed_forward(hidden))


def sinusoids(rows: int) -> torch.Tensor:
    angle = torch.arange(rows)[:, None] / 10000 ** (torch.arange(0, C, 2) / C)  # (rows, C/2)
    return torch.cat([angle.sin(), angle.cos()], dim=1)  # (rows, C)


class RegeneratedPositions(nn.Embedding):
    """FSMT's position table: sinusoids in a Parameter, rebuilt (from the formula) for a longer input."""

    def __init__(self):
        super().__init__(MAX_LEN, C)
        self.weight = nn.Parameter(sinusoids(MAX_LEN), requires_grad=False)

    def forward(self, positions):
        if positions.max() >= self.num_embeddings:
            self.num_embeddings = int(positions.max()) + 1
            self.weight = nn.Parameter(sinusoids(self.num_embeddings).to(self.weight), requires_grad=False)
        return super().forward(positions)


class Seq2Seq(nn.Module):
    """Embeddings per stack (x_0 = token + position: no LayerNorm, as FSMT and Marian), N encoder and M
    decoder layers, a head. tied: one table for source, target and head, as tie_word_embeddings=True
    builds it; a strict load into such a model writes every tied name into the one tensor."""

    def __init__(self, N=2, M=2, tied=False, positions=lambda: nn.Embedding(MAX_LEN, C)):
        super().__init__()
        self.src_tok, self.src_pos = nn.Embedding(V, C), positions()
        self.tgt_tok, self.tgt_pos = nn.Embedding(V, C), positions()
        self.encoder = nn.ModuleList(EncoderLayer() for _ in range(N))
        self.decoder = nn.ModuleList(DecoderLayer() for _ in range(M))
        self.head = nn.Linear(C, V, bias=False)
        if tied:
            self.tgt_tok.weight = self.head.weight = self.src_tok.weight

    def embeddings(self) -> dict:
        return {self.encoder: [self.src_tok.weight, self.src_pos.weight],
                self.decoder: [self.tgt_tok.weight, self.tgt_pos.weight]}

    def forward(self, src, tgt, padding):
        x = self.src_tok(src) + self.src_pos(torch.arange(src.size(1)))
        for layer in self.encoder:
            x = layer(x, padding)
        y = self.tgt_tok(tgt) + self.tgt_pos(torch.arange(tgt.size(1)))
        for layer in self.decoder:
            y = layer(y, x, padding)
        return self.head(y)  # (B, T, V)


def with_omega(model: Seq2Seq, **kw) -> tuple[list, list]:
    """The recipe: ω on both stacks, one call each."""
    return admin.attach_omega(model.encoder, ENC, **kw), admin.attach_omega(model.decoder, DEC, **kw)


def batch(seed=0, src_len=9, tgt_len=7):
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(V, (3, src_len), generator=g), torch.randint(V, (3, tgt_len), generator=g)
    padding = torch.zeros(3, src_len, dtype=torch.bool)
    padding[1, 6:] = True  # the second source sentence is 6 tokens long
    return src, tgt, padding


def trained(model: nn.Module, steps=4, seed=0) -> nn.Module:
    """A few Adam steps, so every trainable ω is a vector of different entries."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    src, tgt, padding = batch(seed)
    for _ in range(steps):
        loss = F.cross_entropy(model(src, tgt, padding).flatten(0, 1), tgt.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def admin_seq2seq(seed=0, dtype=torch.float64, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    model = Seq2Seq(**{k: v for k, v in kw.items() if k in ("tied", "positions")}).to(dtype)
    with_omega(model, **{k: v for k, v in kw.items() if k == "fixed_first"})
    return trained(model, seed=seed)


def outputs(model, *inputs):
    with torch.no_grad():
        return model.eval()(*inputs)


# ---------------------------------------------------------------------------------------------------
# attach_omega: the equation, the count, what sees the residuals, the copies
# ---------------------------------------------------------------------------------------------------


def test_hooked_layer_computes_the_admin_equation():
    """The hooked BART-style layer is LN(ω_1 ⊙ x + Attn(x)) then LN(ω_2 ⊙ x_1 + FFN(x_1)), written out
    here by hand, for random ω vectors (float64, relative 1e-12: a few roundings apart)."""
    torch.manual_seed(0)
    layer = EncoderLayer().double().eval()
    res1, res2 = admin.attach_omega([layer], ENC)
    with torch.no_grad():
        res1.omega.uniform_(0.5, 2.5)
        res2.omega.uniform_(0.5, 2.5)
    x, padding = torch.randn(2, 5, C, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.bool)
    with torch.no_grad():
        x1 = F.layer_norm(res1.omega * x + layer.attention(x, padding), (C,),
                          layer.self_attn_layer_norm.weight, layer.self_attn_layer_norm.bias)
        want = F.layer_norm(res2.omega * x1 + layer.feed_forward(x1), (C,),
                            layer.final_layer_norm.weight, layer.final_layer_norm.bias)
        got = layer(x, padding)
    assert rel_err(got, want) < 1e-12, f"hooked layer vs the equation: {rel_err(got, want):.1e}"


def test_omega_one_is_the_stock_model():
    """With every ω = 1 the hooked model is the model without hooks: ω ⊙ x + (s − x) = s up to the
    rounding of s − x (float64, relative 1e-12)."""
    model = admin_seq2seq()
    stock = Seq2Seq().double()
    stock.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(".omega")})
    with torch.no_grad():
        for omega in admin.omega_parameters(model):
            omega.fill_(1.0)
    inputs = batch(1)
    gap = rel_err(outputs(model, *inputs), outputs(stock, *inputs))
    assert gap < 1e-12, f"ω = 1 vs no hooks: {gap:.1e}"


def test_omega_counts_the_stack_and_takes_as_modules_options():
    """num_res_layers = layers × norms per stack: 2 × 2 = 4 in the encoder, 3 × 3 = 9 in the decoder."""
    model = Seq2Seq(N=2, M=3)
    encoder, decoder = with_omega(model)
    assert len(encoder) == 4 and len(decoder) == 9
    assert all(torch.all(r.omega == admin.calculate_init(4)) for r in encoder)
    assert all(torch.all(r.omega == admin.calculate_init(9)) for r in decoder)
    assert all(r.omega.shape == (C,) and isinstance(r.omega, nn.Parameter) for r in encoder + decoder)
    assert sorted(map(id, admin.omega_parameters(model))) == sorted(id(r.omega) for r in encoder + decoder)
    fixed = admin.attach_omega(Seq2Seq(N=3).encoder, ENC, as_parameter=False, output_change_scale="O(1)")
    assert all(torch.equal(r.omega, torch.tensor([math.sqrt(6)])) for r in fixed)  # O(1): ω = sqrt(n)
    assert all(not isinstance(r.omega, nn.Parameter) for r in fixed)


def test_profile_sees_the_same_omega_as_explicit_residuals():
    """profile_omega through the hooks gives the ω it gives a hand-written Admin layer with an
    OmegaResidual called as residual(x, f(x)) (the class-swap glue), same weights, float64."""

    class ExplicitLayer(EncoderLayer):
        def __init__(self):
            super().__init__()
            self.res1, self.res2 = admin.OmegaResidual(1.0), admin.OmegaResidual(1.0)

        def forward(self, hidden, padding):
            hidden = self.self_attn_layer_norm(self.res1(hidden, self.attention(hidden, padding)))
            return self.final_layer_norm(self.res2(hidden, self.feed_forward(hidden)))

    torch.manual_seed(0)
    hooked, explicit = nn.ModuleList(EncoderLayer() for _ in range(3)).double(), nn.ModuleList(
        ExplicitLayer() for _ in range(3)).double()
    explicit.load_state_dict(hooked.state_dict(), strict=False)
    admin.attach_omega(hooked, ENC)
    x, padding = torch.randn(4, 6, C, dtype=torch.float64), torch.zeros(4, 6, dtype=torch.bool)

    class Stack(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, h):
            for layer in self.layers:
                h = layer(h, padding)
            return h

    got, want = admin.profile_omega(Stack(hooked), x), admin.profile_omega(Stack(explicit), x)
    assert len(got) == 6 and got[0] == 1.0
    assert max(abs(a - b) / b for a, b in zip(got, want)) < 1e-12, f"{got} vs {want}"


def test_a_state_dict_saved_after_attach_loads_into_the_same_call():
    model = admin_seq2seq()
    keys = [k for k in model.state_dict() if k.endswith(".omega")]
    assert keys[:2] == ["encoder.0.self_attn_layer_norm.residual.omega",
                        "encoder.0.final_layer_norm.residual.omega"]
    again = Seq2Seq().double()
    with_omega(again)
    again.load_state_dict(model.state_dict(), strict=True)
    inputs = batch(2)
    assert torch.equal(outputs(again, *inputs), outputs(model, *inputs))


def test_a_deep_copy_uses_its_own_residuals():
    """fold checks on copy.deepcopy(model).double(): the copy's hooks must read the copy's ω."""
    model = admin_seq2seq()
    twin = copy.deepcopy(model)
    inputs = batch(1)
    before = outputs(model, *inputs)
    with torch.no_grad():
        twin.encoder[0].final_layer_norm.residual.omega.mul_(3.0)
    assert torch.equal(outputs(model, *inputs), before), "changing the copy's ω changed the original"
    assert rel_err(outputs(twin, *inputs), before) > 1e-3, "the copy's output ignores its own ω"


# ---------------------------------------------------------------------------------------------------
# attach_omega: what it refuses
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norms, bad", [(["self_attn_layer_norm", "fc1"], "'fc1'"),
                                        (["self_attn_layer_norm", "final_norm"], "'final_norm'")])
def test_refuses_a_name_that_is_no_norm(norms, bad):
    with pytest.raises(ValueError, match=f"{bad} is no LayerNorm or RMSNorm.*EncoderLayer.*"
                                         r"\['self_attn_layer_norm', 'final_layer_norm'\]"):
        admin.attach_omega([EncoderLayer()], norms)


@pytest.mark.parametrize("norms", ["final_layer_norm", [], ["final_layer_norm", "final_layer_norm"]])
def test_refuses_a_norms_list_that_is_not_one(norms):
    with pytest.raises(ValueError, match=f"once each, got {re.escape(repr(norms))}"):
        admin.attach_omega([EncoderLayer()], norms)


def test_refuses_a_second_attach():
    layers = [EncoderLayer()]
    admin.attach_omega(layers, ENC)
    with pytest.raises(ValueError, match=r"'self_attn_layer_norm' is no LayerNorm or RMSNorm without ω.*those it "
                                         r"has: \[\]"):
        admin.attach_omega(layers, ENC)


def test_refuses_norms_out_of_call_order():
    layer = EncoderLayer()
    admin.attach_omega([layer], ENC[::-1])
    with pytest.raises(ValueError, match="'self_attn_layer_norm' was called where 'final_layer_norm' was due"):
        layer(torch.randn(1, 3, C), None)


def test_refuses_a_norm_a_pass_skips():
    """BART's decoder layer skips its cross-attention norm without encoder states: refused at the
    next norm, and a skipped last norm when the layer's pass ends."""
    layer = DecoderLayer()
    admin.attach_omega([layer], DEC)
    with pytest.raises(ValueError, match="'final_layer_norm' was called where 'encoder_attn_layer_norm' was due"):
        layer(torch.randn(1, 3, C), None, None)
    class AttentionOnly(EncoderLayer):
        def forward(self, hidden, padding):
            return self.self_attn_layer_norm(hidden + self.attention(hidden, padding))

    short = AttentionOnly()
    admin.attach_omega([short], ENC)
    with pytest.raises(ValueError, match="did not call norm 'final_layer_norm'"):
        short(torch.randn(1, 3, C), None)


def test_refuses_a_pre_ln_layer():
    class PreLN(EncoderLayer):
        def forward(self, hidden, padding):  # x + f(LN(x)): the norm reads the layer's input
            hidden = hidden + self.attention(self.self_attn_layer_norm(hidden), padding)
            return hidden + self.feed_forward(self.final_layer_norm(hidden))

    layer = PreLN()
    admin.attach_omega([layer], ENC)
    with pytest.raises(ValueError, match=r"'self_attn_layer_norm' reads the layer's input x itself, not x \+ "
                                         r"f\(x\): that is Pre-LN"):
        layer(torch.randn(1, 3, C), None)


# ---------------------------------------------------------------------------------------------------
# fold and load_into: the round trip, and what a strict load alone would let through
# ---------------------------------------------------------------------------------------------------


def test_round_trip_into_the_stock_model_float32():
    """Trained with ω, folded with the tables named, loaded into the model without hooks: the stock
    model's float32 outputs are the Admin model's within load_into's bound, which is 10 × the Admin
    model's own float32 rounding on the example (measured against float64) and catches 1e-3."""
    model = admin_seq2seq(dtype=torch.float32)
    inputs = batch(0)
    want = outputs(model, *inputs)
    folded = admin.fold(model, *inputs, embeddings=model.embeddings())
    assert folded.change <= admin.FOLD_BOUND
    assert admin.FOLD_BOUND <= folded.bound < 1e-4, f"load bound {folded.bound:.1e}: not float32's scale"
    stock = folded.load_into(Seq2Seq())
    assert rel_err(outputs(stock, *inputs), want) <= folded.bound


def test_a_stock_model_that_ties_again_at_load_is_caught():
    """The silent case: untied as fold asks, folded, then loaded strictly into a stock model built
    tied (tie_word_embeddings=True): every tied name is written into one tensor, the last wins, and
    load_into raises. Built untied, the same state loads and checks."""
    model = admin_seq2seq(tied=True)
    inputs = batch(0)
    with pytest.raises(ValueError) as refusal:
        admin.fold(model, *inputs, embeddings=model.embeddings())
    message = str(refusal.value)
    assert "src_tok.weight, tgt_tok.weight, head.weight are one tensor" in message and "fixed_first" in message
    fixes = [line.strip() for line in message.splitlines() if line.startswith("    model.")]
    assert fixes == ["model.tgt_tok.weight = nn.Parameter(model.src_tok.weight.detach().clone())",
                     "model.head.weight = nn.Parameter(model.src_tok.weight.detach().clone())"]
    for line in fixes:  # one round: the lines given run, and then the fold goes through
        exec(line, {"model": model, "nn": nn})
    folded = admin.fold(model, *inputs, embeddings=model.embeddings())
    retied = Seq2Seq(tied=True).double()
    retied.load_state_dict(folded.state_dict, strict=True)  # what a strict load alone lets through
    assert rel_err(outputs(retied, *inputs), folded.reference[0]) > 1e-3
    with pytest.raises(ValueError, match=r"load_into: Seq2Seq with the folded weights moved fold's example by "
                                         r"\d.*allowed.*tied.*fixed_first=True"):
        folded.load_into(Seq2Seq(tied=True).double())
    folded.load_into(Seq2Seq(tied=False).double())


def test_fixed_first_needs_no_embeddings_and_loads_into_a_tied_model():
    """The answer for tied tables: each stack's first ω stays 1 (a buffer neither Adam nor the profile
    moves), nothing folds into the tables, and the stock model built tied loads and checks."""
    model = admin_seq2seq(tied=True, fixed_first=True)
    firsts = [model.encoder[0].self_attn_layer_norm.residual, model.decoder[0].self_attn_layer_norm.residual]
    assert all(r.omega.tolist() == [1.0] and not isinstance(r.omega, nn.Parameter) for r in firsts)
    omegas = admin.profile_omega(model, *batch(0), stacks=[model.encoder, model.decoder])
    assert omegas[0] == omegas[4] == 1.0 and all(r.omega.item() == 1.0 for r in firsts)
    plan = admin.fold_plan(model, *batch(0))
    assert all(rows.name.endswith(("norm.weight", "norm.bias")) for step in plan for rows in step.producers)
    admin.fold(model, *batch(0)).load_into(Seq2Seq(tied=True).double())


def test_a_regenerated_position_table_is_refused_and_fixed_first_keeps_it_right():
    """FSMT's way: the sinusoids live in a Parameter that the model rebuilds for a longer input,
    which would drop a folded ω_1. fold refuses to fold into a table an nn.Embedding subclass reads
    with its own forward; with fixed_first nothing folds there, and on an input longer than the table
    (rebuilt) the stock model still gives the Admin model's outputs."""
    model = admin_seq2seq(positions=RegeneratedPositions)
    with pytest.raises(ValueError, match="a RegeneratedPositions reads 'src_pos.weight' with a forward of its "
                                         "own.*fixed_first=True"):
        admin.fold(model, *batch(0), embeddings=model.embeddings())
    model = admin_seq2seq(positions=RegeneratedPositions, fixed_first=True)
    long = batch(3, src_len=MAX_LEN + 4, tgt_len=MAX_LEN + 2)
    want = outputs(copy.deepcopy(model), *long)  # the copy rebuilds its own table
    stock = admin.fold(model, *batch(0)).load_into(Seq2Seq(positions=RegeneratedPositions).double())
    assert rel_err(outputs(stock, *long), want) < 1e-12, "rebuilt table: the stock model moved"


# ---------------------------------------------------------------------------------------------------
# fold's messages: the float64 copy that fails, and hints that hold in the state the user is in
# ---------------------------------------------------------------------------------------------------


def test_a_model_that_fails_in_float64_is_named_with_the_way_out():
    """FSMT builds a mask as float32 filled with the minimum of the weights' dtype: fine in float32,
    an overflow in fold's float64 copy. fold says it was the float64 copy, names the way out, and
    leaves the model as it was."""

    class Float32Mask(Seq2Seq):
        def forward(self, src, tgt, padding):
            dtype = self.src_tok.weight.dtype
            torch.zeros(1).float().fill_(torch.finfo(dtype).min)  # FSMT's fill_with_neg_inf
            return super().forward(src, tgt, padding)

    torch.manual_seed(0)
    model = Float32Mask()
    with_omega(model)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=r"fold: the model fails in float64.*overflow.*an example call that "
                                           r"runs in float64.*unchanged"):
        admin.fold(model, *batch(0), embeddings=model.embeddings())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_the_first_omega_hint_offers_what_works_after_training():
    """A trained stack's first ω ≠ 1 without its tables: the hint no longer offers profiling (which
    would discard the trained ω); each way it offers works: naming the tables, or fixed_first."""
    model = admin_seq2seq()
    with pytest.raises(ValueError) as refusal:
        admin.fold(model, *batch(0))
    message = str(refusal.value)
    assert "'encoder.0.self_attn_layer_norm.residual' is no LayerNorm's output" in message
    assert "embeddings={stack:" in message and "fixed_first=True" in message and "profile" not in message
    assert admin.fold(model, *batch(0), embeddings=model.embeddings()).change <= admin.FOLD_BOUND
    assert admin.fold(admin_seq2seq(fixed_first=True), *batch(0)).change <= admin.FOLD_BOUND


def test_the_hugging_face_output_the_tutorial_shows_is_the_kept_one():
    """tutorial.md Section 14 shows lines of `bash .ci/hf-check`'s output in ```console blocks; nothing
    here can run it (transformers is not our dependency), so each shown line must be a line of the kept
    lab/results/hf_check.txt."""
    root = Path(__file__).parent
    kept = set((root / "lab/results/hf_check.txt").read_text().splitlines())
    blocks = re.findall(r"```console\n(.*?)```", (root / "tutorial.md").read_text(), flags=re.S)
    shown = [line for block in blocks for line in block.splitlines() if line]
    assert len(shown) >= 20, f"{len(shown)} lines shown"
    assert all(line in kept for line in shown), [line for line in shown if line not in kept][:3]
