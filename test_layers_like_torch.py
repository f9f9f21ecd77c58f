"""admin.TransformerEncoderLayer and admin.TransformerDecoderLayer with ω = 1 (output_change_scale="O(n)")
are torch's layers: the claims PyTorch's own tests state for nn.TransformerEncoderLayer and
nn.TransformerDecoderLayer (test_transformers.py, test_nn.py, the ModuleInfo entries of test_modules.py),
stated for ours against torch's, in float64.

    PyTorch's test area                              here
    forward/backward over its module inputs          test_*_layer_is_torchs_layer (a differential fuzz:
      (batch_first, activation, masks, is_causal)      outputs, NaN positions, warnings, gradients)
    src_mask / key padding, bool and float           the same fuzz, fully masked rows included
    is_causal with a causal mask                     the same fuzz: the hint changes no row with a key
    dropout in training                              the same fuzz: the same draws, in the same order
    a mask of another dtype                          test_a_mask_of_another_dtype_is_refused_...
    TorchScript of the layer, of a subclass          test_layers_script..., test_a_subclass_...
    factory kwargs (dtype, device incl. meta)        test_factory_keywords_*
    nested tensors (in nn.TransformerEncoder)        test_nested_path_..., test_a_nested_input_...
    the fused fast path                              test_torchs_fused_kernel_is_never_called

Tolerance. With ω = 1 exactly, x * ω is x exactly, so ours and torch's composite path run the same
float64 operations on the same numbers; they differ only where one side runs a fused kernel that orders
its arithmetic differently (torch's encoder kernel in eval without gradients; MultiheadAttention's, in
the scripted test's eval mode). Each output element is a few dozen
rounded operations (d_model 8, d_ff 16, at most 5 keys) on numbers of size ≲ 10, so two orderings
differ by at most about 10 · 50 · 2⁻⁵³ ≈ 6e-14, and by 4e-16 where measured; TOL = 1e-12, relative to
max(1, max |torch's|), leaves a hundredfold margin. A wrong mask, a missed ω or a swapped sub-layer
moves outputs by 1e-2 or more.
"""

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import admin

# torch's notices about its APIs, not about these layers (torch 2.13 deprecates torch.jit.script)
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")]

C, F = 8, 16  # d_model, d_ff
TOL = 1e-12
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "callable": torch.tanh}  # torch takes a name or a callable


def pair(kind: str, heads: int = 2, **kw):
    """Ours (ω = 1) and torch's layer of one kind, the same weights, float64."""
    ours_cls, torch_cls = {"encoder": (admin.TransformerEncoderLayer, nn.TransformerEncoderLayer),
                           "decoder": (admin.TransformerDecoderLayer, nn.TransformerDecoderLayer)}[kind]
    ours = ours_cls(C, heads, F, num_res_layers=4, output_change_scale="O(n)", dtype=torch.float64, **kw)
    theirs = torch_cls(C, heads, F, dtype=torch.float64, **kw)
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and all(k.endswith(".omega") for k in unexpected), "torch's names plus ω"
    assert all(torch.all(m.omega == 1) for m in ours.modules() if isinstance(m, admin.OmegaResidual))
    return ours, theirs


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """NaN where torch's is NaN and nowhere else; elsewhere within TOL of torch's."""
    assert torch.equal(ours.isnan(), theirs.isnan()), f"{what}: NaN at other positions than torch's"
    real = ~theirs.isnan()
    if real.any():
        err = ((ours[real] - theirs[real]).abs().max() / theirs[real].abs().max().clamp_min(1)).item()
        assert err <= TOL, f"{what}: {err:.1e} from torch's, more than {TOL:.0e}"


def attention_mask(kind: str, T: int, S: int, gen: torch.Generator):
    """(mask or None, is_causal): none, bool, float (-inf and finite), causal with the is_causal hint.
    Random bool masks block a key with probability 1/2, so whole rows are often blocked."""
    blocked = torch.rand(T, S, generator=gen) < 0.5
    if kind == "none":
        return None, False
    if kind == "bool":
        return blocked, False
    if kind == "float":
        return torch.randn(T, S, generator=gen, dtype=torch.float64).masked_fill(blocked, float("-inf")), False
    causal = torch.ones(T, S, dtype=torch.bool).triu(1)  # True: a later position, not attended
    return (causal if kind == "causal bool" else torch.zeros(T, S, dtype=torch.float64).masked_fill(
        causal, float("-inf"))), True


