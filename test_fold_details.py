"""Claims of admin.fold's pieces and of the stock-layer classes that no test stated until mutation
testing (.ci/mutation) showed them unguarded: each test names the claim, and the mutants it kills are
in its docstring. The refusals' texts are stated whole where the text is the claim: what a user reads
when fold refuses is the fix."""

import re

import pytest
import torch
from torch import nn

import admin

C = 4


class TwoReaders(nn.Module):
    """x_1 = LN(ω ⊙ x_0 + A x_0 + B x_0), x_0 = LN(s · x): one residual whose input two Linears read,
    made by a LayerNorm with a weight and a bias; `scale` is keyword-only, so a call that drops the
    keywords fails."""

    def __init__(self):
        super().__init__()
        self.n0, self.n1 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.a, self.b = nn.Linear(C, C), nn.Linear(C, C)
        self.res = admin.OmegaResidual(2.0)

    def forward(self, x, *, scale):
        x = self.n0(x * scale)
        return self.n1(self.res(x, self.a(x) + self.b(x)))


def two_readers():
    torch.manual_seed(0)
    return TwoReaders(), torch.randn(3, C), torch.tensor(1.5)


def test_fold_passes_the_example_keywords_to_every_call():
    """Kills: outputs_of, output_change or first_bad_step calling the model without **kwargs."""
    model, x, scale = two_readers()
    with torch.no_grad():
        want = model(x, scale=scale)
    folded = admin.fold(model, x, scale=scale)
    assert folded.change <= admin.FOLD_BOUND and model.res.omega.item() == 1.0
    with torch.no_grad():
        assert (model(x, scale=scale) - want).abs().max().item() < 1e-6
    model, x, scale = two_readers()
    [step] = admin.fold_plan(model, x, scale=scale)
    with pytest.raises(ValueError, match="step 1 moves them first"):  # first_bad_step's own calls
        admin.fold(model, x, plan=[step._replace(readers=())], scale=scale)


def test_a_failed_plan_names_every_producer_and_reader_of_its_step():
    """Kills: the producers or readers of the bad step joined by anything but ', '."""
    model, x, scale = two_readers()
    [step] = admin.fold_plan(model, x, scale=scale)
    assert [str(r) for r in step.producers] == ["n0.weight", "n0.bias"]
    assert [str(r) for r in step.readers] == ["a.weight", "b.weight"]
    with pytest.raises(ValueError, match=r"step 1 moves them first: 'res' with producers n0\.weight, n0\.bias and "
                                         r"readers \. The model is unchanged$"):
        admin.fold(model, x, plan=[step._replace(readers=())], scale=scale)
    with pytest.raises(ValueError, match=r"step 1 moves them first: 'res' with producers  and readers a\.weight, "
                                         r"b\.weight\. The model is unchanged$"):
        admin.fold(model, x, plan=[step._replace(producers=())], scale=scale)


class Unrepeatable(nn.Module):
    """A model whose forward is not the same function on every call: fold's second call (its check)
    returns what its first did plus 1e-3, as a forward reading a global counter might."""

    calls = [0]  # shared by every copy, as a global is

    def __init__(self):
        super().__init__()
        self.inner = TwoReaders()

    def forward(self, x, *, scale):
        Unrepeatable.calls[0] += 1
        return self.inner(x, scale=scale) + (1e-3 if Unrepeatable.calls[0] == 2 else 0.0)


def test_a_fold_that_moves_the_outputs_in_no_single_step_says_so():
    """Kills: first_bad_step's last sentence changed. Each step, refolded alone, keeps the outputs,
    so what moved them is outside the plan: the message says so, whole."""
    torch.manual_seed(0)
    model, x = Unrepeatable(), torch.randn(3, C)
    Unrepeatable.calls[0] = 0
    with pytest.raises(ValueError, match=r"\(1e-09\); no single step moves them: the residuals not in the plan or "
                                         r"the model's call do\. The model is unchanged$"):
        admin.fold(model, x, scale=torch.tensor(1.0))


