"""Admin in PyTorch's own Transformer classes: admin.TransformerEncoderLayer and
admin.TransformerDecoderLayer against torch's layers, inside nn.TransformerEncoder, nn.TransformerDecoder
and nn.Transformer, and admin.fold's round trip into the unmodified classes — with the plans it must
refuse."""

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import admin
from lab.testing_tools import fold_error, rel_err, tiny_config

V, C, H, F = 13, 8, 2, 16  # vocabulary, d_model, heads, d_ff


def causal(T: int) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool).triu(1)  # True: may not attend (a later position)


class Seq2Seq(nn.Module):
    """What a user writes around nn.Transformer: embeddings per stack, the Transformer, a head.
    layers="admin": custom encoder and decoder of Admin layers; "torch": nn.Transformer's own."""

    def __init__(self, layers: str, N: int = 2, M: int = 2, dropout: float = 0.1, **admin_kw):
        super().__init__()
        self.src_tok, self.src_pos = nn.Embedding(V, C), nn.Embedding(16, C)
        self.tgt_tok, self.tgt_pos = nn.Embedding(V, C), nn.Embedding(16, C)
        kw = dict(dropout=dropout, batch_first=True)
        if layers == "admin":
            enc = admin.TransformerEncoderLayer(C, H, F, num_res_layers=2 * N, **admin_kw, **kw)
            dec = admin.TransformerDecoderLayer(C, H, F, num_res_layers=3 * M, **admin_kw, **kw)
            self.transformer = nn.Transformer(
                C, H, custom_encoder=nn.TransformerEncoder(enc, N, norm=nn.LayerNorm(C)),
                custom_decoder=nn.TransformerDecoder(dec, M, norm=nn.LayerNorm(C)), batch_first=True)
        else:
            self.transformer = nn.Transformer(C, H, N, M, F, **kw)
        self.head = nn.Linear(C, V)

    def stacks(self) -> list[nn.Module]:
        return [self.transformer.encoder, self.transformer.decoder]

    def embeddings(self) -> dict:
        return {self.transformer.encoder: [self.src_tok.weight, self.src_pos.weight],
                self.transformer.decoder: [self.tgt_tok.weight, self.tgt_pos.weight]}

    def forward(self, src, tgt, src_padding):
        x = self.src_tok(src) + self.src_pos(torch.arange(src.size(1)))
        y = self.tgt_tok(tgt) + self.tgt_pos(torch.arange(tgt.size(1)))
        T = tgt.size(1)
        tgt_padding = torch.zeros(tgt.shape, dtype=torch.bool)
        tgt_padding[0, T - 1] = True  # the first target's last token is padding
        out = self.transformer(x, y, tgt_mask=causal(T), tgt_is_causal=True, src_key_padding_mask=src_padding,
                               tgt_key_padding_mask=tgt_padding, memory_key_padding_mask=src_padding)
        return self.head(out)  # (B, T, V)


class Encoder(nn.Module):
    """A causal encoder-only language model on a stock nn.TransformerEncoder."""

    def __init__(self, layers: str, N: int = 3, dropout: float = 0.1):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(16, C)
        kw = dict(dropout=dropout, batch_first=True)
        layer = (admin.TransformerEncoderLayer(C, H, F, num_res_layers=2 * N, **kw) if layers == "admin"
                 else nn.TransformerEncoderLayer(C, H, F, **kw))
        self.encoder = nn.TransformerEncoder(layer, N, enable_nested_tensor=False)
        self.head = nn.Linear(C, V)

    def forward(self, idx, padding):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        T = idx.size(1)
        return self.head(self.encoder(x, mask=causal(T), src_key_padding_mask=padding, is_causal=True))


def batch(seed: int, B=3, S=7, T=6):
    gen = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(V, (B, S), generator=gen), torch.randint(V, (B, T), generator=gen)
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[1, S - 2:] = True  # one padded sequence, left-aligned as torch's nested path requires
    return src, tgt, padding


def train(model, inputs, target, steps=15):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(*inputs).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def omega_vectors(model) -> list[torch.Tensor]:
    return [m.omega for m in model.modules() if isinstance(m, admin.OmegaResidual)]


# ---------------------------------------------------------------------------------------------------
# The layers are torch's layers, with ω_i ⊙ x in each shortcut
# ---------------------------------------------------------------------------------------------------

masks = st.sampled_from(["none", "causal", "causal float", "padding"])


@given(seed=st.integers(0, 2**16), mask=masks, batch_first=st.booleans(),
       activation=st.sampled_from(["relu", "gelu", "tanh"]))