def padding_mask(kind: str, B: int, S: int, gen: torch.Generator):
    """None, or (B, S) True/-inf at padded keys; a sequence of length 0 leaves all of its keys masked."""
    if kind == "none":
        return None
    padded = torch.arange(S) >= torch.randint(0, S + 1, (B, 1), generator=gen)
    return padded if kind == "bool" else torch.zeros(B, S, dtype=torch.float64).masked_fill(padded, float("-inf"))


def run(layer, args: tuple, kwargs: dict, seed: int):
    """layer(*args, **kwargs) with dropout seeded, and the warnings it gave."""
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = layer(*args, **kwargs)
    return out, sorted(str(w.message) for w in caught)


def assert_like_torch(ours, theirs, args: tuple, kwargs: dict, mode: str, seed: int):
    """Outputs, warnings and, in the modes with gradients, the gradients of a random projection of the
    output with respect to the inputs and every parameter of torch's (ours has ω besides)."""
    grad = mode != "eval, no grad"
    for layer in (ours, theirs):
        layer.train(mode == "train")
    inputs = [a.detach().requires_grad_(grad) for a in args]
    with torch.set_grad_enabled(grad):
        (y, ours_warned), (want, torch_warned) = (run(m, inputs, kwargs, seed) for m in (ours, theirs))
    assert_same(y, want, f"output ({mode})")
    assert ours_warned == torch_warned, "the warnings torch's layer gives"
    if grad:
        w = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        names = list(dict(theirs.named_parameters()))

        def grads(out, layer):
            params = dict(layer.named_parameters())
            return torch.autograd.grad((out.nan_to_num() * w).sum(), [*inputs, *(params[n] for n in names)],
                                       allow_unused=True)

        got, ref = grads(y, ours), grads(want, theirs)
        for name, g, g_ref in zip([f"input {i}" for i in range(len(inputs))] + names, got, ref, strict=True):
            assert (g is None) == (g_ref is None), f"gradient of {name}: in one layer only"
            if g_ref is not None:
                assert_same(g, g_ref, f"gradient of {name} ({mode})")
    return y


def rows_with_a_key(attn, padding, B: int, T: int, S: int, batch_first: bool) -> torch.Tensor:
    """(B, T), or (T, B) if not batch_first: True at the query rows that the masks leave a key to attend.
    A row with none is NaN or finite as the attention kernel that runs it decides."""
    blocked = torch.zeros(B, T, S, dtype=torch.bool)  # (batch, query, key)
    for mask, where in ((attn, (None, slice(None), slice(None))), (padding, (slice(None), None, slice(None)))):
        if mask is not None:
            blocked |= (mask if mask.dtype == torch.bool else mask.isneginf())[where]
    seen = ~blocked.all(-1)
    return seen if batch_first else seen.T


MODES = st.sampled_from(["train", "eval", "eval, no grad"])  # train: dropout on, seeded alike
MASKS = st.sampled_from(["none", "bool", "float", "causal bool", "causal float"])
PADDINGS = st.sampled_from(["none", "bool", "float"])


@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), T=st.integers(1, 5), batch_first=st.booleans(),
       activation=st.sampled_from(sorted(ACTIVATIONS)), heads=st.sampled_from([1, 2]), mask=MASKS,
       padding=PADDINGS, mode=MODES, dropout=st.sampled_from([0.0, 0.3]))
def test_encoder_layer_is_torchs_layer(seed, B, T, batch_first, activation, heads, mask, padding, mode, dropout):
    torch.manual_seed(seed)
    ours, theirs = pair("encoder", heads, dropout=dropout, batch_first=batch_first,
                        activation=ACTIVATIONS[activation])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, C) if batch_first else (T, B, C), generator=gen, dtype=torch.float64)
    src_mask, is_causal = attention_mask(mask, T, T, gen)
    kwargs = dict(src_mask=src_mask, src_key_padding_mask=padding_mask(padding, B, T, gen), is_causal=is_causal)
    # torch's composite path, which ours runs: a hook on a sub-module is the switch torch's layer reads to
    # leave its fused kernel; it changes nothing else (test_torchs_fused_kernel_is_never_called)
    hook = theirs.norm2.register_forward_pre_hook(lambda module, args: None)
    y = assert_like_torch(ours, theirs, (x,), kwargs, mode, seed)
    hook.remove()
    seen = rows_with_a_key(src_mask, kwargs["src_key_padding_mask"], B, T, T, batch_first)
    if is_causal and not (mode == "train" and dropout):  # attention dropout may draw in another order
        with torch.no_grad():
            unhinted = ours(x, **{**kwargs, "is_causal": False})
        assert_same(y.detach()[seen], unhinted[seen], "is_causal=True with the causal mask: the mask alone")
    # torch's layer as it runs, fused kernel and all, at the rows with a key. Not for additive masks with
    # finite entries: there torch's fused kernel gives NaN everywhere (torch 2.13 on the CPU, measured)
    if mode == "eval, no grad" and mask != "float":
        with torch.no_grad():
            fused = theirs(x, **kwargs)
        assert_same(y[seen], fused[seen], "output at rows with a key, against torch's fused kernel")


