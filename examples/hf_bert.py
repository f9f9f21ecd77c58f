"""Admin on a stock Hugging Face BERT: ω in, profile, train, fold ω out, load into the stock class.

    python -m examples.hf_bert          # from the repository root; about 10 s on 2 CPU cores

Needs `transformers`, which this project does not depend on (.ci/hf-check builds a fresh environment
with it and runs this file). No network: the model is built from a small config with random weights.

BERT is Post-LN: BertSelfOutput and BertOutput each compute LayerNorm(dropout(dense(h)) + input_tensor),
one sub-layer each, two per layer. admin.attach_omega puts ω on those shortcuts with one call that names
the two LayerNorms of a BertLayer in call order, no forward copied; after training admin.fold folds every
ω into the weights, and Folded.load_into loads the result strictly into the unmodified BertForMaskedLM and
checks that it gives the same logits on fold's example.
"""

from __future__ import annotations

import sys

import torch
import transformers
from transformers import BertConfig, BertForMaskedLM

import admin

# ---------------------------------------------------------------------------------------------------
# The recipe: what a user writes (everything after it is this example's checks and report)
# ---------------------------------------------------------------------------------------------------


BERT_NORMS = ["attention.output.LayerNorm", "output.LayerNorm"]  # in a BertLayer, in call order


def add_omega(model: BertForMaskedLM) -> BertForMaskedLM:
    """ω on every shortcut of `model`, in place: the state dict gains <LayerNorm>.residual.omega."""
    admin.attach_omega(model.bert.encoder.layer, BERT_NORMS)
    return model