def test_encoder_layer_is_post_ln_with_omega_on_each_shortcut(seed, mask, batch_first, activation):
    torch.manual_seed(seed)
    act = torch.tanh if activation == "tanh" else activation  # torch takes a string or a callable
    kw = dict(dropout=0.0, batch_first=batch_first, activation=act)
    ours = admin.TransformerEncoderLayer(C, H, F, num_res_layers=6, **kw).double().eval()
    theirs = nn.TransformerEncoderLayer(C, H, F, **kw).double().eval()
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.endswith("omega")})
    gen = torch.Generator().manual_seed(seed)
    B, T = 2, 5
    x = torch.randn((B, T, C) if batch_first else (T, B, C), generator=gen, dtype=torch.float64)
    args = {"none": {}, "causal": dict(src_mask=causal(T), is_causal=True),
            "causal float": dict(src_mask=nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)),
            "padding": dict(src_key_padding_mask=torch.tensor([[False] * T, [False] * 3 + [True] * 2]))}[mask]
    with torch.no_grad():
        for res in (ours.res1, ours.res2):
            res.omega.fill_(1.0)
        assert rel_err(ours(x, **args), theirs(x, **args)) <= 1e-12, "ω = 1: torch's layer"
        omega1, omega2 = (0.5 + 3 * torch.rand(C, generator=gen, dtype=torch.float64) for _ in range(2))
        ours.res1.omega.copy_(omega1)
        ours.res2.omega.copy_(omega2)
        # the equation, from torch's public pieces: x = LN(ω_1 ⊙ x + SA(x)); x = LN(ω_2 ⊙ x + FFN(x))
        mha_args = dict(attn_mask=args.get("src_mask"), key_padding_mask=args.get("src_key_padding_mask"))
        want = theirs.norm1(omega1 * x + theirs.self_attn(x, x, x, need_weights=False, **mha_args)[0])
        ffn = theirs.linear2(theirs.activation(theirs.linear1(want)))
        want = theirs.norm2(omega2 * want + ffn)
        assert rel_err(ours(x, **args), want) <= 1e-12, "LN(ω ⊙ x + f(x)) in each sub-layer"


@given(seed=st.integers(0, 2**16), causal_memory=st.booleans())
def test_decoder_layer_is_post_ln_with_omega_on_each_shortcut(seed, causal_memory):
    torch.manual_seed(seed)
    ours = admin.TransformerDecoderLayer(C, H, F, num_res_layers=6, dropout=0.0, batch_first=True)
    theirs = nn.TransformerDecoderLayer(C, H, F, dropout=0.0, batch_first=True)
    ours, theirs = ours.double().eval(), theirs.double().eval()
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.endswith("omega")})
    gen = torch.Generator().manual_seed(seed)
    y, memory = (torch.randn(2, T, C, generator=gen, dtype=torch.float64) for T in (5, 5))
    padding = torch.tensor([[False] * 5, [False] * 4 + [True]])
    tgt_padding = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    args = dict(tgt_mask=causal(5), tgt_is_causal=True, memory_key_padding_mask=padding,
                tgt_key_padding_mask=tgt_padding,
                memory_mask=causal(5) if causal_memory else None, memory_is_causal=causal_memory)
    with torch.no_grad():
        for res in (ours.res1, ours.res2, ours.res3):
            res.omega.fill_(1.0)
        assert rel_err(ours(y, memory, **args), theirs(y, memory, **args)) <= 1e-12, "ω = 1: torch's layer"
        omegas = [0.5 + 3 * torch.rand(C, generator=gen, dtype=torch.float64) for _ in range(3)]
        for res, omega in zip((ours.res1, ours.res2, ours.res3), omegas):
            res.omega.copy_(omega)
        sa = theirs.self_attn(y, y, y, attn_mask=causal(5), key_padding_mask=tgt_padding, need_weights=False)[0]
        want = theirs.norm1(omegas[0] * y + sa)
        ca = theirs.multihead_attn(want, memory, memory, attn_mask=args["memory_mask"],
                                   key_padding_mask=padding, need_weights=False)[0]
        want = theirs.norm2(omegas[1] * want + ca)
        want = theirs.norm3(omegas[2] * want + theirs.linear2(theirs.activation(theirs.linear1(want))))
        assert rel_err(ours(y, memory, **args), want) <= 1e-12, "LN(ω ⊙ y + f(y)) in each sub-layer"