def test_outputs_are_the_floating_tensors_of_tensors_tuples_lists_and_dicts():
    """Kills: floating_tensors keeping integer tensors, skipping dicts, lists or tuples, or not
    recursing; to_float64 not recursing into dicts. A Hugging Face ModelOutput is a dict."""
    a, b = torch.ones(2), torch.zeros(3, dtype=torch.float64)
    ids, mask = torch.arange(3), torch.tensor([True, False])
    nested = {"logits": a, "rest": (ids, [b, None, "text"]), "mask": mask}
    found = admin.floating_tensors(nested)
    assert len(found) == 2 and found[0] is a and found[1] is b, "the floating tensors, in order"
    assert admin.floating_tensors(ids) == [] and admin.floating_tensors(3.0) == []
    assert [t is a for t in admin.floating_tensors([a, (a,)])] == [True, True]
    as64 = admin.to_float64(nested)
    assert as64["logits"].dtype == torch.float64 and torch.equal(as64["logits"], a.double())
    assert type(as64["rest"]) is tuple and type(as64["rest"][1]) is list
    assert as64["rest"][0] is ids and as64["mask"] is mask and as64["rest"][1][1:] == [None, "text"]


def test_the_output_change_is_relative_to_each_outputs_own_largest_value():
    """Kills: the change multiplied by max |before| instead of divided; a floor of 1 on max |before|
    (small outputs would pass any fold); outputs compared pairwise without refusing a count mismatch."""
    now = [torch.tensor([2.0, 4.0]), torch.tensor([1e-3, 2e-3])]

    def model():
        return now

    before = [torch.tensor([1.0, 4.0]), torch.tensor([1e-3, 1e-3])]
    # first: |2 − 1| / 4 = 0.25; second: 1e-3 / 1e-3 = 1
    assert admin.output_change(model, before, (), {}) == pytest.approx(1.0, rel=1e-6)
    assert admin.output_change(model, [before[0], now[1]], (), {}) == pytest.approx(0.25, rel=1e-6)
    with pytest.raises(ValueError):  # zip(strict=True): a model whose outputs changed in number
        admin.output_change(model, before[:1], (), {})


class IntegerOutput(nn.Module):
    def __init__(self, value=None):
        super().__init__()
        self.inner, self.value = TwoReaders(), value

    def forward(self, x, *, scale):
        out = self.inner(x, scale=scale)
        return out.argmax(-1) if self.value is None else out * self.value


def test_outputs_fold_cannot_check_are_refused_with_the_fix():
    """Kills: outputs_of's two refusals changed in text, or the type of the output not named."""
    x, scale = torch.randn(3, C), torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"^fold: the model returned no floating-point tensor to check \(got Tensor\): "
                                         r"make it return its logits, or a tuple or dict of tensors$"):
        admin.fold(IntegerOutput(), x, scale=scale)
    with pytest.raises(ValueError, match=r"^fold: the model's outputs on the example are not all finite, so no fold "
                                         r"can be checked on it: give inputs without a fully masked row$"):
        admin.fold(IntegerOutput(float("nan")), x, scale=scale)


def test_the_called_twice_refusal_names_each_cause_and_the_fix():
    """Kills: any clause of called_twice_message changed (ALBERT-style tied layers, activation
    checkpointing, Hugging Face's chunk_size_feed_forward, the fix)."""
    assert admin.called_twice_message("fold", "blocks.0.res1") == (
        "fold: OmegaResidual 'blocks.0.res1' was called twice in one forward pass. Each residual must be one "
        "sub-layer, met once: a layer shared by two places (tied layers, ALBERT-style), activation "
        "checkpointing that reruns the forward, or a feed-forward run in chunks (Hugging Face's "
        "chunk_size_feed_forward > 0) does this; run the pass without them")


class Unusual(nn.Module):
    """Two Post-LN sub-layers of the less common shapes a trace must read: RMSNorms (a weight, no bias)
    make x_0 and x_1; a Linear called by keyword (input=) reads x_0; the residuals are called by keyword
    (x=, f_x=); a cross-attention, called by keyword too, whose memory has its own width (kdim = vdim
    = 6: separate q_proj, k_proj and v_proj weights, of which only W_Q reads x_1)."""

    def __init__(self):
        super().__init__()
        self.n0, self.n1, self.n2 = nn.RMSNorm(C), nn.RMSNorm(C), nn.LayerNorm(C)
        self.lin = nn.Linear(C, C)
        self.cross = nn.MultiheadAttention(C, 2, kdim=6, vdim=6, batch_first=True)
        self.res1, self.res2 = admin.OmegaResidual(2.0), admin.OmegaResidual(3.0)

    def forward(self, x, memory):
        x = self.n0(x)
        x = self.n1(self.res1(x=x, f_x=self.lin(input=x)))
        attended = self.cross(query=x, key=memory, value=memory, need_weights=False)[0]
        return self.n2(self.res2(x, attended))