def optimizer_for(model: torch.nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """AdamW with ω in a group of its own without weight decay (decay would pull ω towards 0)."""
    omegas = admin.omega_parameters(model)
    others = [p for p in model.parameters() if all(p is not w for w in omegas)]
    return torch.optim.AdamW([{"params": others, "weight_decay": 0.01},
                              {"params": omegas, "weight_decay": 0.0}], lr=lr)


# ---------------------------------------------------------------------------------------------------
# The example: the recipe on a small random BERT, each claim checked
# ---------------------------------------------------------------------------------------------------

LAYERS, D_MODEL, HEADS, D_FF, VOCAB = 4, 64, 4, 128, 100
BATCH, LENGTH, STEPS, MASK_ID = 8, 16, 20, 1  # token 0 pads, 1 masks, 2..VOCAB-1 are the "words"
FLOAT32_BOUND = 1e-5  # a float32 logit gap no correct load reaches (relative; measured 2.5e-7)


def train(model: torch.nn.Module, steps: int, **batch) -> list[float]:
    """`steps` AdamW steps on model(**batch).loss with optimizer_for's groups; the losses."""
    optimizer, losses = optimizer_for(model), []
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


class Claims:
    """claim(ok, what) prints whether a claim held; claim.failed lists those that did not."""

    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  {'ok' if ok else 'FAILED'}: {what}")
        if not ok:
            self.failed.append(what)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def masked_lm_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random words, 15% of them masked for the loss, half the rows padded after position 11."""
    words = torch.randint(2, VOCAB, (BATCH, LENGTH), generator=generator)  # (B, T)
    attention_mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    attention_mask[::2, 12:] = 0  # padding, so that the mask matters in every pass below
    masked = (torch.rand(BATCH, LENGTH, generator=generator) < 0.15) & attention_mask.bool()
    input_ids = words.masked_fill(masked, MASK_ID).masked_fill(attention_mask == 0, 0)
    labels = words.masked_fill(~masked, -100)  # the loss reads masked positions only
    return input_ids, attention_mask, labels


def main() -> int:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    claim = Claims()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads")
    config = BertConfig(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=D_FF)
    print(f"BertForMaskedLM: {LAYERS} layers ({2 * LAYERS} sub-layers), d_model {D_MODEL}, {HEADS} heads, "
          f"d_ff {D_FF}, vocab {VOCAB}, dropout {config.hidden_dropout_prob}; batch {BATCH} x {LENGTH}")
    input_ids, attention_mask, labels = masked_lm_batch(generator)

    # 1-2. A stock BertForMaskedLM, then ω on every shortcut
    model = add_omega(BertForMaskedLM(config))
    closed_form = admin.calculate_init(2 * LAYERS)

    # 3. Profile ω on the batch. BERT initializes weights N(0, 0.02), so at init every branch is weak
    # next to its LayerNorm-ed shortcut: little amplification to correct, and each ω comes out ≈ 1
    # (the closed form assumes Var f ≈ Var x and would give calculate_init(2 · layers) instead).
    omegas = admin.profile_omega(model, input_ids, attention_mask=attention_mask)
    print(f"profiled ω, one per sub-layer: {' '.join(f'{w:.3f}' for w in omegas)} "
          f"(closed form calculate_init({2 * LAYERS}) = {closed_form:.3f})")
    claim(len(omegas) == 2 * LAYERS and all(abs(w - 1) < 0.1 for w in omegas),
          f"{2 * LAYERS} profiled ω, each within 0.1 of 1: weak branches at BERT's init")

    # 4. Train: masked-LM loss, ω trainable, without weight decay
    losses = train(model, STEPS, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    trained = torch.cat([w.detach() for w in admin.omega_parameters(model)])
    print(f"trained {STEPS} AdamW steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"ω now in [{trained.min():.4f}, {trained.max():.4f}]")
    claim(all(torch.isfinite(torch.tensor(losses))), "every loss finite")
    claim(not torch.all(trained == 1), "training moved ω off 1, so the fold has work to do")

    # What the Admin model says before the fold, and its checkpoint with ω (for the strict-load check)
    model.eval()
    with torch.no_grad():
        admin_logits = model(input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    unfolded = {k: v.clone() for k, v in model.state_dict().items()}

    # 5. Fold every ω into the LayerNorm before it and the Linear weights that read its input
    folded = admin.fold(model, input_ids, attention_mask=attention_mask)
    print(f"fold: float64 check moved outputs by {folded.change:.1e} relative (bound {admin.FOLD_BOUND:.0e})")
    claim(folded.change <= admin.FOLD_BOUND, "fold's float64 change below admin.FOLD_BOUND")

    # 6. The folded weights in the unmodified class: a strict load, checked on fold's example
    stock = folded.load_into(BertForMaskedLM(config)).eval()
    with torch.no_grad():
        stock_logits = stock(input_ids, attention_mask=attention_mask).logits
    error = relative_error(stock_logits, admin_logits)
    print(f"stock BertForMaskedLM via load_into vs the Admin model: logits differ by {error:.1e} relative "
          f"(float32; load_into's bound {folded.bound:.1e}, 10 × the Admin model's own rounding)")
    claim(error <= folded.bound, "stock model reproduces the Admin model's logits")

    check_unfolded_checkpoint(config, unfolded, admin_logits, input_ids, attention_mask, claim)

    if claim.failed:
        print(f"FAILED: {len(claim.failed)} claim(s): " + "; ".join(claim.failed))
        return 1
    print(f"Conclusion: BERT round trip passed: ω profiled (≈ 1 at BERT's init), trained, folded, and the "
          f"stock class reproduces the logits to {error:.0e}")
    return 0


def check_unfolded_checkpoint(config, unfolded, admin_logits, input_ids, attention_mask, claim) -> None:
    """A checkpoint saved before the fold carries ω keys: a strict load refuses it, where
    from_pretrained would drop them with a warning and silently change the logits."""
    omega_keys = [k for k in unfolded if k.endswith(".residual.omega")]
    stock = BertForMaskedLM(config)
    try:
        stock.load_state_dict(unfolded, strict=True)
        refused = ""
    except RuntimeError as error:
        refused = str(error)
    print(f"unfolded checkpoint ({len(omega_keys)} ω keys) into stock BertForMaskedLM, strict=True: "
          + (next((line.strip()[:100] + " ..." for line in refused.splitlines() if "Unexpected" in line),
                  refused) or "loaded"))
    claim("Unexpected key(s)" in refused and all(k in refused for k in omega_keys),
          "strict load of the unfolded checkpoint raises, naming every ω key")
    stock.load_state_dict(unfolded, strict=False)  # what dropping ω does, for the record
    with torch.no_grad():
        error = relative_error(stock.eval()(input_ids, attention_mask=attention_mask).logits, admin_logits)
    print(f"  (loaded with strict=False, ω dropped, the logits move by {error:.1e} relative)")
    claim(error > 100 * FLOAT32_BOUND, "dropping ω unfolded would change the logits")


if __name__ == "__main__":
    sys.exit(main())