def test_layers_take_torchs_arguments_and_admins_choices():
    enc = admin.TransformerEncoderLayer(C, H, F, num_res_layers=12)
    assert enc.res1.omega.shape == (C,) and enc.res1.omega.requires_grad, "the paper's trainable vector"
    assert torch.all(enc.res2.omega == admin.calculate_init(12))
    dec = admin.TransformerDecoderLayer(d_model=C, nhead=H, dim_feedforward=F, num_res_layers=9,
                                        output_change_scale="O(1)", as_parameter=False)
    assert dec.res3.omega.shape == (1,) and not dec.res3.omega.requires_grad, "admin-torch's scalar"
    assert dec.res1.omega.item() == admin.calculate_init(9, "O(1)") == 3.0
    names = set(nn.TransformerDecoderLayer(C, H, F).state_dict())
    assert set(dec.state_dict()) == names | {"res1.omega", "res2.omega", "res3.omega"}


def test_layers_refuse_pre_ln_and_a_bad_sublayer_count():
    for cls in (admin.TransformerEncoderLayer, admin.TransformerDecoderLayer):
        with pytest.raises(ValueError, match=f"{cls.__name__}: norm_first=True builds Pre-LN"):
            cls(C, H, F, num_res_layers=4, norm_first=True)
        with pytest.raises(ValueError, match="num_res_layers must be a whole number >= 1.*got num_res_layers=0"):
            cls(C, H, F, num_res_layers=0)
        with pytest.raises(TypeError, match="num_res_layers"):
            cls(C, H, F)  # the count has no default: the commonest mistake is the layer count


def test_nested_tensor_path_of_the_encoder_gives_the_dense_result():
    """nn.TransformerEncoder (enable_nested_tensor=True, its default) nests a padded batch in eval
    mode without gradients; the Admin layer pads, runs and nests again: the same values at real
    positions, zeros at padded ones, as torch's own layers give."""
    torch.manual_seed(0)
    layer = admin.TransformerEncoderLayer(C, H, F, num_res_layers=4, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2).eval()
    x = torch.randn(3, 6, C)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, 4:] = True
    with torch.no_grad():
        nested = encoder(x, src_key_padding_mask=padding)
        with admin.eval_pass(encoder):  # torch's fast path off: the batch stays dense
            dense = encoder(x, src_key_padding_mask=padding)
    assert torch.all(nested[0, 4:] == 0), "padded positions: zeros, as torch's nested path leaves them"
    # Two float32 computations of one function by different kernels (the nested path runs torch's
    # fused attention): 2.7e-7 apart at worst over 20 seeds; a wrong position or a missed ω: 1e-1.
    assert rel_err(nested[~padding], dense[~padding]) <= 1e-5, "real positions: the dense result"
    assert (nested[0, 4:] - dense[0, 4:]).abs().max() > 0.1, "the nested path was taken"


# ---------------------------------------------------------------------------------------------------
# Profile, train, fold, load into the unmodified classes
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_encoder_decoder_round_trip_into_stock_nn_transformer(dtype):
    torch.manual_seed(1)
    model = Seq2Seq("admin").to(dtype)
    src, tgt, padding = batch(1)
    omegas = admin.profile_omega(model, src, tgt, padding, stacks=model.stacks())
    assert len(omegas) == 2 * 2 + 3 * 2 and omegas[0] == omegas[4] == 1.0, "each stack starts at 1"
    train(model, (src, tgt, padding), tgt)
    assert all(len(set(w.tolist())) > 1 for w in omega_vectors(model)), "ω trained into vectors"
    trained = copy.deepcopy(model).eval()
    folded = admin.fold(model, src, tgt, padding, embeddings=model.embeddings())
    assert folded.change <= admin.FOLD_BOUND
    assert all(torch.all(w == 1) for w in omega_vectors(model)), "ω = 1 after the fold"
    stock = Seq2Seq("torch").to(dtype)
    stock.load_state_dict(folded.state_dict, strict=True)
    err, allowed = fold_error(trained, stock.eval(), (src, tgt, padding), torch.Generator().manual_seed(1))
    assert err <= allowed, f"stock nn.Transformer vs the Admin model: {err:.1e} > {allowed:.1e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_encoder_round_trip_into_stock_nn_transformer_encoder(dtype):
    torch.manual_seed(2)
    model = Encoder("admin").to(dtype)
    idx, _, padding = batch(2, S=7)
    admin.profile_omega(model, idx, padding)
    train(model, (idx, padding), idx)
    trained = copy.deepcopy(model).eval()
    folded = admin.fold(model, idx, padding, embeddings={model: [model.tok.weight, model.pos.weight]})
    stock = Encoder("torch").to(dtype)
    stock.load_state_dict(folded.state_dict, strict=True)
    err, allowed = fold_error(trained, stock.eval(), (idx, padding), torch.Generator().manual_seed(2))
    assert err <= allowed, f"stock nn.TransformerEncoder vs the Admin model: {err:.1e} > {allowed:.1e}"