def test_fold_reads_rmsnorms_keyword_calls_and_separate_q_k_v_weights():
    """Kills: a norm without a bias attribute read with getattr(…) and no default; a keyword input of
    a Linear or of nn.MultiheadAttention (query=, key=, value=) ignored; the residual's keyword x
    ignored; separate q/k/v weights named wrongly or not at all; the in_proj path reading a fourth
    block of rows."""
    torch.manual_seed(0)
    model, x, memory = Unusual(), torch.randn(2, 3, C), torch.randn(2, 5, 6)
    plan = admin.fold_plan(model, x, memory)
    assert [(s.residual, [str(r) for r in s.producers], [str(r) for r in s.readers]) for s in plan] == [
        ("res1", ["n0.weight"], ["lin.weight"]), ("res2", ["n1.weight"], ["cross.q_proj_weight"])]
    with torch.no_grad():
        want = model(x, memory)
    assert admin.fold(model, x, memory).change <= admin.FOLD_BOUND
    with torch.no_grad():
        assert (model(x, memory) - want).abs().max().item() < 1e-5
    attention = nn.MultiheadAttention(C, 2, batch_first=True)  # stacked: rows 0:C, C:2C, 2C:3C
    q, k, v = torch.randn(3, 2, 3, C)
    assert [(t is want_t, str(r)) for (t, r), want_t in zip(admin.reader_inputs(attention, "a", (q, k, v), {}),
                                                               (q, k, v), strict=True)] == [
        (True, "a.in_proj_weight[0:4]"), (True, "a.in_proj_weight[4:8]"), (True, "a.in_proj_weight[8:12]")]


def test_a_shared_layer_is_refused_by_fold_in_folds_name():
    """Kills: Trace.residual's refusal naming another caller than fold."""
    model = Unusual()
    model.res2 = model.res1  # one residual in two places
    with pytest.raises(ValueError, match=r"^fold: OmegaResidual 'res1' was called twice in one forward pass\. "):
        admin.fold(model, torch.randn(2, 3, C), torch.randn(2, 5, 6))


@pytest.mark.parametrize("call, want", [
    (admin.deepnorm_alpha, "n_layers must be a whole number >= 1 (layers in the stack), got n_layers=0"),
    (admin.deepnorm_beta, "n_layers must be a whole number >= 1 (layers in the stack), got n_layers=0")])
def test_deepnets_constants_refuse_a_bad_depth_naming_it(call, want):
    """Kills: deepnorm_alpha's or deepnorm_beta's refusal naming another argument or meaning."""
    with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
        call(0)


def test_pre_ln_stock_layers_are_refused_with_the_fix():
    """Kills: refuse_pre_ln's text changed."""
    for cls in (admin.TransformerEncoderLayer, admin.TransformerDecoderLayer):
        with pytest.raises(ValueError, match=f"^{cls.__name__}: norm_first=True builds Pre-LN, and Admin scales "
                                             r"Post-LN shortcuts: use norm_first=False \(torch's default\)$"):
            cls(C, 2, 8, num_res_layers=4, norm_first=True)


def outcome(call):
    """What call() gives: its output, or the type of the error it raises."""
    try:
        return call()
    except RuntimeError as error:
        return type(error)