@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), T=st.integers(1, 4), S=st.integers(1, 5),
       batch_first=st.booleans(), activation=st.sampled_from(sorted(ACTIVATIONS)), heads=st.sampled_from([1, 2]),
       tgt_mask=MASKS, memory_mask=st.sampled_from(["none", "bool", "float"]), tgt_padding=PADDINGS,
       memory_padding=PADDINGS, mode=MODES, dropout=st.sampled_from([0.0, 0.3]))
def test_decoder_layer_is_torchs_layer(seed, B, T, S, batch_first, activation, heads, tgt_mask, memory_mask,
                                       tgt_padding, memory_padding, mode, dropout):
    torch.manual_seed(seed)
    ours, theirs = pair("decoder", heads, dropout=dropout, batch_first=batch_first,
                        activation=ACTIVATIONS[activation])
    gen = torch.Generator().manual_seed(seed)
    shape = (lambda L: (B, L, C)) if batch_first else (lambda L: (L, B, C))
    tgt, memory = (torch.randn(shape(L), generator=gen, dtype=torch.float64) for L in (T, S))
    tgt_attn, tgt_is_causal = attention_mask(tgt_mask, T, T, gen)
    kwargs = dict(tgt_mask=tgt_attn, tgt_is_causal=tgt_is_causal,
                  memory_mask=attention_mask(memory_mask, T, S, gen)[0],
                  tgt_key_padding_mask=padding_mask(tgt_padding, B, T, gen),
                  memory_key_padding_mask=padding_mask(memory_padding, B, S, gen))
    y = assert_like_torch(ours, theirs, (tgt, memory), kwargs, mode, seed)  # no fused kernel: as it runs
    if tgt_is_causal and not (mode == "train" and dropout):
        seen = rows_with_a_key(tgt_attn, kwargs["tgt_key_padding_mask"], B, T, T, batch_first)
        with torch.no_grad():
            unhinted = ours(tgt, memory, **{**kwargs, "tgt_is_causal": False})
        assert_same(y.detach()[seen], unhinted[seen], "tgt_is_causal=True with the causal mask: the mask alone")


def test_a_mask_of_another_dtype_is_refused_as_torch_refuses_it():
    ours, theirs = pair("encoder")
    x = torch.randn(3, 2, C, dtype=torch.float64)
    for name, mask in (("src_mask", torch.zeros(3, 3, dtype=torch.long)),
                       ("src_key_padding_mask", torch.zeros(2, 3, dtype=torch.long))):
        with pytest.raises(AssertionError) as torchs:
            theirs(x, **{name: mask})
        with pytest.raises(AssertionError) as raised:
            ours(x, **{name: mask})
        assert str(raised.value) == str(torchs.value), "torch's refusal"
        message = str(raised.value)
        assert name in message and "bool and floating" in message, "it names the mask and what is allowed"


# ---------------------------------------------------------------------------------------------------
# TorchScript and subclassing
# ---------------------------------------------------------------------------------------------------


def test_layers_script_and_the_scripted_layer_is_the_layer():
    torch.manual_seed(0)
    x, memory = torch.randn(2, 5, C, dtype=torch.float64), torch.randn(2, 4, C, dtype=torch.float64)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    calls = (("encoder", (x,), dict(src_mask=causal, is_causal=True, src_key_padding_mask=padding)),
             ("decoder", (x, memory), dict(tgt_mask=causal, tgt_is_causal=True,
                                           memory_key_padding_mask=padding[:, 1:])))
    for kind, args, kwargs in calls:
        ours, theirs = pair(kind, dropout=0.0, batch_first=True)
        scripted = torch.jit.script(ours)
        theirs.train()  # torch's composite path (dropout 0): no fused kernel in either mode
        for train in (True, False):
            ours.train(train)
            with torch.no_grad():
                y = scripted(*args, **kwargs)
                assert_same(y, ours(*args, **kwargs), f"scripted {kind} layer, train={train}: the eager layer")
                assert_same(y, theirs(*args, **kwargs), f"scripted {kind} layer, train={train}: torch's layer")


class Subclass(admin.TransformerEncoderLayer):
    """What test_transformers' subclass tests build: a subclass that adds nothing."""