def test_fold_on_our_model_is_reparameterize():
    torch.manual_seed(3)
    model = admin.PostLNTransformer(tiny_config()).double()
    idx = torch.randint(11, (4, 9))
    train(model, (idx,), idx, steps=3)
    want = admin.reparameterize(model).state_dict()
    folded = admin.fold(model, idx, embeddings={model: [model.tok_emb.weight, model.pos_emb.weight]})
    assert folded.state_dict.keys() == want.keys()
    assert max(rel_err(folded.state_dict[k], want[k]) for k in want) <= 1e-15, "one fold, two routes"


# ---------------------------------------------------------------------------------------------------
# A wrong plan raises and leaves the model as it was
# ---------------------------------------------------------------------------------------------------


def trained_seq2seq(seed=4):
    torch.manual_seed(seed)
    model = Seq2Seq("admin", dropout=0.0).double()
    inputs = batch(seed)
    train(model, inputs, inputs[1], steps=3)
    return model, inputs


def assert_refused(model, inputs, match, **kw):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    with pytest.raises(ValueError, match=match):
        admin.fold(model, *inputs, **kw)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the model changed before refusing"
    assert [m.training for m in model.modules()] == modes, "train/eval modes not restored"


def test_wrong_plans_raise_and_name_the_step():
    model, inputs = trained_seq2seq()
    plan = admin.fold_plan(model, *inputs, embeddings=model.embeddings())
    cross = [i for i, s in enumerate(plan) if s.residual.endswith("layers.0.res2") and "decoder" in s.residual][0]
    step = plan[cross]
    assert [str(r) for r in step.readers] == ["transformer.decoder.layers.0.multihead_attn.in_proj_weight[0:8]"]
    kv_too = [*plan[:cross], step._replace(readers=(admin.Rows(step.readers[0].name),)), *plan[cross + 1:]]
    assert_refused(model, inputs, rf"step {cross + 1} moves them first: '{step.residual}'", plan=kv_too)
    no_producer = [*plan[:cross], step._replace(producers=()), *plan[cross + 1:]]
    assert_refused(model, inputs, rf"more than float64 rounding allows.*step {cross + 1}", plan=no_producer)
    assert_refused(model, inputs, "folds 'transformer.decoder.layers.0.res2' twice", plan=[*plan, step])
    assert_refused(model, inputs, "'decoder.res2', which is no OmegaResidual",
                   plan=[*plan, step._replace(residual="decoder.res2")])
    assert_refused(model, inputs, "'transformer.decoder.layers.0.res2' keeps ω ≠ 1 after the plan",
                   plan=[*plan[:cross], *plan[cross + 1:]])


def test_the_bound_catches_a_fold_wrong_by_one_part_in_a_million():
    """FOLD_BOUND (1e-9) sits far below the smallest wrong fold that matters: ω = 1 + 1e-6, its
    producers left out, moves the outputs by about 1e-7 and is refused."""
    model, inputs = trained_seq2seq(6)
    residual = model.transformer.encoder.layers[1].res2
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, admin.OmegaResidual):
                m.omega.fill_(1.0)
        residual.omega.fill_(1 + 1e-6)
    [step] = admin.fold_plan(model, *inputs)  # the only ω ≠ 1
    assert_refused(model, inputs, r"step 1 moves them first", plan=[step._replace(producers=())])
    assert admin.fold(model, *inputs).change <= admin.FOLD_BOUND, "the right plan still folds"


def test_trace_refuses_what_it_cannot_fold():
    model, inputs = trained_seq2seq(5)
    assert_refused(model, inputs, r"'transformer.encoder.layers.0.res1' is no LayerNorm's output and its ω is not 1.*"
                   r"embeddings=\{stack")
    shared = {model.transformer.encoder: [model.src_tok.weight, model.src_pos.weight],
              model.transformer.decoder: [model.tgt_tok.weight, model.src_pos.weight]}  # one position table
    assert_refused(model, inputs, "'src_pos.weight' among the producers of two steps, so ω would be folded into "
                   "it twice: give each stack its own embedding", embeddings=shared)
    assert_refused(model, inputs, "embeddings were given for a Linear in which the pass called no OmegaResidual",
                   embeddings={model.head: [model.src_tok.weight]})
    sinusoids = {model.transformer.encoder: [model.src_tok.weight, torch.randn(16, C, dtype=torch.float64)]}
    assert_refused(model, inputs, "no parameter or buffer of the model.*store.* as a buffer", embeddings=sinusoids)
    model.head.weight = model.tgt_tok.weight  # tied input and output embeddings
    assert_refused(model, inputs, r"tgt_tok.weight, head.weight are one tensor, so ω would change each. Untie every "
                   r"tie.*\n    model.head.weight = nn.Parameter\(model.tgt_tok.weight.detach\(\).clone\(\)\)\n",
                   embeddings=model.embeddings())


