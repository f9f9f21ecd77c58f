"""Admin on stock Hugging Face encoder–decoders, BART and FSMT: ω in, profile, train, fold, load back.

    python -m examples.hf_seq2seq       # from the repository root; about 20 s on 2 CPU cores

Needs `transformers`, which this project does not depend on (.ci/hf-check builds a fresh environment
with it and runs this file). No network: each model is built from a tiny config with random weights.

BART's and FSMT's layers are Post-LN and add each residual inline, `self_attn_layer_norm(residual +
hidden_states)`. admin.attach_omega puts ω on those shortcuts without copying a forward: one call per
stack, naming the norms in the order a layer calls them. Then the round trip: profile ω with both
stacks, train with ω in a group without weight decay, fold every ω into the weights, and load the result
into the unmodified class with Folded.load_into, which checks the logits on fold's example; generate()
must then give the Admin model's tokens. FSMT's embeddings have no LayerNorm, and its sinusoids live in a
table it rebuilds for a longer input, so its stacks keep their first ω at 1 (fixed_first=True) and
nothing is folded into a table. Exits non-zero if any claim fails.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import transformers
from transformers import BartConfig, BartForConditionalGeneration, FSMTConfig, FSMTForConditionalGeneration

import admin
from examples.hf_bert import Claims, relative_error, train  # train: the BERT recipe's AdamW, ω without decay

# ---------------------------------------------------------------------------------------------------
# The recipe: what a user writes (everything after it is this example's checks and report)
# ---------------------------------------------------------------------------------------------------

ENCODER_NORMS = ["self_attn_layer_norm", "final_layer_norm"]  # BART's, FSMT's and Marian's names
DECODER_NORMS = ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"]


# ---------------------------------------------------------------------------------------------------
# The example: the recipe on a tiny random BART and FSMT, each claim checked
# ---------------------------------------------------------------------------------------------------

LAYERS, D_MODEL, HEADS, D_FF, VOCAB = 6, 32, 4, 64, 64
BATCH, SOURCE, TARGET, STEPS, NEW_TOKENS = 8, 12, 10, 20, 8
PAD, BOS, EOS = 1, 0, 2  # token ids; 3..VOCAB-1 are the "words"


@dataclass
class Spec:
    """One model family: its class and config, whether its stacks keep their first ω at 1, and which
    keywords its fold check may not use (FSMT builds a float32-only mask with labels or use_cache=False)."""

    cls: type
    config: transformers.PretrainedConfig
    fixed_first: bool
    not_in_fold: tuple[str, ...] = ()


def specs() -> dict[str, Spec]:
    sizes = dict(d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
                 decoder_attention_heads=HEADS, encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF, dropout=0.1,
                 max_position_embeddings=64, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                 decoder_start_token_id=EOS)
    return {"BART": Spec(BartForConditionalGeneration, BartConfig(vocab_size=VOCAB, **sizes), fixed_first=False),
            "FSMT": Spec(FSMTForConditionalGeneration,
                         FSMTConfig(langs=["en", "de"], src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, **sizes),
                         fixed_first=True, not_in_fold=("labels",))}


def translation_batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random source and target sentences, padded in both stacks: every other row ends early."""
    src = torch.randint(3, VOCAB, (BATCH, SOURCE), generator=generator)  # (B, S)
    tgt = torch.randint(3, VOCAB, (BATCH, TARGET), generator=generator)  # (B, T)
    src_mask, tgt_mask = torch.ones_like(src), torch.ones_like(tgt)
    src_mask[::2, 9:], tgt_mask[1::2, 7:] = 0, 0
    src, tgt = src.masked_fill(src_mask == 0, PAD), tgt.masked_fill(tgt_mask == 0, PAD)
    decoder_input_ids = torch.cat([torch.full((BATCH, 1), EOS), tgt[:, :-1]], dim=1)  # teacher forcing
    return dict(input_ids=src, attention_mask=src_mask, decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=torch.cat([torch.ones(BATCH, 1, dtype=torch.long), tgt_mask[:, :-1]], 1),
                labels=tgt.masked_fill(tgt_mask == 0, -100))


def stack_input_variance(model: torch.nn.Module, layers: torch.nn.ModuleList, batch: dict) -> float:
    """Var x_0: the variance of what the stack's first layer reads, over the batch (eval mode)."""
    seen = []
    hook = layers[0].register_forward_pre_hook(lambda layer, args: seen.append(args[0].var().item()))
    with torch.no_grad(), admin.eval_pass(model):
        model(**batch)
    hook.remove()
    return seen[0]