def test_a_subclass_of_our_layer_works_and_scripts_in_a_stock_encoder():
    """As test_transformers scripts nn.TransformerEncoder around a subclass of torch's layer: in eval
    without gradients the encoder nests the padded batch, scripted or not."""
    torch.manual_seed(1)
    layer = Subclass(C, 2, F, batch_first=True, num_res_layers=4, output_change_scale="O(n)", dtype=torch.float64)
    ours = nn.TransformerEncoder(layer, 2).eval()
    theirs = nn.TransformerEncoder(nn.TransformerEncoderLayer(C, 2, F, batch_first=True, dtype=torch.float64), 2)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(2, 5, C, dtype=torch.float64)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    scripted = torch.jit.script(ours)
    with torch.no_grad():
        y = ours(x, src_key_padding_mask=padding)
        assert_same(scripted(x, src_key_padding_mask=padding), y, "the scripted subclass in a stock encoder")
        assert_same(y, theirs.eval()(x, src_key_padding_mask=padding), "torch's encoder")


# ---------------------------------------------------------------------------------------------------
# Factory keywords: device= and dtype= reach ω
# ---------------------------------------------------------------------------------------------------

LAYERS = [(admin.TransformerEncoderLayer, nn.TransformerEncoderLayer, 2),
          (admin.TransformerDecoderLayer, nn.TransformerDecoderLayer, 3)]


@pytest.mark.parametrize("as_parameter", [True, False])
@pytest.mark.parametrize("ours_cls, torch_cls, per_layer", LAYERS)
def test_factory_keywords_dtype_float64_gives_omega_calculate_init_exactly(ours_cls, torch_cls, per_layer,
                                                                           as_parameter):
    n = 6 * per_layer
    for scale in ("default", "O(1)", "O(n)"):
        layer = ours_cls(C, 2, F, num_res_layers=n, output_change_scale=scale, as_parameter=as_parameter,
                         dtype=torch.float64)
        assert {t.dtype for t in layer.state_dict().values()} == {torch.float64}, "every tensor, ω too"
        for m in [m for m in layer.modules() if isinstance(m, admin.OmegaResidual)]:
            assert torch.all(m.omega == admin.calculate_init(n, scale)), f"ω = calculate_init({n}, {scale!r})"
    single = ours_cls(C, 2, F, num_res_layers=n)  # torch's default dtype: one rounding, from float64
    assert single.res1.omega.dtype == torch.float32
    assert torch.all(single.res1.omega == torch.tensor(admin.calculate_init(n), dtype=torch.float64).float())


@pytest.mark.parametrize("ours_cls, torch_cls, per_layer", LAYERS)
def test_factory_keywords_meta_puts_omega_on_meta_and_forward_runs_there(ours_cls, torch_cls, per_layer):
    for build in (lambda cls, **kw: cls(C, 2, F, device="meta", **kw),
                  lambda cls, **kw: cls(C, 2, F, device="meta", dtype=torch.float64, **kw)):
        ours, theirs = build(ours_cls, num_res_layers=per_layer), build(torch_cls)
        assert all(t.is_meta for t in ours.state_dict().values()), "every tensor on meta, ω too"
        assert ours.res1.omega.dtype == theirs.linear1.weight.dtype
        x = torch.empty(5, 2, C, device="meta", dtype=theirs.linear1.weight.dtype)  # (T, B, C)
        args = (x,) if torch_cls is nn.TransformerEncoderLayer else (x, x)  # the decoder: tgt, memory
        y, want = ours(*args), theirs(*args)
        assert y.is_meta and y.shape == want.shape and y.dtype == want.dtype, "torch's output, on meta"


# ---------------------------------------------------------------------------------------------------
# Nested tensors
# ---------------------------------------------------------------------------------------------------


def test_nested_path_in_a_stock_encoder_gives_the_dense_values():
    """nn.TransformerEncoder nests a padded batch in eval mode without gradients (its default
    enable_nested_tensor); our layer sees the nested tensor, and the real positions get the dense path's
    values and torch's encoder's, the padded ones zeros."""
    torch.manual_seed(2)
    layer = admin.TransformerEncoderLayer(C, 2, F, batch_first=True, num_res_layers=4, output_change_scale="O(n)",
                                          dtype=torch.float64)
    ours = nn.TransformerEncoder(layer, 2).eval()
    theirs = nn.TransformerEncoder(nn.TransformerEncoderLayer(C, 2, F, batch_first=True, dtype=torch.float64), 2)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    seen = []
    ours.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].is_nested))
    x = torch.randn(3, 6, C, dtype=torch.float64)
    padding = torch.arange(6) >= torch.tensor([[6], [4], [1]])  # left-aligned, as torch's nested path needs
    with torch.no_grad():
        nested = ours(x, src_key_padding_mask=padding)
        with admin.eval_pass(ours):  # torch's fast path off: the batch stays dense
            dense = ours(x, src_key_padding_mask=padding)
        fused = theirs.eval()(x, src_key_padding_mask=padding)
    assert seen == [True, False], "the first call nested, the second dense"
    assert torch.all(nested[padding] == 0), "padded positions: zeros, as torch's nested path leaves them"
    assert_same(nested[~padding], dense[~padding], "nested path, real positions: the dense path")
    assert_same(nested[~padding], fused[~padding], "nested path, real positions: torch's encoder")


