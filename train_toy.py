"""The depth demo: deep vanilla Post-LN fails on a toy task, the same model with Admin learns it.

    python train_toy.py --layers 48        # vanilla Post-LN vs Admin, 48 layers (96 sub-layers)
    python train_toy.py --layers 6         # both learn: the failure is a matter of depth
    python train_toy.py --layers 192       # deeper than 48: a smaller peak learning rate, by the rule
    python train_toy.py --device cuda      # on a GPU (auto picks it), each step replayed as a CUDA graph

Every arm trains the same admin.PostLNTransformer (same initial weights: ω adds no random draws), on the
same batches, with the same optimizer and schedule; only the residual differs:
    vanilla  x_i = LN(x_{i-1} + f_i(x_{i-1}))           Post-LN
    admin    x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))     Post-LN, ω = admin.calculate_init(2 * layers,
                                                        --output-change-scale), or profiled on a batch
    preln    x_i = x_{i-1} + f_i(LN(x_{i-1}))           Pre-LN baseline (optional arm)
    deepnorm x_i = LN(α x_{i-1} + f_i(x_{i-1}))         DeepNet: α = (2N)^(1/4) fixed; V, output and
                                                        FFN weights start × (8N)^(-1/4)

The task, a worked example (--task reverse --digits 4). Tokens 0-9 are digits, 10 is the separator "|":
    digits     3 1 4 1
    sequence   3 1 4 1 | 1 4 1 3                        (copy: 3 1 4 1 | 3 1 4 1)
    input      3 1 4 1 | 1 4 1                          the sequence without its last token
    target     - - - - 1 4 1 3                          the next token; "-" = ignore_index (prompt)
The loss covers only the answer. Accuracy is exact match of whole answers on a held-out set whose
digit strings are never drawn for training. It is measured by one teacher-forced pass: every answer
token is the argmax given the true earlier ones exactly when greedy decoding reproduces the answer.

Optimizer: Adam, betas (0.9, 0.98) as in the paper's recipes; linear warm-up to --lr, then linear decay
to zero at the end of --steps; no gradient clipping (it would hide the instability this demo is about).
Up to 48 layers the defaults are lr 2e-3, 50 warm-up steps, 200 steps. Deeper, Admin trains only at
smaller rates, so what is not given follows the rule map (tutorial.md Section 12): lr 2e-3·√(48/layers),
100 warm-up steps of 400; the configuration line says so.
The output change itself, without training, is measure.py; the grid over depth × learning rate is
sweep.py; both stand on this file.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import admin
import cli
import report

SEP, VOCAB, IGNORE = 10, 11, -100
ARMS = ("vanilla", "admin", "preln", "deepnorm")
BETAS = (0.9, 0.98)  # Adam's moment decay rates
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over the ten digits
SOLVED, SOLVED_EVALS = 0.99, 3  # "learned": 99% exact; stop an arm that held it for 3 evaluations


# ---------------------------------------------------------------------------------------------------
# The task and its data
# ---------------------------------------------------------------------------------------------------


def digit_strings(n: int, digits: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(10, (n, digits), generator=gen)  # (n, digits)


def string_codes(strings: torch.Tensor) -> torch.Tensor:
    """Each digit string as one integer, for set membership (digits <= 16 fits in int64)."""
    return (strings * 10 ** torch.arange(strings.size(1), dtype=torch.long)).sum(1)


def to_example(strings: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit strings (n, D) -> model input (n, 2D) and target (n, 2D), as in the module docstring."""
    answer = strings.flip(1) if task == "reverse" else strings
    sequence = torch.cat([strings, torch.full((strings.size(0), 1), SEP), answer], 1)  # (n, 2D + 1)
    target = sequence[:, 1:].clone()
    target[:, : strings.size(1)] = IGNORE  # the prompt and the separator are not asked for
    return sequence[:, :-1], target  # (n, 2D), (n, 2D)


