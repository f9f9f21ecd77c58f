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
The flags, and the schedule by depth for those left unset, are config.py's (its TrainConfig is what
every function here takes). measure.py, sweep.py, bench.py and deep_end.py stand on this file.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import admin
import cli
import config
import report
from config import ARMS, TrainConfig, build_parser, parse_args, parse_command_line  # noqa: F401 (the demo's)

SEP, VOCAB, IGNORE = 10, 11, -100
BETAS = (0.9, 0.98)  # Adam's moment decay rates
SOLVED, SOLVED_EVALS = 0.99, 3  # "learned": 99% exact; stop an arm that held it for 3 evaluations


# ---------------------------------------------------------------------------------------------------
# The task and its data
# ---------------------------------------------------------------------------------------------------


def digit_strings(n: int, digits: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(10, (n, digits), generator=gen)  # (n, digits)


def string_codes(strings: torch.Tensor) -> torch.Tensor:
    """Each digit string as one integer, for set membership (digits <= 16 fits in int64)."""
    return (strings * 10 ** torch.arange(strings.size(1))).sum(1)  # arange of ints: int64


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


def make_model(arm: str, cfg: TrainConfig) -> admin.PostLNTransformer:
    """The demo's model of `arm`, its weights drawn from cfg.seed (the same for every arm)."""
    torch.manual_seed(cfg.seed)  # the same initial weights for every arm
    model_config = admin.TransformerConfig(
        vocab_size=VOCAB, max_len=2 * cfg.digits, d_model=cfg.d_model, n_heads=cfg.n_heads,
        d_ff=4 * cfg.d_model, n_layers=cfg.layers, residual=arm, output_change_scale=cfg.output_change_scale)
    return admin.PostLNTransformer(model_config).to(cfg.device)


def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)  # answer only


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """The learning rate at `step` as a fraction of --lr: linear warm-up over `warmup` steps, then
    linear decay to zero at the end of the budget (0 warm-up steps: start at the peak)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def make_step(model: admin.PostLNTransformer, cfg: TrainConfig):
    """step(inp, target, lr) -> loss: one Adam update, eager or (cfg.cuda_graph) replayed as a CUDA graph."""
    if cfg.cuda_graph:
        import cuda_graph  # only when graphs are on

        return cuda_graph.graphed_adam_step(model, loss_of, cfg.lr, BETAS)
    fused = torch.device(cfg.device).type in ("cpu", "cuda")  # one fused kernel where torch has it
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=BETAS, fused=fused)

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


def train_arm(arm: str, cfg: TrainConfig, data: ToyData, log, *, model: admin.PostLNTransformer | None = None,
              watch=None, until_solved: bool = True) -> ArmResult:
    """Train `model` (default: make_model(arm, cfg)) for cfg.steps steps, evaluating every cfg.eval_every;
    stop at a non-finite loss, or (until_solved) once it held 99% for 3 evaluations. watch(i, model),
    if given, sees the model after each i steps (deep_end.py records a run through it)."""
    result = ArmResult(arm, model=make_model(arm, cfg) if model is None else model)
    if arm == "admin" and cfg.omega == "profiled":  # the paper's ω, from one pass over the first batch
        admin.profile_omega(result.model, next(data.batches(cfg.batch_size))[0])
    step, batches = make_step(result.model, cfg), data.batches(cfg.batch_size)
    start, solved_evals = time.perf_counter(), 0
    try:
        for i in range(cfg.steps + 1):
            if watch is not None:
                watch(i, result.model)
            if i % cfg.eval_every == 0 or i == cfg.steps:
                held_out_loss, acc, pred = evaluate(result.model, data)
                result.history.append([i, held_out_loss, acc])
                result.eval_seconds.append(time.perf_counter() - start)
                log(report.eval_line(arm, i, held_out_loss, acc, result.eval_seconds[-1]))
                solved_evals = solved_evals + 1 if acc >= SOLVED else 0
                if (until_solved and solved_evals >= SOLVED_EVALS) or i == cfg.steps:
                    break
            inp, target = next(batches)
            t0 = time.perf_counter()
            loss = step(inp, target, cfg.lr * lr_factor(i, cfg.warmup, cfg.steps)).item()
            result.step_times.append(time.perf_counter() - t0)  # .item() waited for the device
            if not math.isfinite(loss):
                result.diverged_at = i
                log(report.diverged_line(result))
                break
            result.last_finite_loss, result.steps = loss, i + 1
    except KeyboardInterrupt:
        result.interrupted = True
        log(report.interrupted_line(result))
    result.seconds = time.perf_counter() - start
    result.step_ms = 1000 * statistics.median(result.step_times) if result.step_times else float("nan")
    if result.diverged_at is None and not result.interrupted:  # the loop ended on an evaluation: pred
        result.examples = [describe(data.eval_input[k], data.eval_target[k], pred[k], cfg.task)
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
    eval_seconds: list = field(default_factory=list)  # elapsed at each evaluation
    step_times: list = field(default_factory=list)  # seconds of each training step

    @classmethod
    def from_json(cls, arm: str, r: dict) -> ArmResult:
        """The result that report.result_json wrote (older files: no times of evaluations)."""
        return cls(arm, r["history"], r["steps"], r["diverged_at"], r.get("last_finite_loss"), r["seconds"],
                   r["train_ms_per_step"], r["examples"], r["interrupted"],
                   eval_seconds=r.get("eval_seconds", [0.0] * len(r["history"])))

    final_loss = property(lambda self: self.history[-1][1] if self.history else float("nan"))
    accuracy = property(lambda self: self.history[-1][2] if self.history else 0.0)
    verdict = property(lambda self: verdict_of(self))


def verdict_of(r: ArmResult) -> str:
    """The verdict rule, the one every script uses: diverged, learned (99% exact), or how far it got."""
    if r.diverged_at is not None:
        return f"diverged at step {r.diverged_at}"
    if r.accuracy >= SOLVED:
        return "learned"
    return "did not learn" if r.accuracy < 0.01 else f"partly learned ({100 * r.accuracy:.0f}%)"


def evaluate(model, data: ToyData) -> tuple[float, float, torch.Tensor]:
    """Held-out loss, exact-match accuracy and the argmax predictions (n, 2D)."""
    with torch.no_grad():  # a plain function (no decorator), so that .ci/mutation can mutate it
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


def run(cfg: TrainConfig, log) -> tuple[list[ArmResult], float | None]:
    """Train every arm on the same data; return the results and the fold error of the trained Admin
    model (None without one)."""
    results, data = [], ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    for arm in cfg.arms:
        log(report.arm_title(arm, cfg))
        results.append(train_arm(arm, cfg, data, log))
        if results[-1].interrupted:
            break
    trained = next((r.model for r in results if r.arm == "admin" and r.examples), None)
    return results, None if trained is None else fold_error(trained, data.eval_input[: cfg.batch_size])


def main(argv: list[str] | None = None) -> dict:
    """Run the demo as the command line asks; return what --json writes."""
    args, cfg = parse_command_line(argv)
    cli.start(cfg)
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(cli.configuration_line(config.configuration(cfg)))
    start = time.perf_counter()
    results, folded = run(cfg, log)
    log(report.the_end(results, folded, cfg, time.perf_counter() - start))
    out = {"config": config.configuration(cfg), "arms": {r.arm: report.result_json(r) for r in results}, "fold_error": folded}
    title = f"{cfg.layers}-layer models, {cfg.task} {cfg.digits} digits, seed {cfg.seed}"
    cli.write_outputs(args, out, lambda path: report.curves_png(
        path, {r.arm: (r.history, r.verdict) for r in results}, report.CHANCE_LOSS, title), log)
    return out


if __name__ == "__main__":
    main()