@pytest.mark.parametrize("scripted", [False, True])
def test_a_nested_input_keeps_its_gradients(scripted):
    """Torch's layer refuses a nested input while gradients are on (MultiheadAttention's fast path alone
    takes one); ours pads, runs and nests again inside autograd, so gradients reach the input's
    sequences and every parameter: those of the dense path on the padded batch with its padding mask.
    We keep them rather than refuse: nn.TransformerEncoder nests when torch's own weights need no
    gradient, and a trainable ω still does."""
    torch.manual_seed(3)
    layer = admin.TransformerEncoderLayer(C, 2, F, batch_first=True, num_res_layers=4, dtype=torch.float64).eval()
    run_layer = torch.jit.script(layer) if scripted else layer
    lengths = [4, 2, 3]
    parts = [torch.randn(n, C, dtype=torch.float64, requires_grad=True) for n in lengths]
    w = [torch.randn(n, C, dtype=torch.float64) for n in lengths]
    out = run_layer(torch.nested.as_nested_tensor(parts))
    assert out.is_nested and out.requires_grad
    nested_grads = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(out.unbind(), w)),
                                       [*parts, *layer.parameters()])
    x = nn.utils.rnn.pad_sequence(parts, batch_first=True)  # (B, T, C)
    padding = torch.arange(x.size(1)) >= torch.tensor(lengths)[:, None]
    y = layer(x, src_key_padding_mask=padding)
    dense_grads = torch.autograd.grad(sum((y[b, :n] * w[b]).sum() for b, n in enumerate(lengths)),
                                      [*parts, *layer.parameters()])
    names = [f"sequence {b}" for b in range(len(lengths))] + [n for n, _ in layer.named_parameters()]
    for name, got, want in zip(names, nested_grads, dense_grads, strict=True):
        assert_same(got, want, f"gradient of {name}, nested input")


# ---------------------------------------------------------------------------------------------------
# What cannot hold: torch's fused kernel
# ---------------------------------------------------------------------------------------------------


def test_torchs_fused_kernel_is_never_called_and_the_docstring_says_so(monkeypatch):
    """Where torch's layer calls its fused kernel (eval, no gradients, batch_first, ReLU, even heads),
    ours runs its composite path; a forward hook sends torch's layer there too (the switch the
    fuzz uses)."""
    calls = []
    fused = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a: calls.append(1) or fused(*a))
    ours, theirs = pair("encoder", batch_first=True)
    x = torch.randn(2, 5, C, dtype=torch.float64)
    with torch.no_grad():
        ours.eval()(x)
        assert calls == [], "our layer called torch's fused kernel"
        theirs.eval()(x)
        assert calls == [1], "torch's layer called it: the conditions hold"
        hook = theirs.norm2.register_forward_pre_hook(lambda module, args: None)
        theirs(x)
        hook.remove()
        assert calls == [1], "a hook sends torch's layer down its composite path"
    doc = " ".join(admin.TransformerEncoderLayer.__doc__.split())
    assert "fused fast path" in doc and "never taken" in doc, "the docstring says what cannot hold"


@pytest.mark.parametrize("batch_first, with_mask", [(True, True), (False, False)])
def test_a_nested_input_with_a_second_padding_mask_or_not_batch_first_is_refused(batch_first, with_mask):
    """A nested input is batch-first and carries its own padding: a padding mask beside it would be
    ignored, and batch_first=False would read (B, T, C) as (T, B, C). Both are refused, not guessed."""
    layer = admin.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=batch_first,
                                          num_res_layers=2).eval()
    src = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(2, 8)])
    mask = torch.zeros(2, 3, dtype=torch.bool) if with_mask else None
    with pytest.raises(ValueError) as error:
        layer(src, src_key_padding_mask=mask)
    assert f"batch_first={batch_first}" in str(error.value) and "batch_first=True" in str(error.value)
    assert f"a mask: {with_mask}" in str(error.value) and "src_key_padding_mask=None" in str(error.value)