def round_trip(name: str, spec: Spec, batch: dict, claim) -> float:
    """The recipe on one model, every claim checked; returns the stock model's logit error."""
    print(f"\n{name}: {spec.cls.__name__}, {LAYERS} + {LAYERS} layers ({2 * LAYERS} + {3 * LAYERS} sub-layers), "
          f"d_model {D_MODEL}, dropout 0.1, fixed_first={spec.fixed_first}")
    model = spec.cls(spec.config)
    encoder, decoder = model.model.encoder, model.model.decoder

    # 1. ω on every shortcut, one call per stack; profile it on the batch, each stack from ω = 1
    admin.attach_omega(encoder.layers, ENCODER_NORMS, fixed_first=spec.fixed_first)
    admin.attach_omega(decoder.layers, DECODER_NORMS, fixed_first=spec.fixed_first)
    omegas = admin.profile_omega(model, **batch, stacks=[encoder, decoder])
    n = 2 * LAYERS
    print(f"profiled ω: encoder {omegas[0]:.3f}, then {min(omegas[1:n]):.3f} to {max(omegas[1:n]):.3f}; decoder "
          f"{omegas[n]:.3f}, then {min(omegas[n + 1:]):.3f} to {max(omegas[n + 1:]):.3f} "
          f"(Var x_0: encoder {stack_input_variance(model, encoder.layers, batch):.2f}, "
          f"decoder {stack_input_variance(model, decoder.layers, batch):.2f})")
    claim(len(omegas) == 5 * LAYERS and omegas[0] == omegas[n] == 1.0,
          f"{5 * LAYERS} profiled ω, each stack's first 1")

    # 2. Train: ω trainable, without weight decay
    losses = train(model, STEPS, **batch)
    trained = torch.cat([w.detach() for w in admin.omega_parameters(model)])
    print(f"trained {STEPS} AdamW steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}; ω now in "
          f"[{trained.min():.4f}, {trained.max():.4f}]")
    claim(all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], "every loss finite, and it fell")

    # What the Admin model says before the fold: logits, and greedy generate()
    model.eval()
    with torch.no_grad():
        admin_logits = model(**batch).logits  # (B, T, V)
        admin_tokens = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                      max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)

    # 3. Fold every ω, checked in float64; 4. load into the unmodified class, checked on fold's example
    call = {k: v for k, v in batch.items() if k not in spec.not_in_fold}
    folded = admin.fold(model, **call)
    print(f"fold: float64 check moved outputs by {folded.change:.1e} relative (bound {admin.FOLD_BOUND:.0e})")
    claim(folded.change <= admin.FOLD_BOUND, "fold's float64 change below admin.FOLD_BOUND")
    stock = folded.load_into(spec.cls(spec.config)).eval()
    with torch.no_grad():
        error = relative_error(stock(**batch).logits, admin_logits)
        stock_tokens = stock.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                      max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
    print(f"stock {spec.cls.__name__} via load_into: logits within {error:.1e} of the Admin model's (relative, "
          f"float32; load_into's bound {folded.bound:.1e}, 10 × the Admin model's own rounding)")
    claim(error <= folded.bound, "stock model reproduces the Admin model's logits")
    claim(torch.equal(stock_tokens, admin_tokens), f"generate() identical: {tuple(stock_tokens.shape)} tokens")
    return error


def fsmt_refusals(spec: Spec, batch: dict, claim) -> None:
    """What fold says on FSMT: without fixed_first, asked to fold ω_1 into the sinusoid table that FSMT
    rebuilds for a longer input; and, with it, on an example call that cannot run in float64."""
    for fixed_first, fold_kwargs in ((False, dict(embeddings="tables")), (True, dict(labels=batch["labels"]))):
        model = spec.cls(spec.config)
        admin.attach_omega(model.model.encoder.layers, ENCODER_NORMS, fixed_first=fixed_first)
        admin.attach_omega(model.model.decoder.layers, DECODER_NORMS, fixed_first=fixed_first)
        if "embeddings" in fold_kwargs:
            fold_kwargs["embeddings"] = {stack: [stack.embed_tokens.weight, stack.embed_positions.weight]
                                         for stack in (model.model.encoder, model.model.decoder)}
        call = {k: v for k, v in batch.items() if k != "labels"}
        try:
            admin.fold(model.eval(), **call, **fold_kwargs)
            message = ""
        except (ValueError, RuntimeError) as error:
            message = f"{type(error).__name__}: {error}"
        what = "the tables named" if not fixed_first else "labels in the example call"
        print(f"FSMT, fixed_first={fixed_first}, {what}: fold says {message or 'nothing, it folded'}")
        way_out = ["fixed_first=True"] if not fixed_first else ["in float64", "without labels"]
        claim(all(words in message for words in way_out), "refused, the way out named")


def main() -> int:
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    claim = Claims()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads; batch {BATCH} x {SOURCE} -> {TARGET}, padded in both stacks")
    batch, errors = translation_batch(torch.Generator().manual_seed(0)), {}
    for name, spec in specs().items():
        errors[name] = round_trip(name, spec, batch, claim)
    fsmt_refusals(specs()["FSMT"], batch, claim)
    if claim.failed:
        print(f"FAILED: {len(claim.failed)} claim(s): " + "; ".join(claim.failed))
        return 1
    print("\nConclusion: BART and FSMT round trips passed: ω attached with two calls, profiled, trained, "
          "folded, and the stock classes reproduce the logits (" +
          ", ".join(f"{name} {e:.0e}" for name, e in errors.items()) + ") and generate() the same tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