@pytest.mark.parametrize("kind, flags", [("encoder", {}), ("encoder", {"is_causal": True}), ("decoder", {}),
                                         ("decoder", {"tgt_is_causal": True}), ("decoder", {"memory_is_causal": True})])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_layers_take_the_causal_hints_as_torchs_do(kind, flags, mode):
    """Kills: a causal hint's default True, or a hint not passed on (None, or dropped). Without a mask,
    torch's layers compute full attention by default and refuse a causal hint; ours do the same."""
    torch.manual_seed(0)
    cls, base = ((admin.TransformerEncoderLayer, nn.TransformerEncoderLayer) if kind == "encoder" else
                 (admin.TransformerDecoderLayer, nn.TransformerDecoderLayer))
    ours = cls(C, 2, 8, num_res_layers=3, dropout=0.0, batch_first=True)
    theirs = base(C, 2, 8, dropout=0.0, batch_first=True)
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.endswith("omega")})
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, admin.OmegaResidual):
                m.omega.fill_(1.0)
    getattr(ours, mode)(), getattr(theirs, mode)()
    inputs = (torch.randn(2, 5, C),) if kind == "encoder" else (torch.randn(2, 5, C), torch.randn(2, 6, C))
    want, got = outcome(lambda: theirs(*inputs, **flags)), outcome(lambda: ours(*inputs, **flags))
    if isinstance(want, type):
        assert got is want and flags, (got, want)  # torch refuses a hint without a mask
    else:
        assert not flags and (got - want).abs().max().item() < 1e-6


@pytest.mark.parametrize("flags", [{"src_mask": "causal", "is_causal": True}, {"src_mask": "causal"},
                                   {"is_causal": True}])
def test_the_nested_path_passes_every_argument_on(flags):
    """Kills: the nested-tensor path dropping src_mask or is_causal. A nested input is padded and run
    as the dense layer runs it with the padding as its mask: the same values at the real positions,
    or the same refusal."""
    torch.manual_seed(0)
    layer = admin.TransformerEncoderLayer(C, 2, 8, num_res_layers=4, dropout=0.0, batch_first=True).eval()
    T, lengths = 5, (5, 3)
    x = torch.randn(2, T, C)
    flags = {k: (torch.ones(T, T, dtype=torch.bool).triu(1) if v == "causal" else v) for k, v in flags.items()}
    padding = torch.arange(T) >= torch.tensor(lengths)[:, None]
    nested = torch.nested.nested_tensor([x[b, :n] for b, n in enumerate(lengths)])
    with torch.no_grad():
        dense = outcome(lambda: layer(x, src_key_padding_mask=padding, **flags))
        got = outcome(lambda: layer(nested, **flags))
    if isinstance(dense, type):
        assert got is dense and "src_mask" not in flags
    else:
        for b, n in enumerate(lengths):
            assert (got.unbind()[b] - dense[b, :n]).abs().max().item() < 1e-6, b


def test_q_k_and_v_read_by_one_input_are_one_weight_in_the_plan():
    """Kills: adjacent row ranges of one weight not joined (or joined across weights), or the whole
    weight left as rows 0:3C. Self-attention's W_Q, W_K and W_V all read x_{i-1}: the plan says
    in_proj_weight, whole; cross-attention's W_Q alone is rows 0:C (test_stock_layers)."""
    torch.manual_seed(0)
    layer = admin.TransformerEncoderLayer(C, 2, 8, num_res_layers=2, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.LayerNorm(C), nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))
    plan = admin.fold_plan(model, torch.randn(2, 3, C))
    assert [(s.residual, [str(r) for r in s.readers]) for s in plan] == [
        ("1.layers.0.res1", ["1.layers.0.self_attn.in_proj_weight"]),
        ("1.layers.0.res2", ["1.layers.0.linear1.weight"])]
    assert [str(r) for r in plan[0].producers] == ["0.weight", "0.bias"]


def test_a_plan_naming_a_tensor_the_model_lacks_is_refused_naming_it():
    """Kills: check_plan's refusals without their text (an unknown tensor; a tensor in two steps)."""
    model, x, scale = two_readers()
    [step] = admin.fold_plan(model, x, scale=scale)
    with pytest.raises(ValueError, match=r"^fold: the plan names 'n9\.weight', which the model does not have$"):
        admin.fold(model, x, plan=[step._replace(producers=(admin.Rows("n9.weight"),))], scale=scale)
    twice = step._replace(readers=(step.readers[0], step.readers[0]))
    with pytest.raises(ValueError, match=r"^fold: the plan lists 'a\.weight' among the readers of two steps, so ω "
                                         r"would be folded into it twice: give each stack its own embedding, "
                                         r"each sub-layer its own LayerNorm$"):
        admin.fold(model, x, plan=[twice], scale=scale)