class Branchy(nn.Module):
    """A model whose second sub-layer runs only when asked: an example pass without it never calls it."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(C, C), nn.Linear(C, C)
        self.n0, self.n1, self.n2 = nn.LayerNorm(C), nn.LayerNorm(C), nn.LayerNorm(C)
        self.r1, self.r2 = admin.OmegaResidual(2.0), admin.OmegaResidual(3.0)

    def forward(self, x, deep=True):
        x = self.n0(x)
        x = self.n1(self.r1(x, self.l1(x)))
        return self.n2(self.r2(x, self.l2(x))) if deep else x


def test_a_residual_the_example_never_reaches_is_refused():
    model, x = Branchy(), torch.randn(2, 3, C)
    assert_refused(model, (x,), "'r2' keeps ω ≠ 1 after the plan: the example pass never called it", deep=False)
    model.n0.eval()  # a sub-module in another mode than its parent keeps it
    assert_refused(model, (x,), "'r2' keeps ω ≠ 1", deep=False)
    folded = admin.fold(model, x)
    assert folded.change <= admin.FOLD_BOUND and "r2.omega" not in folded.state_dict
    assert not model.n0.training and model.n1.training, "modes restored module by module"


def test_a_layernorm_without_weights_is_named():
    model, x = Branchy(), torch.randn(2, 3, C)
    model.n1 = nn.LayerNorm(C, elementwise_affine=False)
    assert_refused(model, (x,), "the norm 'n1' before 'r2' has no weight to fold ω into.*elementwise_affine=True")


class Swapped(nn.Module):
    """A user's Post-LN layer that calls the residual with the branch first: ω scales the branch."""

    def __init__(self):
        super().__init__()
        self.linear, self.norm1, self.norm2 = nn.Linear(C, C), nn.LayerNorm(C), nn.LayerNorm(C)
        self.res = admin.OmegaResidual(2.0)

    def forward(self, x):
        x = self.norm1(x)
        return self.norm2(self.res(self.linear(x), x))  # swapped: should be res(x, self.linear(x))


def test_swapped_arguments_are_refused_with_the_order_named():
    model, x = Swapped(), torch.randn(2, 3, C)
    assert_refused(model, (x,), r"'res'.*forward\(x, f_x\) takes the shortcut x .* first")


def test_wrappers_and_called_twice_are_refused_with_the_module_named():
    model = admin.PostLNTransformer(tiny_config())
    idx = torch.randint(11, (2, 5))
    compiled = torch.compile(model, backend="eager")  # lazily: nothing is compiled; eager: no inductor import
    for call in (admin.profile_omega, admin.fold):
        with pytest.raises(ValueError, match=r"OptimizedModule wrapper; call it on the model inside \(model._orig_mod\)"):
            call(compiled, idx)
    for name, inner in (("FullyShardedDataParallel", "module"), ("DistributedDataParallel", "module"),
                        ("DataParallel", "module")):
        wrapper = type(name, (nn.Module,), {})()  # refused by its class name, as the check reads it
        with pytest.raises(ValueError, match=rf"got a {name} wrapper; call it on the model inside \(model.{inner}\)"):
            admin.profile_omega(wrapper, idx)
    model.blocks[1] = model.blocks[0]  # one layer in two places
    for call in (admin.profile_omega, admin.fold):
        with pytest.raises(ValueError, match="'blocks.0.res1' was called twice.*shared by two places.*checkpointing"
                                             ".*chunk_size_feed_forward"):
            call(model, idx)


def test_omega_parameters_are_the_trainable_omegas():
    model = Seq2Seq("admin")
    named = {id(p) for n, p in model.named_parameters() if n.endswith(".omega")}
    assert {id(p) for p in admin.omega_parameters(model)} == named and len(named) == 2 * 2 + 3 * 2
    assert admin.omega_parameters(Seq2Seq("admin", as_parameter=False)) == [], "fixed ω: buffers"
