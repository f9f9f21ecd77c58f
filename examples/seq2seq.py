"""Admin in your own model: a small Post-LN encoder–decoder built from torch parts and admin.py.

This is the code a user writes, not part of admin.py: Post-LN encoder and decoder layers whose
shortcuts are admin.OmegaResidual, profiled per stack with admin.profile_omega and folded sub-layer by
sub-layer with admin.fold_omega. Submodule names follow nn.TransformerEncoderLayer and
nn.TransformerDecoderLayer (norm_first=False, batch_first=True), so once ω is folded each layer's
state_dict, less its ω entries, loads into PyTorch's own layer. tutorial.md walks through it; the
tests check every step, and run this example:

    >>> import torch, admin
    >>> from examples.seq2seq import Seq2Seq, fold
    >>> model = Seq2Seq(vocab_size=12, d_model=32, n_heads=4, d_ff=64, n_encoder=2, n_decoder=2)
    >>> src, tgt = torch.randint(12, (8, 10)), torch.randint(12, (8, 9))  # token ids (B, S), (B, T)
    >>> stacks = [model.encoder, model.decoder]  # each stack counts its own sub-layers
    >>> omegas = admin.profile_omega(model, src, tgt, stacks=stacks)  # or keep the closed-form ω
    >>> len(omegas)                   # 2 sub-layers per encoder layer, 3 per decoder layer
    10
    >>> logits = model(src, tgt[:, :-1])  # (B, T-1, V): each next target token, from those before it
    >>> loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
    >>> loss.backward()
    >>> torch.optim.Adam(model.parameters(), lr=1e-3).step()  # ... train: one step here, many in yours
    >>> fold(model)                   # every ω folded into its neighbours, then set to 1
    >>> {m.omega.unique().item() for m in model.modules() if isinstance(m, admin.OmegaResidual)}
    {1.0}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import admin


def omega_residual(omega: float, d_model: int) -> admin.OmegaResidual:
    return admin.OmegaResidual(omega, as_parameter=True, embed_dim=d_model)  # the paper's trainable ω


class EncoderLayer(nn.Module):
    """x = LN(ω ⊙ x + SelfAttention(x)), then x = LN(ω ⊙ x + FFN(x)): 2 sub-layers."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, omega: float, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout, self.dropout1, self.dropout2 = (nn.Dropout(dropout) for _ in range(3))
        self.res1, self.res2 = omega_residual(omega, d_model), omega_residual(omega, d_model)

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(self.res1(x, self.dropout1(self.self_attn(x, x, x, need_weights=False)[0])))
        return self.norm2(self.res2(x, self.feed_forward(x)))

    def fold_pieces(self) -> list[tuple[admin.OmegaResidual, list[Tensor], nn.LayerNorm]]:
        """What fold needs of each sub-layer: (shortcut, the weights that read x_{i-1}, the LayerNorm
        that makes x_i)."""
        return [(self.res1, [self.self_attn.in_proj_weight], self.norm1),  # Q, K, V all read x
                (self.res2, [self.linear1.weight], self.norm2)]


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder's output (memory), FFN: 3 sub-layers."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, omega: float, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout, self.dropout1 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.res1, self.res2, self.res3 = (omega_residual(omega, d_model) for _ in range(3))

    def forward(self, y: Tensor, memory: Tensor) -> Tensor:
        T = y.size(1)
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=y.device, dtype=y.dtype)
        attended = self.self_attn(y, y, y, attn_mask=causal, is_causal=True, need_weights=False)[0]
        y = self.norm1(self.res1(y, self.dropout1(attended)))
        attended = self.multihead_attn(y, memory, memory, need_weights=False)[0]  # Q from y; K, V from memory
        y = self.norm2(self.res2(y, self.dropout2(attended)))
        feed_forward = self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(y)))))
        return self.norm3(self.res3(y, feed_forward))

    def fold_pieces(self) -> list[tuple[admin.OmegaResidual, list[Tensor], nn.LayerNorm]]:
        C = self.norm1.normalized_shape[0]
        return [(self.res1, [self.self_attn.in_proj_weight], self.norm1),
                # cross-attention: only W_Q (the first C rows) reads the decoder stream y
                (self.res2, [self.multihead_attn.in_proj_weight[:C]], self.norm2),
                (self.res3, [self.linear1.weight], self.norm3)]


class Seq2Seq(nn.Module):
    """Token + learned position embeddings for source and target, N encoder and M decoder layers,
    a linear head. ω per stack from the closed form: calculate_init(2N) and calculate_init(3M)."""

    def __init__(self, vocab_size: int, d_model: int = 32, n_heads: int = 4, d_ff: int = 64,
                 n_encoder: int = 2, n_decoder: int = 2, max_len: int = 32):
        super().__init__()
        self.src_tok, self.src_pos = nn.Embedding(vocab_size, d_model), nn.Embedding(max_len, d_model)
        self.tgt_tok, self.tgt_pos = nn.Embedding(vocab_size, d_model), nn.Embedding(max_len, d_model)
        omega_encoder = admin.calculate_init(2 * n_encoder)  # each stack counts its own sub-layers
        omega_decoder = admin.calculate_init(3 * n_decoder)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, omega_encoder)
                                     for _ in range(n_encoder))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, n_heads, d_ff, omega_decoder)
                                     for _ in range(n_decoder))
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        memory = self.src_tok(src) + self.src_pos(torch.arange(src.size(1), device=src.device))
        for layer in self.encoder:
            memory = layer(memory)  # (B, S, C)
        y = self.tgt_tok(tgt) + self.tgt_pos(torch.arange(tgt.size(1), device=tgt.device))
        for layer in self.decoder:
            y = layer(y, memory)  # (B, T, C)
        return self.head(y)  # (B, T, V)


@torch.no_grad()
def fold(model: Seq2Seq) -> None:
    """Fold every ω of `model` into its neighbours, in place, and set it to 1: a plain Post-LN model
    with the same function. In each stack, x_0 is made by the embeddings and every later x_{i-1} by
    the previous sub-layer's LayerNorm; the encoder's last LayerNorm feeds the decoder's K and V,
    which carry no ω, so nothing is folded into it."""
    stacks = ((model.encoder, [model.src_tok.weight, model.src_pos.weight]),
              (model.decoder, [model.tgt_tok.weight, model.tgt_pos.weight]))
    for layers, producers in stacks:
        for layer in layers:
            for residual, readers, norm in layer.fold_pieces():
                admin.fold_omega(residual.omega, producers, readers)
                residual.omega.fill_(1.0)  # the shortcut is now plain: x_{i-1} + f_i(x_{i-1})
                producers = [norm.weight, norm.bias]