class ToyData:
    """A fixed held-out set, and training batches that never contain a held-out string. Every call of
    batches() replays the same stream, so every arm trains on the same batches."""

    def __init__(self, task: str, digits: int, seed: int, device: str = "cpu"):
        self.task, self.digits, self.device = task, digits, device
        gen = torch.Generator().manual_seed(seed)
        n_eval = min(128, 10**digits // 5)
        drawn = torch.unique(string_codes(digit_strings(4 * n_eval, digits, gen)))  # sorted
        self.held_out_codes = drawn[torch.randperm(len(drawn), generator=gen)[:n_eval]]  # unbiased
        strings = torch.stack([(self.held_out_codes // 10**k) % 10 for k in range(digits)], 1)
        # Drawn on the CPU from one generator, then moved: the same strings on every device.
        self.eval_input, self.eval_target = (t.to(device) for t in to_example(strings, task))
        self.batch_rng = gen.get_state()  # where every stream of training batches starts

    def batches(self, batch_size: int):
        gen = torch.Generator()
        gen.set_state(self.batch_rng)
        while True:
            strings = digit_strings(batch_size, self.digits, gen)
            clash = torch.isin(string_codes(strings), self.held_out_codes)
            while clash.any():  # redraw the rows that hit the held-out set
                strings[clash] = digit_strings(int(clash.sum()), self.digits, gen)
                clash = torch.isin(string_codes(strings), self.held_out_codes)
            yield tuple(t.to(self.device) for t in to_example(strings, self.task))


def describe(inp: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, task: str) -> str:
    digits = inp.size(0) // 2
    asked, want, got = (" ".join(map(str, t.tolist())) for t in (inp[:digits], target[digits:],
                                                                   pred[digits:]))
    verb = "reversed" if task == "reverse" else "copied"
    return f"{verb} {asked} -> expected {want}, got {got} ({'ok' if want == got else 'wrong'})"


# ---------------------------------------------------------------------------------------------------
# The model of one arm, and its training step
# ---------------------------------------------------------------------------------------------------


def make_model(arm: str, layers: int, args, seed: int) -> admin.PostLNTransformer:
    """The demo's model of `arm` (layers and seed apart from args: measure.py varies them)."""
    torch.manual_seed(seed)  # the same initial weights for every arm
    config = admin.TransformerConfig(
        vocab_size=VOCAB, max_len=2 * args.digits, d_model=args.d_model, n_heads=args.n_heads,
        d_ff=4 * args.d_model, n_layers=layers, residual=arm, output_change_scale=args.output_change_scale)
    return admin.PostLNTransformer(config).to(args.device)


def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)  # answer only


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """The learning rate at `step` as a fraction of --lr: linear warm-up over `warmup` steps, then
    linear decay to zero at the end of the budget (0 warm-up steps: start at the peak)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def make_step(model: admin.PostLNTransformer, args):
    """step(inp, target, lr) -> loss: one Adam update, eager or (--cuda-graph) replayed as a CUDA graph."""
    if args.cuda_graph:
        import cuda_graph  # only when graphs are on

        return cuda_graph.graphed_adam_step(model, loss_of, args.lr, BETAS)
    fused = torch.device(args.device).type in ("cpu", "cuda")  # one fused kernel where torch has it
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=BETAS, fused=fused)

    def step(inp: torch.Tensor, target: torch.Tensor, lr: float) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_of(model(inp), target)  # logits (B, 2D, V)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


# ---------------------------------------------------------------------------------------------------
# Training one arm: the loop
# ---------------------------------------------------------------------------------------------------


def train_arm(arm: str, args, data: ToyData, log, model: torch.nn.Module | None = None) -> ArmResult:
    """Train one arm: make_model's, or `model` (token ids (B, T) -> logits) if given."""
    result = ArmResult(arm, model=model if model is not None else make_model(arm, args.layers, args, args.seed))
    if arm == "admin" and args.omega == "profiled":  # the paper's ω, from one pass over the first batch
        admin.profile_omega(result.model, next(data.batches(args.batch_size))[0])
    step, batches = make_step(result.model, args), data.batches(args.batch_size)
    start, step_times, solved_evals = time.perf_counter(), [], 0
    try:
        for i in range(args.steps + 1):
            if i % args.eval_every == 0 or i == args.steps:
                held_out_loss, acc, pred = evaluate(result.model, data)
                result.history.append([i, held_out_loss, acc])
                log(report.eval_line(arm, i, held_out_loss, acc, time.perf_counter() - start))
                solved_evals = solved_evals + 1 if acc >= SOLVED else 0
                if solved_evals >= SOLVED_EVALS or i == args.steps:
                    break
            inp, target = next(batches)
            t0 = time.perf_counter()
            loss = step(inp, target, args.lr * lr_factor(i, args.warmup, args.steps)).item()
            step_times.append(time.perf_counter() - t0)  # .item() waited for the device
            if not math.isfinite(loss):
                result.diverged_at = i
                log(f"  {arm} diverged at step {i}; last finite loss {result.last_finite_loss}")
                break
            result.last_finite_loss, result.steps = loss, i + 1
    except KeyboardInterrupt:
        result.interrupted = True
        log(f"  {arm} interrupted at step {result.steps}")
    result.seconds = time.perf_counter() - start
    result.step_ms = 1000 * statistics.median(step_times) if step_times else float("nan")
    if result.diverged_at is None and not result.interrupted:  # the loop ended on an evaluation: pred
        result.examples = [describe(data.eval_input[k], data.eval_target[k], pred[k], args.task)
                           for k in range(3)]
    return result


# ---------------------------------------------------------------------------------------------------
# What train_arm returns, and the held-out evaluation
# ---------------------------------------------------------------------------------------------------


@dataclass
class ArmResult:
    arm: str
    history: list = field(default_factory=list)  # [step, held-out loss, accuracy]
    steps: int = 0
    diverged_at: int | None = None
    last_finite_loss: float | None = None
    seconds: float = 0.0
    step_ms: float = float("nan")  # median training-step time
    examples: list = field(default_factory=list)
    interrupted: bool = False
    model: admin.PostLNTransformer | None = None

    final_loss = property(lambda self: self.history[-1][1] if self.history else float("nan"))
    accuracy = property(lambda self: self.history[-1][2] if self.history else 0.0)

    @property
    def verdict(self) -> str:
        if self.diverged_at is not None:
            return f"diverged at step {self.diverged_at}"
        if self.accuracy >= SOLVED:
            return "learned"
        return "did not learn" if self.accuracy < 0.01 else f"partly learned ({100 * self.accuracy:.0f}%)"


@torch.no_grad()
def evaluate(model, data: ToyData) -> tuple[float, float, torch.Tensor]:
    """Held-out loss, exact-match accuracy and the argmax predictions (n, 2D)."""
    logits = model.eval()(data.eval_input)  # (n, 2D, V)
    model.train()
    pred = logits.argmax(-1)
    exact = ((pred == data.eval_target) | (data.eval_target == IGNORE)).all(1).float().mean()
    return loss_of(logits, data.eval_target).item(), exact.item(), pred


# ---------------------------------------------------------------------------------------------------
# The run: every arm, the fold of the trained Admin model, the summary and what to conclude
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def fold_error(model: admin.PostLNTransformer, inp: torch.Tensor) -> float:
    """How far the logits of admin.reparameterize(model) are from the model's: max |Δ| / max |logit|."""
    want = model.eval()(inp)
    return ((admin.reparameterize(model).eval()(inp) - want).abs().max() / want.abs().max()).item()


def conclusion(results: list[ArmResult], layers: int, lr: float | None = None,
               warmup: int | None = None) -> str:
    by_arm = {r.arm: r for r in results}
    v, a = by_arm.get("vanilla"), by_arm.get("admin")
    if v is None or a is None or v.interrupted or a.interrupted:
        return "Run the vanilla and admin arms to completion to compare them."
    if a.verdict == "learned" and v.verdict != "learned":
        return (f"Conclusion: at {layers} layers plain Post-LN {v.verdict}, while Admin learned the task "
                f"from the same weights, data and optimizer: the only change is ω on the shortcut. "
                f"(In our stability map vanilla learned only at 6 layers; at 12 it learned with 4x the "
                f"steps and 200 warm-up steps: tutorial.md, Sections 5 and 11.)")
    if a.verdict == "learned" and v.verdict == "learned":
        return (f"Conclusion: at {layers} layers both Post-LN arms learn; the failure of vanilla "
                f"Post-LN is a matter of depth (try --layers 48).")
    if a.verdict != "learned" and lr is not None:
        return (f"Conclusion: vanilla {v.verdict}, admin {a.verdict} at peak lr {lr:g} with {warmup} "
                f"warm-up steps. Deep Admin fails when the learning rate climbs too far too fast: halve "
                f"it (--lr {float(f'{lr / 2:.2g}'):g}) or double the warm-up (--warmup {2 * warmup}); "
                f"the rule map behind the defaults is in tutorial.md, Section 12.")
    return f"Conclusion: vanilla {v.verdict}, admin {a.verdict}; see the table above."


def arm_title(arm: str, args) -> str:
    omega = (f"ω = {admin.calculate_init(2 * args.layers, args.output_change_scale):.3f}"
             if args.omega == "closed" else "ω profiled on the first batch")
    deepnorm = (f"α = {admin.deepnorm_alpha(args.layers):.3f}, "
                f"V, output and FFN weights start × {admin.deepnorm_beta(args.layers):.3f}")
    return f"training {arm} ({dict(vanilla='Post-LN', admin=f'Post-LN, {omega}', preln='Pre-LN', deepnorm=deepnorm)[arm]})"


def run(args, log) -> tuple[list[ArmResult], float | None]:
    """Train every arm on the same data; return the results and the fold error of the trained Admin
    model (None without one)."""
    results, data = [], ToyData(args.task, args.digits, args.seed, args.device)
    for arm in args.arms:
        log(arm_title(arm, args))
        results.append(train_arm(arm, args, data, log))
        if results[-1].interrupted:
            break
    trained = next((r.model for r in results if r.arm == "admin" and r.examples), None)
    return results, None if trained is None else fold_error(trained, data.eval_input[: args.batch_size])


def summary(results: list[ArmResult], folded: float | None, args) -> str:
    """What follows the training lines: the table, the text plot, examples, the conclusion."""
    parts = ["\nsummary (train ms/step: the median step)", report.summary_table(results, folded),
             "\n" + report.text_plot({r.arm: r.history for r in results}, CHANCE_LOSS)]
    parts += [f"\n{r.arm}, held-out examples:\n" + "\n".join("  " + e for e in r.examples)
              for r in results if r.examples]
    return "\n".join(parts + ["\n" + conclusion(results, args.layers, args.lr, args.warmup)])


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


SHALLOW = 48  # up to this depth the demo trains at 2e-3, 50 warm-up steps of 200; deeper, by the rule
LR_RULE = f"lr = 2e-3·√({SHALLOW}/layers)"  # schedule_for's deep peak, in words (help, configuration)


def schedule_for(layers: int) -> dict:
    """The demo's default peak learning rate, warm-up and budget at `layers` layers.

    Deeper than 48 layers the largest rate at which Admin trains falls about one √2 step per doubling
    of depth (the rule map, tutorial.md Section 12), so the default peak falls as √(48/layers), a step
    under that edge (at 96 and 192 layers; 0 or 1 at 384), with 100 warm-up steps of 400 (deep models
    need more steps to learn)."""
    if layers <= SHALLOW:
        return {"lr": 2e-3, "warmup": 50, "steps": 200}
    # lr = 2e-3·√(48/layers), to 3 figures: 96, 192 and 384 layers land on rungs of sweep.py's ladder
    return {"lr": float(f"{2e-3 * math.sqrt(SHALLOW / layers):.3g}"), "warmup": 100, "steps": 400}


def add_schedule_flags(p: argparse.ArgumentParser, by_depth: bool = False) -> argparse.ArgumentParser:
    """--steps, --lr, --warmup: the demo's schedule, shared with the scripts that train as it does.
    by_depth: their defaults are None, and fill_schedule takes them from schedule_for(--layers)."""
    shallow = schedule_for(SHALLOW)
    for name, kind, text in (
            ("steps", cli.whole(1), "training budget per arm; an arm that neither learns nor diverges runs all of it"),
            ("lr", cli.positive_float, "peak Adam learning rate"), ("warmup", cli.whole(0), "linear warm-up steps to --lr")):
        p.add_argument(f"--{name}", type=kind, default=None if by_depth else shallow[name], help=text + (
            f" (default: {shallow[name]:g} up to {SHALLOW} layers, deeper by the rule: see --layers)" if by_depth else ""))
    return p


def fill_schedule(args: argparse.Namespace) -> None:
    """Give --lr, --warmup and --steps left unset their values at this depth, and say why when the
    depth changed them (args.schedule, shown on the configuration line)."""
    chosen = {k: v for k, v in schedule_for(args.layers).items() if getattr(args, k) is None}
    for name, value in chosen.items():
        setattr(args, name, value)
    if args.layers > SHALLOW and chosen:
        args.schedule = (f"by depth, {args.layers} > {SHALLOW} layers: "
                         + ", ".join(f"{k} {v:g}" for k, v in chosen.items())
                         + f" ({LR_RULE}; the rule map, tutorial.md Section 12)")


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except those the depth sets (None until parse_args)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The demo's flags: its training settings, then the model flags it shares (cli.py)."""
    p = argparse.ArgumentParser(description="Vanilla Post-LN vs Admin on a toy sequence task.",
                                formatter_class=DefaultsHelp, add_help=add_help)
    p.add_argument("--layers", type=cli.whole(1), default=48,
                   help="Transformer layers; each has 2 residual sub-layers, so ω uses n = 2 * layers. "
                        f"Deeper than {SHALLOW}, the unset --lr, --warmup and --steps follow the rule: "
                        f"{LR_RULE}, warmup 100, steps 400")
    p.add_argument("--arms", type=cli.comma_list(cli.one_of(ARMS), "arms"), default=["vanilla", "admin"],
                   help=f"comma-separated residual kinds to compare, from {', '.join(ARMS)}")
    add_schedule_flags(p, by_depth=True)
    p.add_argument("--omega", choices=("closed", "profiled"), default="closed",
                   help="admin arm: ω from the closed form, or profiled on the first batch (the paper)")
    p.add_argument("--eval-every", type=cli.whole(1), default=20, help="steps between held-out evaluations")
    p.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                   help="replay each training step as one CUDA graph (auto: on with --device cuda); "
                        "off trains eagerly, the reference")
    cli.add_model_flags(p)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the curves (needs matplotlib)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    if args.omega == "profiled" and "admin" not in args.arms:
        p.error(f"argument --omega: profiled applies to the admin arm, which --arms={','.join(args.arms)} lacks")
    fill_schedule(args)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the demo as the command line asks; return what --json writes."""
    args = parse_args(argv)
    cli.start(args)
    log = lambda line: print(line, flush=True)  # noqa: E731
    config = cli.configuration(args)
    log("configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    start = time.perf_counter()
    results, folded = run(args, log)
    log(f"{summary(results, folded, args)}  ({time.perf_counter() - start:.1f}s in all)")
    out = {"config": config, "arms": {r.arm: report.result_json(r) for r in results}, "fold_error": folded}
    title = f"{args.layers}-layer models, {args.task} {args.digits} digits, seed {args.seed}"
    cli.write_outputs(args, out, lambda path: report.curves_png(
        path, {r.arm: (r.history, r.verdict) for r in results}, CHANCE_LOSS, title), log)
    return out


if __name__ == "__main__":
    main()
