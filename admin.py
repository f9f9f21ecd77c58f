"""Admin: adaptive model initialization for Post-LN Transformers, in one file.

The problem. A Post-LN Transformer normalizes *after* each residual add,

    x_i = LN(x_{i-1} + f_i(x_{i-1}))                                   (Post-LN)

where i counts residual *sub-layers* (a self-attention and a feed-forward branch are two). At initialization
the shortcut and the branch have about the same variance, so every sub-layer leans on its own branch f_i by
about one half. A small parameter update then moves the output by O(n), n the number of sub-layers, and
deep Post-LN models fail early in training (in the paper's translation runs they diverged; on our toy they
get stuck at chance). Pre-LN (x_i = x_{i-1} + f_i(LN(x_{i-1}))) trains; in the paper's 18-layer
translation experiment it ended a little below Admin (the evidence: tutorial.md, Section 7).

The fix (Liu et al., 2020, Sec. 4). Scale each shortcut by ω_i,

    x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))                             (Admin)

with ω_i chosen once, at initialization, so that the output change is O(log n) (or O(1): that choice,
`output_change_scale`, is Admin's one setting). Nothing else changes, and after training ω can be folded
into the surrounding weights so the model is a plain Post-LN Transformer again (`reparameterize`).

Count sub-layers, not layers: an encoder or decoder-only layer has 2, a decoder layer with
cross-attention has 3, and each stack is counted on its own. For your own Post-LN layer:

    >>> import torch, admin
    >>> n_layers, d_model = 6, 8
    >>> residual = admin.as_module(num_res_layers=2 * n_layers)        # ω for n = 12 sub-layers
    >>> x, f_x = torch.randn(2, 5, d_model), torch.randn(2, 5, d_model)  # shortcut, branch output
    >>> y = torch.nn.functional.layer_norm(residual(x, f_x), (d_model,))  # LN(ω ⊙ x + f(x))
    >>> round(residual.omega.item(), 3)
    2.017

Or use the small causal Transformer below, profile ω on a batch, train, and fold ω away:

    >>> model = admin.PostLNTransformer(admin.TransformerConfig(vocab_size=12, n_layers=4))
    >>> omegas = admin.profile_omega(model, torch.randint(12, (8, 10)))   # one ω per sub-layer
    >>> len(omegas), omegas[0]
    (8, 1.0)
    >>> plain = admin.reparameterize(model)                             # vanilla Post-LN, same logits

Your own model works the same way: profile_omega(model, *inputs, stacks=[...]) sets every OmegaResidual
the forward pass meets; fold(model, *inputs) folds every ω, checks on those inputs that the outputs did
not move, and returns a state dict without ω, whose load_into(stock) loads and checks it in your unmodified
model. PyTorch's layers with ω: TransformerEncoderLayer and TransformerDecoderLayer (section 6), change the
class name and add num_res_layers. A Post-LN model that adds its residuals inline (Hugging Face's BERT,
BART, FSMT) gets ω from attach_omega(layers, norms), one call per stack (tutorial.md Section 14).

Tensor dimensions, used in shape comments: B batch, T sequence length, C d_model, V vocab_size.

Citation: Liyuan Liu, Xiaodong Liu, Jianfeng Gao, Weizhu Chen, Jiawei Han. Understanding the Difficulty
of Training Transformers. EMNLP 2020. arXiv:2004.08249.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------------
# 1. The value of ω
#
# With Var x = Var f = 1 a sub-layer's dependency share on its own branch is s = 1/(1 + ω²), and the
# output change after a small update is proportional to Σs over the n + 1 terms (embedding and n sub-layers):
# (n + 1) / (1 + ω²). Asking for that to be (n + 1)/2, ln(n + 1) or 1 gives the three formulas below,
# those of the admin-torch 0.1.0 package (which states them without this derivation; it is ours).
# ---------------------------------------------------------------------------------------------------


def omega_linear(n: int) -> float:
    """O(n) output change: ω = 1, i.e. plain Post-LN."""
    return 1.0


def omega_logarithmic(n: int) -> float:
    """O(log n) output change (the default): ω = sqrt((n + 1) / ln(n + 1) − 1)."""
    return ((n + 1) / math.log(n + 1) - 1) ** 0.5  # ** 0.5, as admin-torch: bit-identical values


def omega_constant(n: int) -> float:
    """O(1) output change: ω = sqrt(n)."""
    return n**0.5  # math.sqrt differs from ** 0.5 in the last bit for a few n (e.g. 2921)


OMEGA_FORMULAS: dict[str, Callable[[int], float]] = {
    "O(n)": omega_linear,
    "O(logn)": omega_logarithmic,
    "default": omega_logarithmic,
    "O(1)": omega_constant,
}


def omega_formula(output_change_scale: str) -> Callable[[int], float]:
    """The formula of ω(N) for a scale name; a ValueError naming the allowed ones for any other."""
    if output_change_scale not in OMEGA_FORMULAS:
        raise ValueError(f"output_change_scale must be one of {sorted(OMEGA_FORMULAS)}, "
                         f"got {output_change_scale!r}")
    return OMEGA_FORMULAS[output_change_scale]


def whole_number(value, name: str, meaning: str) -> int:
    """`value` as an int >= 1. Like admin-torch, accepts any integer type (NumPy's too) and integral
    floats such as 24.0; rejects bools, fractions, strings and values < 1."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        if value >= 1:
            return int(value)
    raise ValueError(f"{name} must be a whole number >= 1 ({meaning}), got {name}={value!r}")


def calculate_init(num_res_layers: int, output_change_scale: str = "O(logn)") -> float:
    """ω for a stack of N = `num_res_layers` residual sub-layers (2 × layers for attention + FFN).
    output_change_scale: "O(n)" (ω = 1), "O(logn)" or "default" (ω = sqrt((N+1)/ln(N+1) − 1)),
    or "O(1)" (ω = sqrt(N))."""
    n = whole_number(num_res_layers, "num_res_layers", "residual sub-layers, e.g. 2 * n_layers")
    return omega_formula(output_change_scale)(n)


def deepnorm_alpha(n_layers: int) -> float:
    """DeepNet's fixed shortcut scale, a relative of ω (Wang et al., 2022, for an encoder-only or
    decoder-only stack of N layers): α = (2N)^(1/4). N counts layers, where ω's n counts sub-layers."""
    return (2 * whole_number(n_layers, "n_layers", "layers in the stack")) ** 0.25


def deepnorm_beta(n_layers: int) -> float:
    """DeepNet's scale of the initial value, output and feed-forward weights, same stack: (8N)^(-1/4)."""
    return (8 * whole_number(n_layers, "n_layers", "layers in the stack")) ** -0.25


# ---------------------------------------------------------------------------------------------------
# 2. The ω residual: the shortcut of one sub-layer
# ---------------------------------------------------------------------------------------------------


def omega_scalar(value: float, *, device=None, dtype=None) -> Tensor:
    """ω as one fixed number, a tensor of shape (1,) that broadcasts over every feature: `value`, a
    float64, rounded once to dtype (default: torch's default dtype) on device."""
    if not (isinstance(value, numbers.Real) and math.isfinite(value)):
        raise ValueError(f"ω must be a finite number, got {value!r}")
    return torch.tensor([float(value)], device=device, dtype=dtype)


def omega_vector(value: float, embed_dim: int | None, *, device=None, dtype=None) -> nn.Parameter:
    """ω as a trainable vector, one entry per feature (C = embed_dim), each starting at `value`."""
    C = whole_number(embed_dim, "embed_dim", "the feature size; a trainable ω vector needs it")
    return nn.Parameter(omega_scalar(value, device=device, dtype=dtype).expand(C).clone())


class OmegaResidual(nn.Module):
    """The Admin shortcut ω_i ⊙ x_{i-1} + f_i(x_{i-1}); the LayerNorm that follows is the caller's.

    init_value: ω_i at initialization. as_parameter: False keeps ω a fixed scalar buffer (shape (1,));
    True makes it a trainable vector with one entry per feature, as the paper trains it, and then
    embed_dim (C) is required. device, dtype: where and in what ω is stored, as torch's factory keywords."""

    def __init__(self, init_value: float, as_parameter: bool = False, embed_dim: int | None = None, *,
                 device=None, dtype=None):
        super().__init__()
        if as_parameter:
            self.omega = omega_vector(init_value, embed_dim, device=device, dtype=dtype)
        else:
            self.register_buffer("omega", omega_scalar(init_value, device=device, dtype=dtype))

    def forward(self, x: Tensor, f_x: Tensor) -> Tensor:
        # ω_i ⊙ x_{i-1} + f_i(x_{i-1})
        return x * self.omega + f_x


class PlainResidual(nn.Module):
    """The vanilla shortcut x_{i-1} + f_i(x_{i-1}): ω = 1, and nothing stored."""

    def forward(self, x: Tensor, f_x: Tensor) -> Tensor:
        return x + f_x


def omega_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable ω of `model`, for an optimizer group without weight decay: ω starts far from 0
    on purpose, and decay pulls it there. A "no decay for biases and LayerNorm weights" rule that
    matches names misses ω; one that matches 1-D tensors (p.ndim < 2) already includes it."""
    return [m.omega for m in model.modules()
            if isinstance(m, OmegaResidual) and isinstance(m.omega, nn.Parameter)]


# ---------------------------------------------------------------------------------------------------
# 3. A small causal Transformer: Post-LN (vanilla, Admin or DeepNorm) and the Pre-LN baseline
# ---------------------------------------------------------------------------------------------------

RESIDUALS = ("admin", "vanilla", "preln", "deepnorm")


@dataclass
class TransformerConfig:
    """Sizes and the residual kind. residual: "admin" (Post-LN with ω), "vanilla" (Post-LN, ω = 1),
    "preln" (Pre-LN baseline) or "deepnorm" (Post-LN with DeepNet's fixed α and initial scale β_DN).
    For "admin", ω = calculate_init(2 * n_layers, output_change_scale), a trainable vector per
    sub-layer if omega_as_parameter (the paper), else a fixed scalar."""

    vocab_size: int = 16
    max_len: int = 64
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    n_layers: int = 6
    dropout: float = 0.0
    residual: str = "admin"
    output_change_scale: str = "O(logn)"
    omega_as_parameter: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "d_ff", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {self.residual!r}")
        omega_formula(self.output_change_scale)  # a known scale name, or a ValueError


class SubLayer(NamedTuple):
    """One residual sub-layer i, as the forward pass, profiling and reparameterization see it."""

    branch: Callable[[Tensor], Tensor]  # f_i
    shortcut: nn.Module  # (x, f_x) -> ω_i ⊙ x + f_x (OmegaResidual) or x + f_x (PlainResidual)
    norm: nn.LayerNorm  # Post-LN: after the add; Pre-LN: before the branch
    input_weight: Tensor  # the weight whose input columns read x_{i-1}: Q, K, V stacked, or linear1


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. Its parameters are named as in nn.MultiheadAttention
    (in_proj_weight holds W_Q, W_K, W_V stacked, (3C, C)), so its state_dict loads into one."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3C)
        q, k, v = qkv.view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, C/H)
        # softmax(q kᵀ / sqrt(C/H) + causal mask) v, each position attending to itself and the past
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class Block(nn.Module):
    """One layer: causal self-attention, then a ReLU feed-forward network, each a residual sub-layer.

    Post-LN ("admin", "vanilla", "deepnorm"): the LayerNorm comes after the residual add, and res1, res2
    scale the shortcut by ω (DeepNorm's ω: its fixed α). Pre-LN ("preln"): the LayerNorm comes before the
    branch. Names follow torch.nn.TransformerEncoderLayer, so a vanilla block's state_dict loads into one."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        C, p = config.d_model, config.dropout
        self.self_attn = CausalSelfAttention(C, config.n_heads, p)
        self.linear1, self.linear2 = nn.Linear(C, config.d_ff), nn.Linear(config.d_ff, C)
        self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(p), nn.Dropout(p), nn.Dropout(p)
        self.norm_first = config.residual == "preln"
        if config.residual == "admin":
            omega = calculate_init(2 * config.n_layers, config.output_change_scale)
            self.res1, self.res2 = (OmegaResidual(omega, config.omega_as_parameter, C) for _ in range(2))
        elif config.residual == "deepnorm":  # DeepNet: x_i = LN(α x_{i-1} + f_i(x_{i-1})), α fixed
            alpha = deepnorm_alpha(config.n_layers)
            self.res1, self.res2 = OmegaResidual(alpha), OmegaResidual(alpha)
        else:
            self.res1, self.res2 = PlainResidual(), PlainResidual()

    def attention(self, x: Tensor) -> Tensor:
        return self.dropout1(self.self_attn(x))  # (B, T, C)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))  # (B, T, C)

    @torch.no_grad()
    def scale_branch_weights(self, beta: float) -> None:
        """DeepNet's initial scale: V (the last third of Q, K, V), the output projection and both
        feed-forward weights times beta; Q and K untouched."""
        C = self.linear1.in_features
        for w in (self.self_attn.in_proj_weight[2 * C:], self.self_attn.out_proj.weight,
                  self.linear1.weight, self.linear2.weight):
            w.mul_(beta)

    def sublayers(self) -> list[SubLayer]:
        """forward's two sub-layers as data, for profiling and the fold (a test checks they agree)."""
        return [SubLayer(self.attention, self.res1, self.norm1, self.self_attn.in_proj_weight),
                SubLayer(self.feed_forward, self.res2, self.norm2, self.linear1.weight)]

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            # Pre-LN: x_i = x_{i-1} + f_i(LN(x_{i-1}))
            x = x + self.attention(self.norm1(x))
            return x + self.feed_forward(self.norm2(x))
        # Post-LN: x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))   (vanilla: ω_i = 1)
        x = self.norm1(self.res1(x, self.attention(x)))
        return self.norm2(self.res2(x, self.feed_forward(x)))


class PostLNTransformer(nn.Module):
    """A small causal language model: token + learned position embeddings, n_layers Blocks, and a linear
    head. forward(idx (B, T) of token ids) returns logits (B, T, V), batch first. Every linear map (Q, K and
    V each on its own) starts Xavier-uniform with a zero bias: with PyTorch's smaller default init the
    branches start weak, and the depth effect this file is about is muted."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model) if config.residual == "preln" else nn.Identity()
        self.head = nn.Linear(config.d_model, config.vocab_size)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, CausalSelfAttention):
                for w in module.in_proj_weight.chunk(3):  # Q, K, V: (C, C) each
                    nn.init.xavier_uniform_(w)
        if config.residual == "deepnorm":  # DeepNet's β_DN, once, after the draws: the same random numbers
            for block in self.blocks:
                block.scale_branch_weights(deepnorm_beta(config.n_layers))

    def sublayers(self) -> list[SubLayer]:
        """All residual sub-layers in order: i = 1 … 2 * n_layers."""
        return [s for block in self.blocks for s in block.sublayers()]

    def embed(self, idx: Tensor) -> Tensor:
        """x_0 = token embedding + position embedding, (B, T) -> (B, T, C)."""
        T = idx.size(1)
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={self.config.max_len}")
        return self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))

    def hidden(self, idx: Tensor) -> Tensor:
        """The last layer's output, what the head reads: (B, T) -> (B, T, C)."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.hidden(idx))  # (B, T, V)


# ---------------------------------------------------------------------------------------------------
# 4. Profiled ω: the paper's adaptive initialization from one forward pass
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_pass(model: nn.Module):
    """For a measuring pass: eval mode (dropout off) and torch's attention fast path off, so that
    nn.TransformerEncoder keeps a padded batch dense, as in training; both restored after, each
    sub-module's mode as it was (a frozen part kept in eval mode stays there)."""
    modes, fast_path = {m: m.training for m in model.modules()}, torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        for m, training in modes.items():
            m.training = training


def hooked_pass(model: nn.Module, hooks: list, inputs: tuple, kwargs: dict) -> None:
    """One eval_pass of model(*inputs, **kwargs) for the hooks to watch; they are removed after it, always."""
    try:
        with eval_pass(model):
            model(*inputs, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()


def refuse_wrapped(model: nn.Module, who: str) -> None:
    """A DDP, FSDP or torch.compile wrapper hides or copies the modules whose ω is set or folded:
    refuse it, naming the module inside to pass instead."""
    inner = {"DistributedDataParallel": "module", "FullyShardedDataParallel": "module",
             "DataParallel": "module", "OptimizedModule": "_orig_mod"}.get(type(model).__name__)
    if inner is not None:
        raise ValueError(f"{who}: got a {type(model).__name__} wrapper; call it on the model inside "
                         f"(model.{inner}) before wrapping, so the wrapper sees the final ω")


def called_twice_message(who: str, name: str) -> str:
    """Why an OmegaResidual may be met twice in one pass, for profile_omega's and fold's refusal."""
    return (f"{who}: OmegaResidual {name!r} was called twice in one forward pass. Each residual must "
            "be one sub-layer, met once: a layer shared by two places (tied layers, ALBERT-style), "
            "activation checkpointing that reruns the forward, or a feed-forward run in chunks (Hugging "
            "Face's chunk_size_feed_forward > 0) does this; run the pass without them")


@torch.no_grad()
def profile_omega(model: nn.Module, *inputs, stacks: list[nn.Module] | None = None, **kwargs) -> list[float]:
    """Set every OmegaResidual of `model` from one forward pass, model(*inputs, **kwargs); return the
    values in the order the pass called the residuals (one per sub-layer).

    Within a stack, a running ratio r starts at 1 and each residual, called with (x_{i-1}, f_i(x_{i-1})), gets
        ω_i = r,   then   r ← sqrt(Var[ω_i ⊙ x_{i-1}] + Var[f_i(x_{i-1})]),
    variances over all elements (population variance). Since x_{i-1} is a LayerNorm output,
    ω_i² ≈ Var[x_0] + Σ_{j<i} Var[f_j] from i = 2 on: each ω grows by the variance earlier branches add.
    stacks: sub-modules that keep their own ratio, e.g. [model.encoder, model.decoder] (each stack
    counts its own sub-layers, as the paper's code does); default: the whole model is one stack.
    Dropout is off while profiling (our choice: it would inflate Var f); the train/eval mode is restored.
    Variances count padding too, as the paper's code does; to leave it out, profile equal-length sequences.
    Profile before wrapping (wrappers are refused; DDP's constructor copies rank 0's ω to every rank, after
    it nothing does) and before building the optimizer (float32 master weights would write old ω back)."""
    refuse_wrapped(model, "profile_omega")
    names = {m: name for name, m in model.named_modules() if isinstance(m, OmegaResidual)}
    if not names:
        raise ValueError(f"profile_omega: {type(model).__name__} has no OmegaResidual to profile")
    stacks = stacks or [model]
    stack_of = {}  # residual -> index of its stack
    for k, stack in enumerate(stacks):
        for m in stack.modules():
            if isinstance(m, OmegaResidual) and stack_of.setdefault(m, k) != k:
                raise ValueError(f"profile_omega: an OmegaResidual is in stacks {stack_of[m]} and {k}")
    outside = [name for m, name in names.items() if m not in stack_of]
    if outside:
        raise ValueError(f"profile_omega: OmegaResidual {outside[0]!r} is outside every given stack")
    ratio, omegas, called = [1.0] * len(stacks), [], set()

    def set_omega(residual: OmegaResidual, args: tuple, kwargs: dict) -> None:
        named = {**dict(zip(("x", "f_x"), args)), **kwargs}  # forward(x, f_x), however it was called
        x, f_x = named["x"], named["f_x"]
        if residual in called:
            raise ValueError(called_twice_message("profile_omega", names[residual]))
        called.add(residual)
        k = stack_of[residual]
        r = ratio[k]
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"profile_omega: ω would be {r} at residual number {len(omegas) + 1} of the "
                             "pass: the earlier shortcut and branch outputs do not vary (or are not finite)")
        residual.omega.fill_(r)  # ω_i = r
        # r ← sqrt(Var[ω_i ⊙ x_{i-1}] + Var[f_i(x_{i-1})])
        ratio[k] = math.sqrt(torch.var(r * x, correction=0).item() + torch.var(f_x, correction=0).item())
        omegas.append(r)

    hooked_pass(model, [m.register_forward_pre_hook(set_omega, with_kwargs=True) for m in names],
                inputs, kwargs)
    never = [name for m, name in names.items() if m not in called]
    if never:
        raise ValueError(f"profile_omega: OmegaResidual {never[0]!r} was never called by the forward pass")
    return omegas


# ---------------------------------------------------------------------------------------------------
# 5. Reparameterization: fold ω away, back to a plain Post-LN Transformer
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def fold_omega(omega: Tensor, producers: list[Tensor], readers: list[Tensor]) -> None:
    """Fold the ω_i of one sub-layer into its neighbours, in place, so its shortcut needs no ω.

    omega: ω_i, shape (C,) or (1,). producers: the tensors that make x_{i-1}, each with C last — a
    LayerNorm's weight γ and bias b (x_{i-1} = γ ⊙ u + b), or the embedding tables (V, C) that sum to x_0;
    each is multiplied by ω_i, so they make ω_i ⊙ x_{i-1}. readers: the weight matrices (out, C) in branch
    i that read x_{i-1} — Q, K and V of self-attention, only Q of cross-attention (K and V read the
    encoder's output), the first linear of a feed-forward network: W' = W · diag(1/ω_i), their input
    columns divided by ω_i.

    Exact when x_{i-1} is read only by sub-layer i (its shortcut and the readers) and the readers' biases
    are left alone; LayerNorm's eps is untouched, since only its affine output changes. Then set ω_i to 1.
    What breaks it: an embedding tied to the output layer (untie it: give the head its own copy); positions
    computed on the fly (sinusoids: store them as a buffer and pass it as a producer, or keep ω_1 as one
    multiply on the embedding)."""
    omega = omega.detach().reshape(-1)
    zeros = (omega == 0).nonzero().flatten().tolist()
    if zeros:
        raise ValueError(f"cannot fold ω: its entry {zeros[0]} is zero (ω must be non-zero)")
    C = omega.numel()
    for kind, tensors in (("producer", producers), ("reader", readers)):
        for t in tensors:
            if t.dim() == 0 or (C != 1 and t.shape[-1] != C):
                raise ValueError(f"{kind} of shape {tuple(t.shape)} does not match ω of {C} features "
                                 f"(its last dimension must be {C})")
    for t in producers:
        t.mul_(omega.to(t.dtype))  # the producer now makes ω_i ⊙ x_{i-1}
    for W in readers:
        W.div_(omega.to(W.dtype))  # W' = W · diag(1/ω_i), broadcast over the rows


@torch.no_grad()
def reparameterize(model: PostLNTransformer) -> PostLNTransformer:
    """A new "vanilla" model, with no ω, whose logits equal the Admin (or DeepNorm: its α is a constant
    ω) model's; `model` is unchanged. Sub-layer i reads x_{i-1}, made by the embeddings (i = 1) or by
    sub-layer i − 1's LayerNorm, and nothing else reads it: fold_omega applies, with the sub-layer's
    input_weight as reader."""
    residual = getattr(getattr(model, "config", None), "residual", None)
    if not isinstance(model, PostLNTransformer) or residual not in ("admin", "deepnorm"):
        raise ValueError(f"reparameterize needs a PostLNTransformer with residual='admin' (or "
                         f"'deepnorm', whose α folds as a constant ω), got {type(model).__name__} "
                         f"with residual={residual!r}")
    omega_keys = {f"{name}.omega" for name, m in model.named_modules() if isinstance(m, OmegaResidual)}
    with torch.device("meta"):  # no memory and no random numbers spent on a throw-away init
        plain = PostLNTransformer(replace(model.config, residual="vanilla"))
    state = {k: v.clone() for k, v in model.state_dict().items() if k not in omega_keys}
    plain.load_state_dict(state, strict=True, assign=True)
    plain.train(model.training)

    producers = [(plain.tok_emb.weight, plain.pos_emb.weight)]
    producers += [(s.norm.weight, s.norm.bias) for s in plain.sublayers()[:-1]]
    pairs = zip(model.sublayers(), plain.sublayers(), producers, strict=True)
    for i, (old, new, made_by) in enumerate(pairs, 1):
        try:
            fold_omega(old.shortcut.omega, made_by, [new.input_weight])
        except ValueError as error:
            raise ValueError(f"cannot fold sub-layer {i}: {error}") from None
    return plain


# ---------------------------------------------------------------------------------------------------
# 6. PyTorch's own layers with ω: change the class name, keep every argument
#
# Both lean on torch's private branch methods _sa_block, _mha_block and _ff_block (each returns
# f_i(x_{i-1}) with its dropout), so the masks, is_causal, activation and batch_first behave exactly as in
# torch's layers; the encoder also on F._canonical_mask (its layer's mask conversion) and on
# torch._nested_tensor_from_tensor_list (torch.nested.as_nested_tensor's, which TorchScript can call).
# .ci/torch-range runs their tests at both ends of our torch range.
# ---------------------------------------------------------------------------------------------------


def post_ln_shortcuts(layer: nn.Module, count: int, num_res_layers: int, output_change_scale: str,
                      trainable: bool) -> list[OmegaResidual]:
    """The `count` ω residuals of one of torch's layers, on its device and in its dtype (torch's device=
    and dtype= hold for ω too); a Pre-LN layer (norm_first=True) refused."""
    if layer.norm_first:
        raise ValueError(f"{type(layer).__name__}: norm_first=True builds Pre-LN, and Admin scales Post-LN "
                         "shortcuts: use norm_first=False (torch's default)")
    w, omega = layer.linear1.weight, calculate_init(num_res_layers, output_change_scale)
    return [OmegaResidual(omega, trainable, w.size(1), device=w.device, dtype=w.dtype) for _ in range(count)]


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """torch.nn.TransformerEncoderLayer, Post-LN, with Admin's ω on both shortcuts:

        x = LN(ω_1 ⊙ x + SelfAttention(x)),   then   x = LN(ω_2 ⊙ x + FFN(x))

    Takes torch's arguments, plus (keyword-only) num_res_layers: the sub-layers of the whole stack, 2 per
    encoder layer, for calculate_init; output_change_scale as there; as_parameter: True (default) for the
    paper's trainable vector ω, False for admin-torch's fixed scalar. The state dict is torch's plus
    res1.omega and res2.omega: once fold() has folded ω, the rest loads with strict=True into torch's layer.
    A nested input (nn.TransformerEncoder's eval path with a padding mask) is run padded. What cannot hold:
    torch's fused fast path (torch._transformer_encoder_layer_fwd, eval without gradients) is never taken,
    since ω sits between its operations; the composite path gives the same values to rounding, except that a
    row whose keys are all masked may be NaN in one and finite in the other, and torch's fused kernel gives
    NaN under a float src_mask with finite entries (2.13, CPU)."""

    def __init__(self, *args, num_res_layers: int, output_change_scale: str = "default",
                 as_parameter: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.res1, self.res2 = post_ln_shortcuts(self, 2, num_res_layers, output_change_scale, as_parameter)

    def forward(self, src: Tensor, src_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if src.is_nested:  # batch-first, its padding its own: a second padding mask would go unread
            if src_key_padding_mask is not None or not self.self_attn.batch_first:
                raise ValueError("a nested input needs batch_first=True and src_key_padding_mask=None, got "
                                 f"batch_first={self.self_attn.batch_first}, a mask: {src_key_padding_mask is not None}")
            return self._nested_forward(src, src_mask, is_causal)
        return self._post_ln(src, src_mask, src_key_padding_mask, is_causal)

    def _post_ln(self, x: Tensor, src_mask: Tensor | None, src_key_padding_mask: Tensor | None,
                 is_causal: bool) -> Tensor:
        # masks converted (bool to float) as torch's layer does, so a fully masked row gives what it gives
        src_key_padding_mask = F._canonical_mask(src_key_padding_mask, "src_key_padding_mask",
                                                 F._none_or_dtype(src_mask), "src_mask", x.dtype)
        src_mask = F._canonical_mask(src_mask, "src_mask", None, "", x.dtype, check_other=False)
        # Post-LN with ω: x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))
        x = self.norm1(self.res1(x, self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal)))
        return self.norm2(self.res2(x, self._ff_block(x)))

    def _nested_forward(self, src: Tensor, src_mask: Tensor | None, is_causal: bool) -> Tensor:
        """ω ⊙ x needs a dense tensor: pad, mask the padding, run, nest again, autograd kept throughout."""
        lengths = [t.size(0) for t in src.unbind()]
        x = src.to_padded_tensor(0.0)  # (B, T, C)
        padding = torch.arange(x.size(1), device=x.device) >= torch.tensor(lengths, device=x.device)[:, None]
        y = self._post_ln(x, src_mask, padding, is_causal)  # padding: (B, T), True where padded
        return torch._nested_tensor_from_tensor_list([y[b, :n] for b, n in enumerate(lengths)])


class TransformerDecoderLayer(nn.TransformerDecoderLayer):
    """torch.nn.TransformerDecoderLayer, Post-LN, with Admin's ω on its three shortcuts:

        y = LN(ω_1 ⊙ y + SelfAttention(y)),  y = LN(ω_2 ⊙ y + CrossAttention(y, memory)),
        y = LN(ω_3 ⊙ y + FFN(y))

    Arguments as TransformerEncoderLayer's; num_res_layers counts 3 per decoder layer. Cross-attention's
    ω folds into W_Q alone (fold_omega): W_K and W_V read memory, which carries no ω of this stack."""

    def __init__(self, *args, num_res_layers: int, output_change_scale: str = "default",
                 as_parameter: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.res1, self.res2, self.res3 = post_ln_shortcuts(self, 3, num_res_layers, output_change_scale,
                                                            as_parameter)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> Tensor:
        # Post-LN with ω, three times: x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))
        x = self.norm1(self.res1(tgt, self._sa_block(tgt, tgt_mask, tgt_key_padding_mask, tgt_is_causal)))
        x = self.norm2(self.res2(x, self._mha_block(x, memory, memory_mask, memory_key_padding_mask,
                                                    memory_is_causal)))
        return self.norm3(self.res3(x, self._ff_block(x)))


# ---------------------------------------------------------------------------------------------------
# 7. Any Post-LN model: ω on the shortcuts its layers add inline, and a fold that checks itself
# ---------------------------------------------------------------------------------------------------

# The fold is exact in exact arithmetic, so in float64 only rounding moves the outputs: 2⁻⁵³ ≈ 1.1e-16
# per operation, accumulated over at most a few thousand operations per output and renormalized by
# every LayerNorm, so below about 1e-12 (tutorial.md Section 13 measured 6e-16 on our toy). A wrong
# plan moves them by about |ω − 1| times the share of the weight it missed or added: 1e-3 to 1e-1 in
# our tests and on BERT, whose trained ω sit within 2% of 1. 1e-9 lies between the two.
FOLD_BOUND = 1e-9

NORMS = (nn.LayerNorm, nn.RMSNorm)  # the producers a trace recognizes: x_{i-1} = γ ⊙ u (+ b)


class InlineShortcuts:
    """attach_omega's hooks on one layer: bound methods, so copy.deepcopy(model) rebinds them to the copy."""

    def __init__(self, names: list[str], norms: list[nn.Module]):
        self.names, self.norms, self.x, self.next = names, norms, None, len(norms)

    def enter(self, layer: nn.Module, args: tuple, kwargs: dict) -> None:
        self.x, self.next = [*args, *kwargs.values()][0], 0  # the first sub-layer's x: the layer's input

    def before_norm(self, norm: nn.Module, args: tuple) -> tuple[Tensor]:
        name, due = self.names[self.norms.index(norm)], (self.names + ["none"])[self.next]
        if name != due:
            raise ValueError(f"attach_omega: norm {name!r} was called where {due!r} was due: each of "
                             f"{self.names} must be called once per pass of its layer, in that order")
        if args[0] is self.x:
            raise ValueError(f"attach_omega: norm {name!r} reads the layer's input x itself, not x + f(x): "
                             "that is Pre-LN, whose shortcut Admin does not scale; name Post-LN norms only")
        # Post-LN with ω: the norm's input s = x + f(x) becomes ω ⊙ x + (s − x)
        return (norm.residual(self.x, args[0] - self.x),)

    def after_norm(self, norm: nn.Module, args: tuple, output: Tensor) -> None:
        self.x, self.next = output, self.next + 1  # the next sub-layer's input x

    def leave(self, layer: nn.Module, args: tuple, output) -> None:
        if self.next < len(self.norms):
            raise ValueError(f"attach_omega: a pass of {type(layer).__name__} did not call norm "
                             f"{self.names[self.next]!r}: each of {self.names} must be called once per pass")
        self.x = None


def attach_omega(layers: nn.ModuleList | list[nn.Module], norms: list[str], *, fixed_first: bool = False,
                 output_change_scale: str = "default", **options) -> list[OmegaResidual]:
    """ω on every shortcut of a stack of Post-LN layers that add it inline, norm(x + f(x)), their forward
    untouched. norms: each layer's Post-LN norms in call order, e.g. ["self_attn_layer_norm",
    "final_layer_norm"] for Hugging Face BART's encoder layers. A pre-hook rewrites a norm's input
    s = x + f(x) as ω ⊙ x + (s − x), x being the layer's input, then the previous norm's output; the
    OmegaResidual sits on the norm (<norm>.residual), where profile_omega and fold find it.
    ω = calculate_init(len(layers) * len(norms), output_change_scale); options: as_parameter (True),
    embed_dim, as OmegaResidual's. fixed_first: the stack's first ω stays 1 (a buffer), so nothing folds
    into tied or regenerated embeddings. Refused: a name that is no norm; norms out of order or not once
    per layer pass; a Pre-LN first norm. Not checked: that the layer adds this x."""
    layers, residuals = list(layers), []
    if isinstance(norms, str) or not norms or len(set(norms)) < len(norms):
        raise ValueError(f"attach_omega: norms must list a layer's Post-LN norms once each, got {norms!r}")
    omega = calculate_init(len(layers) * len(norms), output_change_scale)
    for layer in layers:
        modules = dict(layer.named_modules())
        have = [name for name, m in modules.items() if isinstance(m, NORMS) and not hasattr(m, "residual")]
        if not set(norms) <= set(have):
            raise ValueError(f"attach_omega: {next(n for n in norms if n not in have)!r} is no LayerNorm or "
                             f"RMSNorm without ω of {type(layer).__name__}; those it has: {have}")
        hooks = InlineShortcuts(list(norms), [modules[name] for name in norms])
        layer.register_forward_pre_hook(hooks.enter, with_kwargs=True)
        layer.register_forward_hook(hooks.leave)
        for norm in hooks.norms:
            norm.residual = (OmegaResidual(1.0) if fixed_first and not residuals else OmegaResidual(
                omega, **{"as_parameter": True, "embed_dim": norm.normalized_shape[-1], **options})
                             ).to(next(layer.parameters(), torch.empty(0)))  # the layer's dtype and device
            norm.register_forward_pre_hook(hooks.before_norm)
            norm.register_forward_hook(hooks.after_norm)
            residuals.append(norm.residual)
    return residuals


class Rows(NamedTuple):
    """Rows start:stop of the model's tensor `name` (its state-dict name); stop None: all of them."""

    name: str
    start: int = 0
    stop: int | None = None

    def __str__(self) -> str:
        return self.name if self.stop is None else f"{self.name}[{self.start}:{self.stop}]"


class FoldStep(NamedTuple):
    """One sub-layer's fold, as fold_omega takes it: the residual, the producers and readers of x_{i-1}."""

    residual: str  # the OmegaResidual's module name
    producers: tuple[Rows, ...]
    readers: tuple[Rows, ...]


def storage_key(t: Tensor) -> tuple:
    """Tensors with the same key are the same values: same memory, offset, shape and strides."""
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()


def reader_inputs(module: nn.Module, name: str, args: tuple, kwargs: dict) -> list[tuple[Tensor, Rows]]:
    """(input, the weight rows that read it) for a module call a trace watches: nn.Linear,
    nn.MultiheadAttention (W_Q reads the query, W_K the key, W_V the value) and CausalSelfAttention."""
    if isinstance(module, nn.MultiheadAttention):
        roles = ("query", "key", "value")
        named, E = {**dict(zip(roles, args)), **kwargs}, module.embed_dim
        if module.in_proj_weight is not None:  # Q, K, V stacked: rows 0:E, E:2E, 2E:3E
            return [(named[role], Rows(f"{name}.in_proj_weight", j * E, (j + 1) * E))
                    for j, role in enumerate(roles)]
        return [(named[role], Rows(f"{name}.{role[0]}_proj_weight")) for role in roles]  # kdim, vdim != E
    weight = "weight" if isinstance(module, nn.Linear) else "in_proj_weight"
    return [(args[0] if args else kwargs["input"], Rows(f"{name}.{weight}"))]


class Trace:
    """What one eval pass model(*inputs, **kwargs) shows: the shortcut input x of each OmegaResidual
    in call order, the norm that made each tensor, and the weights that read it. Tensors are matched
    by storage_key, and every traced tensor is kept, so no later tensor reuses its memory and key."""

    def __init__(self, model: nn.Module, inputs: tuple, kwargs: dict):
        self.names = {m: name for name, m in model.named_modules()}
        self.made_by: dict[tuple, tuple[str, tuple[Rows, ...]]] = {}  # key -> (norm's name, γ and b)
        self.read_by: dict[tuple, list[Rows]] = {}  # key -> the weight rows that read it
        self.calls: list[tuple[OmegaResidual, tuple]] = []  # (residual, key of its x), in call order
        self.kept: list[Tensor] = []
        readers = (nn.Linear, nn.MultiheadAttention, CausalSelfAttention)  # the modules reader_inputs knows
        hooks = [m.register_forward_hook(self.norm) for m in self.names if isinstance(m, NORMS)]
        hooks += [m.register_forward_pre_hook(self.reader, with_kwargs=True) for m in self.names
                  if isinstance(m, readers)]
        hooks += [m.register_forward_pre_hook(self.residual, with_kwargs=True) for m in self.names
                  if isinstance(m, OmegaResidual)]
        hooked_pass(model, hooks, inputs, kwargs)

    def norm(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.kept.append(output)
        affine = tuple(Rows(f"{self.names[module]}.{p}") for p in ("weight", "bias")
                       if getattr(module, p, None) is not None)
        self.made_by[storage_key(output)] = (self.names[module], affine)

    def reader(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        for t, rows in reader_inputs(module, self.names[module], args, kwargs):
            self.kept.append(t)
            self.read_by.setdefault(storage_key(t), []).append(rows)

    def residual(self, module: OmegaResidual, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["x"]  # forward(x, f_x), maybe called by keyword
        if any(module is m for m, _ in self.calls):
            raise ValueError(called_twice_message("fold", self.names[module]))
        self.kept.append(x)
        self.calls.append((module, storage_key(x)))


def state_names(model: nn.Module) -> dict[tuple, list[str]]:
    """storage_key -> every state-dict name of that tensor (two or more: tied)."""
    names = {}
    for name, t in model.state_dict().items():
        names.setdefault(storage_key(t), []).append(name)
    return names


def stack_inputs(model: nn.Module, trace: Trace, embeddings: dict[nn.Module, list[Tensor]]) -> dict:
    """The first residual the pass called in each stack -> the Rows of the tensors that sum to x_0."""
    names, first_of = state_names(model), {}
    for stack, tensors in embeddings.items():
        inside = [m for m, _ in trace.calls if any(m is s for s in stack.modules())]
        if not inside:
            raise ValueError(f"fold: embeddings were given for a {type(stack).__name__} in which the "
                             "pass called no OmegaResidual")
        for t in tensors:
            if storage_key(t) not in names:
                raise ValueError(f"fold: an embeddings tensor of shape {tuple(t.shape)} is no parameter or "
                                 "buffer of the model (pass whole tables, not slices), so ω cannot fold "
                                 "into it: store positions computed on the fly (sinusoids) as a buffer")
            name = names[storage_key(t)][0]
            owner = model.get_submodule(name.rpartition(".")[0])
            if isinstance(owner, nn.Embedding) and type(owner).forward is not nn.Embedding.forward:
                raise ValueError(f"fold: a {type(owner).__name__} reads {name!r} with a forward of its own, "
                                 "which may compute the table again (FSMT's and Marian's sinusoids do, for a "
                                 "longer input), dropping the ω folded into it. Train with the stack's first ω "
                                 "at 1 (attach_omega's fixed_first=True): nothing folds into the embeddings then")
        first_of[inside[0]] = tuple(Rows(names[storage_key(t)][0]) for t in tensors)
    return first_of


def merged_rows(rows: list[Rows], model: nn.Module) -> tuple[Rows, ...]:
    """Each weight once, in call order; adjacent row ranges of one weight joined (Q, K, V → all)."""
    state, out = model.state_dict(), []
    for r in dict.fromkeys(rows):
        if out and out[-1].name == r.name and out[-1].stop == r.start:
            r = Rows(r.name, out.pop().start, r.stop)
        out.append(Rows(r.name) if (r.start, r.stop) == (0, len(state[r.name])) else r)
    return tuple(out)


@torch.no_grad()
def fold_plan(model: nn.Module, *inputs, embeddings: dict[nn.Module, list[Tensor]] | None = None,
              **kwargs) -> list[FoldStep]:
    """Where every ω of `model` folds, read off one eval pass model(*inputs, **kwargs).

    For each OmegaResidual, as the pass calls it with (x_{i-1}, f_i): the producers of x_{i-1} are the
    weight γ and bias b of the LayerNorm (or RMSNorm) whose output it is, or, for the input x_0 of a
    stack, the tensors that sum to it. embeddings: {stack: [those tensors]}, a stack being the module
    that holds the residuals, e.g. {model: [tok_emb.weight, pos_emb.weight]}, or one entry each for
    an encoder and a decoder. The readers: the weight rows that reader_inputs finds reading x_{i-1}.
    A residual whose ω is all ones has nothing to fold and gets no step."""
    refuse_wrapped(model, "fold")
    if not any(isinstance(m, OmegaResidual) for m in model.modules()):
        raise ValueError(f"fold: {type(model).__name__} has no OmegaResidual to fold")
    trace = Trace(model, inputs, kwargs)
    first_of, plan = stack_inputs(model, trace, embeddings or {}), []
    for residual, key in trace.calls:
        name = trace.names[residual]
        if torch.all(residual.omega == 1):
            continue  # ω = 1: a plain shortcut already
        if key in trace.made_by:
            norm, producers = trace.made_by[key]
            if not producers:
                raise ValueError(f"fold: the norm {norm!r} before {name!r} has no weight to fold ω into: "
                                 "build it with elementwise_affine=True")
        elif residual in first_of:
            producers = first_of[residual]
        else:
            raise ValueError(
                f"fold: the shortcut input x of {name!r} is no LayerNorm's output and its ω is not 1. If it "
                "is a stack's input x_0, pass embeddings={stack: [the tensors that sum to x_0]} or train "
                "with that ω at 1 (attach_omega's fixed_first=True); if an operation between the LayerNorm "
                "and this sub-layer changes x, ω cannot be folded there; else pass x first: forward(x, f_x)")
        readers = merged_rows(trace.read_by.get(key, []), model)
        if not readers:
            raise ValueError(f"fold: no nn.Linear, nn.MultiheadAttention or CausalSelfAttention reads the "
                             f"input of {name!r}; fold it with fold_omega and your own readers")
        plan.append(FoldStep(name, producers, readers))
    return plan


def check_plan(model: nn.Module, plan: list[FoldStep]) -> None:
    """Refuse, before any work, a plan that names a residual or tensor the model does not have, folds
    one residual twice, scales one tensor in two steps, or scales a tensor tied to another."""
    state, tied_names = model.state_dict(), state_names(model)
    residuals = {name for name, m in model.named_modules() if isinstance(m, OmegaResidual)}
    folded = [step.residual for step in plan]
    for name in folded:
        if name not in residuals:
            raise ValueError(f"fold: the plan folds {name!r}, which is no OmegaResidual of the model")
        if folded.count(name) > 1:
            raise ValueError(f"fold: the plan folds {name!r} twice: its ω would be applied twice")
    named = [rows.name for step in plan for rows in (*step.producers, *step.readers)]
    if any(name not in state for name in named):
        raise ValueError(f"fold: the plan names {next(n for n in named if n not in state)!r}, which the model "
                         "does not have")
    path = lambda name: "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in name.split("."))
    groups = [g for g in dict.fromkeys(tuple(tied_names[storage_key(state[n])]) for n in named) if len(g) > 1]
    untie = "".join(f"    model{path(n)} = nn.Parameter(model{path(g[0])}.detach().clone())\n"
                    for g in groups for n in g[1:])
    if untie:  # every tie at once, with the lines that undo it
        raise ValueError(f"fold: {', '.join(groups[0])} are one tensor, so ω would change each. Untie every tie "
                         f"(model: the one you fold):\n{untie}then load the result into a model built untied (one "
                         "built tied writes one folded table over another), or train with each stack's first ω "
                         "at 1 (attach_omega's fixed_first=True)")
    for kind in ("producers", "readers"):
        used = [str(rows) for step in plan for rows in getattr(step, kind)]
        again = sorted({r for r in used if used.count(r) > 1})
        if again:
            raise ValueError(f"fold: the plan lists {again[0]!r} among the {kind} of two steps, so ω would "
                             "be folded into it twice: give each stack its own embedding, each sub-layer "
                             "its own LayerNorm")


def apply_plan(model: nn.Module, plan: list[FoldStep]) -> None:
    """fold_omega for every step, then ω_i = 1: the shortcut is plain x_{i-1} + f_i(x_{i-1})."""
    state = model.state_dict()

    def view(rows: Rows) -> Tensor:  # state_dict() shares the model's memory: fold_omega edits it in place
        return state[rows.name][rows.start:rows.stop]

    for step in plan:
        residual = model.get_submodule(step.residual)
        fold_omega(residual.omega, [view(r) for r in step.producers], [view(r) for r in step.readers])
        residual.omega.fill_(1.0)


def floating_tensors(value) -> list[Tensor]:
    """The floating-point tensors in an output: a tensor, or tuples, lists and dicts of them (a Hugging
    Face ModelOutput is a dict)."""
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [t for item in items for t in floating_tensors(item)]


def to_float64(value):
    """`value` with every floating-point tensor in float64 (token ids and bool masks stay)."""
    if isinstance(value, Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: to_float64(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_float64(v) for v in value)
    return value


def outputs_of(model: nn.Module, inputs: tuple, kwargs: dict) -> list[Tensor]:
    """The floating outputs of model(*inputs, **kwargs), refused if there are none or one is not finite."""
    out = model(*inputs, **kwargs)
    found = floating_tensors(out)
    if not found:
        raise ValueError(f"fold: the model returned no floating-point tensor to check (got {type(out).__name__}): "
                         "make it return its logits, or a tuple or dict of tensors")
    if not all(torch.isfinite(t).all() for t in found):
        raise ValueError("fold: the model's outputs on the example are not all finite, so no fold can be "
                         "checked on it: give inputs without a fully masked row")
    return found


def output_change(model: nn.Module, before: list[Tensor], inputs: tuple, kwargs: dict) -> float:
    """The largest, over the outputs, of max |now − before| / max |before|: each output on its scale."""
    now = floating_tensors(model(*inputs, **kwargs))
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
               for a, b in zip(now, before, strict=True))


def first_bad_step(model: nn.Module, plan: list[FoldStep], inputs: tuple, kwargs: dict) -> str:
    """Which step of a failed plan first moves the outputs, refolded step by step on a new copy."""
    copy64 = copy.deepcopy(model).double()
    with eval_pass(copy64):
        before = floating_tensors(copy64(*inputs, **kwargs))
        for i, step in enumerate(plan, 1):
            apply_plan(copy64, [step])
            if not output_change(copy64, before, inputs, kwargs) <= FOLD_BOUND:
                return (f"step {i} moves them first: {step.residual!r} with producers "
                        f"{', '.join(map(str, step.producers))} and readers "
                        f"{', '.join(map(str, step.readers))}")
    return "no single step moves them: the residuals not in the plan or the model's call do"


class Folded(NamedTuple):
    """What fold returns; load_into(stock) loads it into your unmodified model and checks it there."""

    state_dict: dict[str, Tensor]  # the model's, without ω (a copy): loads strictly without ω
    change: float  # the float64 check: how far the folded outputs moved, relative (<= FOLD_BOUND)
    example: tuple  # fold's example call: (inputs, kwargs)
    reference: list[Tensor]  # the outputs before the fold, on the example, float64
    bound: float  # load_into's: 10 × the model's own rounding on the example (its dtype vs float64)

    def load_into(self, stock: nn.Module) -> nn.Module:
        """state_dict loaded strictly into `stock`, checked: a ValueError unless it gives the outputs from
        before the fold on fold's example (a strict load can succeed and be wrong: tables tied again)."""
        stock.load_state_dict(self.state_dict, strict=True)
        with eval_pass(stock):
            gap = output_change(stock, self.reference, *self.example)
        if not gap <= self.bound:
            raise ValueError(f"load_into: {type(stock).__name__} with the folded weights moved fold's example by "
                             f"{gap:.1e} (relative; allowed {self.bound:.0e}): it loaded, and computes something "
                             "else. A model built with tied tables writes one folded table over another: build it "
                             "untied, or train with each stack's first ω at 1 (attach_omega's fixed_first=True)")
        return stock


@torch.no_grad()
def fold(model: nn.Module, *inputs, embeddings: dict[nn.Module, list[Tensor]] | None = None,
         plan: list[FoldStep] | None = None, **kwargs) -> Folded:
    """Fold every ω of `model` into the weights around it, set ω to 1, and check that nothing moved.

    inputs, kwargs: an example call model(*inputs, **kwargs), e.g. a batch with its masks, that reaches
    every sub-layer and every weight that reads one (one it never reaches, such as an expert the batch
    skips, is neither traced nor checked). embeddings: {stack: [the tensors that sum to its x_0]}, as
    fold_plan's; plan: fold_plan's unless given. The check: a float64 copy of the whole model is folded
    first; if a residual keeps ω ≠ 1, or the outputs on the example moved by more than FOLD_BOUND
    (relative), fold raises, names the first step that moves them, and leaves `model` as it was. Else
    `model` gets the copy's folded tensors, rounded once to its own dtype, and every ω = 1; the Folded it
    returns loads with strict=True into the model built without ω (torch's own classes, for section 6's)."""
    plan = fold_plan(model, *inputs, embeddings=embeddings, **kwargs) if plan is None else list(plan)
    check_plan(model, plan)
    inputs64, kwargs64 = to_float64(inputs), to_float64(kwargs)
    copy64 = copy.deepcopy(model).double()
    with eval_pass(copy64):
        try:
            before = outputs_of(copy64, inputs64, kwargs64)
        except RuntimeError as error:
            raise RuntimeError(f"fold: the model fails in float64, on the copy that checks the fold ({error}). "
                               "Give fold an example call that runs in float64 (Hugging Face FSMT: without "
                               "labels and use_cache=False). The model is unchanged") from error
        apply_plan(copy64, plan)
        change = output_change(copy64, before, inputs64, kwargs64)
    with eval_pass(model):  # the model's own rounding on the example, for load_into's bound
        rounding = output_change(model, before, inputs, kwargs)
    left = [name for name, m in copy64.named_modules()
            if isinstance(m, OmegaResidual) and not torch.all(m.omega == 1)]
    if left:
        raise ValueError(f"fold: OmegaResidual {left[0]!r} keeps ω ≠ 1 after the plan: the example pass "
                         "never called it (give inputs that reach every sub-layer) or the plan leaves it "
                         "out. The model is unchanged")
    if not change <= FOLD_BOUND:
        raise ValueError(f"fold: the folded outputs moved by {change:.1e} (relative), more than float64 "
                         f"rounding allows ({FOLD_BOUND:.0e}); {first_bad_step(model, plan, inputs64, kwargs64)}. "
                         "The model is unchanged")
    state, folded = model.state_dict(), copy64.state_dict()
    for name in {rows.name for step in plan for rows in (*step.producers, *step.readers)}:
        state[name].copy_(folded[name])  # one rounding to the model's dtype
    for step in plan:
        model.get_submodule(step.residual).omega.fill_(1.0)
    omega_keys = {f"{name}.omega" for name, m in model.named_modules() if isinstance(m, OmegaResidual)}
    return Folded({k: v.clone() for k, v in model.state_dict().items() if k not in omega_keys}, change,
                  (inputs, kwargs), before, max(10 * rounding, FOLD_BOUND))


# ---------------------------------------------------------------------------------------------------
# 8. The admin-torch 0.1.0 drop-in: its helper names (its calculate_init is section 1's)
# ---------------------------------------------------------------------------------------------------


def as_module(num_res_layers: int, output_change_scale: str = "default", as_parameter: bool = False,
              embed_dim: int | None = None) -> OmegaResidual:
    """An OmegaResidual initialized with calculate_init(num_res_layers, output_change_scale)."""
    omega = calculate_init(num_res_layers, output_change_scale)
    return OmegaResidual(omega, as_parameter=as_parameter, embed_dim=embed_dim)


def as_buffer(network: nn.Module, buffer_name: str, num_res_layers: int,
              output_change_scale: str = "default") -> Tensor:
    """Register ω as a fixed buffer (shape (1,)) on `network`; use it as `x * network.<name> + f_x`."""
    omega = calculate_init(num_res_layers, output_change_scale)
    network.register_buffer(buffer_name, omega_scalar(omega))
    return getattr(network, buffer_name)


# admin-torch's API names this function and as_module's keyword alike; defined last, called by no code here
def as_parameter(network: nn.Module, parameter_name: str, num_res_layers: int, embed_dim: int,
                 output_change_scale: str = "default") -> nn.Parameter:
    """Register ω as a trainable vector of size embed_dim on `network`, filled with calculate_init."""
    omega = calculate_init(num_res_layers, output_change_scale)
    network.register_parameter(parameter_name, omega_vector(omega, embed_dim))
    return getattr(network, parameter_name)
