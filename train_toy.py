"""The depth demo: deep vanilla Post-LN fails on a toy task, the same model with Admin learns it.

    python train_toy.py --layers 48        # vanilla Post-LN vs Admin, 48 layers (96 sub-layers)
    python train_toy.py --layers 6         # both learn: the failure is a matter of depth
    python train_toy.py --layers 192       # deeper than 48: a smaller peak learning rate, by the rule

Every arm trains the same admin.PostLNTransformer (same initial weights: ω adds no random draws), on the
same batches, with the same optimizer and schedule; only the residual differs:
    vanilla  x_i = LN(x_{i-1} + f_i(x_{i-1}))           Post-LN
    admin    x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))     Post-LN, ω = calculate_init(2 * layers) or profiled
    preln    x_i = x_{i-1} + f_i(LN(x_{i-1}))           Pre-LN baseline
    deepnorm x_i = LN(α x_{i-1} + f_i(x_{i-1}))         DeepNet: α = (2N)^(1/4); V, output, FFN × (8N)^(-1/4)

The task, a worked example (--task reverse --digits 4). Tokens 0-9 are digits, 10 is the separator "|":
    digits     3 1 4 1
    sequence   3 1 4 1 | 1 4 1 3                        (copy: 3 1 4 1 | 3 1 4 1)
    input      3 1 4 1 | 1 4 1                          the sequence without its last token
    target     - - - - 1 4 1 3                          the next token; "-" = ignore_index (prompt)
The loss covers only the answer. Accuracy: exact match of whole answers on held-out strings never drawn
for training, in one teacher-forced pass (all answer tokens right given the true earlier ones exactly
when greedy decoding reproduces the answer). Adam with linear warm-up and decay, no gradient clipping
(it would hide the instability this demo is about). The lab (lab/) builds its runs on this file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, fields

import torch

import admin

ARMS = ("vanilla", "admin", "preln", "deepnorm")  # the residual kinds the demo can train
SEP, VOCAB, IGNORE = 10, 11, -100
BETAS = (0.9, 0.98)  # Adam's moment decay rates, as in the paper's recipes
SOLVED, SOLVED_EVALS = 0.99, 3  # "learned": 99% exact; stop an arm that held it for 3 evaluations
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over the ten digits
FOLD_BOUND = 1e-4  # relative logit error of the fold: float32 rounding gives ~1e-7, a wrong fold ~1e-2
SHALLOW = 48  # up to this depth one schedule; deeper, the peak learning rate falls as LR_RULE says
LR_RULE = f"lr = 2e-3·√({SHALLOW}/layers)"


# --- The configuration: one dataclass; the schedule by depth fills what is left unset ---
def schedule_for(layers: int) -> dict:
    """Peak lr, warm-up, steps. Deeper than 48 layers Admin's largest stable rate falls about √2 per
    doubling of depth (tutorial.md Section 12), so the peak follows LR_RULE, a step under that rate."""
    if layers <= SHALLOW:
        return {"lr": 2e-3, "warmup": 50, "steps": 200}
    # to 3 figures: 96, 192 and 384 layers land on rungs of the lab's learning-rate ladder
    return {"lr": float(f"{2e-3 * math.sqrt(SHALLOW / layers):.3g}"), "warmup": 100, "steps": 400}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How each arm is trained, in the configuration line's order; lr, warmup, steps left None: by depth."""
    layers: int = 48
    arms: list = field(default_factory=lambda: ["vanilla", "admin"])
    steps: int | None = None  # the training budget of each arm
    lr: float | None = None  # the peak learning rate
    warmup: int | None = None  # linear warm-up steps to lr
    omega: str = "closed"  # the admin arm's ω: closed form, or profiled on the first batch
    eval_every: int = 20
    task: str = "reverse"
    output_change_scale: str = "O(logn)"
    batch_size: int = 16
    d_model: int = 64
    n_heads: int = 4
    digits: int = 6
    seed: int = 0
    device: str = "cpu"
    threads: int = 2
    schedule: str | None = field(default=None, compare=False)  # the reason for a deep schedule, if any

    def __post_init__(self):
        chosen = {k: v for k, v in schedule_for(self.layers).items() if getattr(self, k) is None}
        for k, v in chosen.items():
            object.__setattr__(self, k, v)  # frozen: set once, here
        if self.layers > SHALLOW and chosen:
            object.__setattr__(self, "schedule", f"by depth, {self.layers} > {SHALLOW} layers: " + ", ".join(
                f"{k} {v:g}" for k, v in chosen.items()) + f" ({LR_RULE}; the rule map, tutorial.md Section 12)")


def available_devices() -> list[str]:
    return ["cpu"] + ["cuda"] * torch.cuda.is_available() + ["mps"] * torch.backends.mps.is_available()


def device_name(device: str) -> str:  # cpu, or e.g. cuda (NVIDIA H100 80GB HBM3)
    return f"cuda ({torch.cuda.get_device_name(device)})" if device == "cuda" else device


def configuration(cfg: TrainConfig) -> dict:
    """The settings as the first line of output and --json's "config" show them, with the machine."""
    shown = {k: v for k, v in asdict(cfg).items() if not (k == "schedule" and v is None)}
    return shown | dict(device=device_name(cfg.device), torch=torch.__version__)


def configuration_line(settings: dict) -> str:
    return "configuration: " + ", ".join(f"{k}={v}" for k, v in settings.items())


# --- The command line: every bad value is argparse's exit 2, naming the flag and what it allows ---
class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except those the depth sets (None until TrainConfig)."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d, shallow, deep = TrainConfig(), schedule_for(SHALLOW), schedule_for(SHALLOW + 1)
    p = argparse.ArgumentParser(description="Vanilla Post-LN vs Admin on a toy sequence task.", add_help=add_help,
                                formatter_class=DefaultsHelp)
    p.add_argument("--layers", type=int, default=d.layers, help=f"Transformer layers, 2 sub-layers each; deeper "
                   f"than {SHALLOW}: {LR_RULE}, warmup {deep['warmup']}, steps {deep['steps']}")
    p.add_argument("--arms", type=lambda text: text.split(","), default=d.arms,
                   help=f"comma-separated residual kinds to compare, from {', '.join(ARMS)}")
    for name, kind, text in (("steps", int, "training budget per arm"), ("lr", float, "peak Adam learning rate"),
                             ("warmup", int, "linear warm-up steps to --lr")):
        p.add_argument(f"--{name}", type=kind, help=f"{text} (default: {shallow[name]:g} up to {SHALLOW} layers, "
                       "deeper by depth)")
    p.add_argument("--omega", choices=("closed", "profiled"), default=d.omega,
                   help="admin arm: ω from the closed form, or profiled on the first batch (the paper)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between evaluations")
    add_model_flags(p)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the curves, if matplotlib is installed")
    return p


def add_model_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of the model, data and machine (the lab's scripts and the examples share them)."""
    d = TrainConfig()
    p.add_argument("--task", choices=("reverse", "copy"), default=d.task, help="what the answer is")
    p.add_argument("--output-change-scale", choices=("O(logn)", "O(1)"), default=d.output_change_scale,
                   help="admin arm: ω = admin.calculate_init(2 * layers, this)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per training batch")
    p.add_argument("--d-model", type=int, default=d.d_model, help="model width C (d_ff = 4C)")
    p.add_argument("--n-heads", type=int, default=d.n_heads, help="attention heads; must divide --d-model")
    p.add_argument("--digits", type=int, choices=range(1, 17), default=d.digits, metavar="{1..16}",
                   help="length of each digit string")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights and data: same seed, same numbers")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: cuda if there is one, else mps if there is one, else cpu")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads on the CPU")
    return p


LEAST = dict(layers=1, steps=1, warmup=0, eval_every=1, batch_size=1, d_model=1, n_heads=1, seed=0, threads=1)


def finish(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """What argparse alone does not check (exit 2 naming the flag), and --device auto resolved. A flag
    the parser lacks (a lab script's parser lacks some) is skipped."""
    for name, low in LEAST.items():
        if isinstance(getattr(args, name, None), int) and getattr(args, name) < low:
            p.error(f"argument --{name.replace('_', '-')}: must be a whole number >= {low}, got {getattr(args, name)}")
    lr = getattr(args, "lr", None)
    if isinstance(lr, float) and not (math.isfinite(lr) and lr > 0):
        p.error(f"argument --lr: must be a positive number, got {lr}")
    found = available_devices()
    if args.device not in found + ["auto"]:
        p.error(f"argument --device: {args.device} is not available on this machine (available: {', '.join(found)})")
    if args.device == "auto":  # the first of these the machine has
        args.device = next(d for d in ("cuda", "mps", "cpu") if d in found)
    if args.d_model % args.n_heads:
        p.error(f"argument --n-heads: must divide --d-model={args.d_model}, got {args.n_heads}")
    for flag, path in (("--json", getattr(args, "json", None)), ("--plot", getattr(args, "plot", None))):
        if path and (os.path.isdir(path) or not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)):
            p.error(f"argument {flag}: cannot write to {path!r} (need a writable file path)")
    return args


def parse_command_line(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    """The command line as parsed (its output paths) and the training configuration it asks for."""
    p = build_parser()
    args = finish(p, p.parse_args(argv))
    if set(args.arms) - set(ARMS) or len(set(args.arms)) < len(args.arms):
        p.error(f"argument --arms: must be distinct arms from {', '.join(ARMS)}, got {','.join(args.arms)!r}")
    if args.omega == "profiled" and "admin" not in args.arms:
        p.error(f"argument --omega: profiled applies to the admin arm, which --arms={','.join(args.arms)} lacks")
    return args, TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return parse_command_line(argv)[1]


def start(cfg) -> None:
    """torch's threads; subnormals flushed to zero (a stuck deep model's gradients, slow on the CPU)."""
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)


# --- The task and its data ---
def digit_strings(n: int, digits: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(10, (n, digits), generator=gen)  # (n, digits)


def string_codes(strings: torch.Tensor) -> torch.Tensor:  # one int64 per string, for set membership
    return (strings * 10 ** torch.arange(strings.size(1))).sum(1)  # digits <= 16 fit in int64


def to_example(strings: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit strings (n, D) -> model input (n, 2D) and target (n, 2D), as in the module docstring."""
    answer = strings.flip(1) if task == "reverse" else strings
    sequence = torch.cat([strings, torch.full((strings.size(0), 1), SEP), answer], 1)  # (n, 2D + 1)
    target = sequence[:, 1:].clone()
    target[:, : strings.size(1)] = IGNORE  # the prompt and the separator are not asked for
    return sequence[:, :-1], target  # (n, 2D), (n, 2D)


class ToyData:
    """A fixed held-out set, and training batches without a held-out string; every arm gets the same."""
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


# --- The model of one arm (weights drawn from cfg.seed: the same for every arm), its step, its evaluation ---
def make_model(arm: str, cfg: TrainConfig) -> admin.PostLNTransformer:
    torch.manual_seed(cfg.seed)
    model_config = admin.TransformerConfig(
        vocab_size=VOCAB, max_len=2 * cfg.digits, d_model=cfg.d_model, n_heads=cfg.n_heads,
        d_ff=4 * cfg.d_model, n_layers=cfg.layers, residual=arm, output_change_scale=cfg.output_change_scale)
    return admin.PostLNTransformer(model_config).to(cfg.device)


def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """lr / peak at `step`: linear warm-up (none for 0), then linear decay to zero at the end."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def make_step(model: admin.PostLNTransformer, cfg: TrainConfig):
    """step(inp, target, lr) -> loss: one Adam update (lab/cuda_graph.py's graphed_step is the other)."""
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


def evaluate(model, data: ToyData) -> tuple[float, float, torch.Tensor]:
    """Held-out loss, exact-match accuracy and the argmax predictions (n, 2D)."""
    with torch.no_grad():
        logits = model.eval()(data.eval_input)  # (n, 2D, V)
    model.train()
    pred = logits.argmax(-1)
    exact = ((pred == data.eval_target) | (data.eval_target == IGNORE)).all(1).float().mean()
    return loss_of(logits, data.eval_target).item(), exact.item(), pred


# --- Training one arm: the loop, and what it returns ---
@dataclass
class ArmResult:
    arm: str
    history: list = field(default_factory=list)  # [step, held-out loss, accuracy]
    steps: int = 0
    diverged_at: int | None = None
    last_finite_loss: float | None = None
    seconds: float = 0.0
    step_ms: float = float("nan")  # median training-step time
    examples: list = field(default_factory=list)  # three held-out answers, in words
    interrupted: bool = False
    model: admin.PostLNTransformer | None = None
    eval_seconds: list = field(default_factory=list)  # elapsed at each evaluation
    step_times: list = field(default_factory=list)  # seconds of each training step
    final_loss = property(lambda self: self.history[-1][1] if self.history else float("nan"))
    accuracy = property(lambda self: self.history[-1][2] if self.history else 0.0)

    @property
    def verdict(self) -> str:
        """The rule every script uses: diverged, learned (99% exact), or how far it got."""
        if self.diverged_at is not None:
            return f"diverged at step {self.diverged_at}"
        if self.accuracy >= SOLVED:
            return "learned"
        return "did not learn" if self.accuracy < 0.01 else f"partly learned ({100 * self.accuracy:.0f}%)"


def describe(inp: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, task: str) -> str:
    n = inp.size(0) // 2
    asked, want, got = (" ".join(map(str, t.tolist())) for t in (inp[:n], target[n:], pred[n:]))
    verb = "reversed" if task == "reverse" else "copied"
    return f"{verb} {asked} -> expected {want}, got {got} ({'ok' if want == got else 'wrong'})"


def eval_line(arm: str, step: int, loss: float, accuracy: float, seconds: float) -> str:
    return f"  {arm:<8} step {step:>5}  loss {loss:7.4f}  acc {100 * accuracy:6.2f}%  {seconds:6.1f}s"


def stop_line(r: ArmResult) -> str:  # an arm that ended early: diverged, or interrupted
    if r.diverged_at is not None:
        return f"  {r.arm} {r.verdict}; last finite loss {r.last_finite_loss}"
    return f"  {r.arm} interrupted at step {r.steps}"


def train_arm(arm: str, cfg: TrainConfig, data: ToyData, log, *, model=None, watch=None,
              until_solved: bool = True, new_step=make_step) -> ArmResult:
    """Train `model` (default: make_model(arm, cfg)) for cfg.steps, evaluating every cfg.eval_every; stop
    at a non-finite loss or (until_solved) after 3 evaluations at 99%. The lab's hooks: watch(i, model)
    sees the model after i steps; new_step(model, cfg) makes the step (make_step, or a CUDA graph)."""
    r = ArmResult(arm, model=make_model(arm, cfg) if model is None else model)
    if arm == "admin" and cfg.omega == "profiled":  # the paper's ω, from one pass over the first batch
        admin.profile_omega(r.model, next(data.batches(cfg.batch_size))[0])
    step, batches = new_step(r.model, cfg), data.batches(cfg.batch_size)
    t_start, solved_evals = time.perf_counter(), 0
    try:
        for i in range(cfg.steps + 1):
            if watch is not None:
                watch(i, r.model)
            if i % cfg.eval_every == 0 or i == cfg.steps:
                held_out_loss, acc, pred = evaluate(r.model, data)
                r.history.append([i, held_out_loss, acc])
                r.eval_seconds.append(time.perf_counter() - t_start)
                log(eval_line(arm, i, held_out_loss, acc, r.eval_seconds[-1]))
                solved_evals = solved_evals + 1 if acc >= SOLVED else 0
                if (until_solved and solved_evals >= SOLVED_EVALS) or i == cfg.steps:
                    break
            inp, target = next(batches)
            t0 = time.perf_counter()
            loss = step(inp, target, cfg.lr * lr_factor(i, cfg.warmup, cfg.steps)).item()
            r.step_times.append(time.perf_counter() - t0)  # .item() waited for the device
            if not math.isfinite(loss):
                r.diverged_at = i
                break
            r.last_finite_loss, r.steps = loss, i + 1
    except KeyboardInterrupt:
        r.interrupted = True
    r.seconds = time.perf_counter() - t_start
    r.step_ms = 1000 * statistics.median(r.step_times) if r.step_times else float("nan")
    if r.diverged_at is not None or r.interrupted:
        log(stop_line(r))
    else:  # it ran to its end, an evaluation: pred holds that evaluation's predictions
        r.examples = [describe(data.eval_input[k], data.eval_target[k], pred[k], cfg.task) for k in range(3)]
    return r


# --- The run: every arm, the fold of the trained Admin model, the summary and what to conclude ---
def arm_title(arm: str, cfg: TrainConfig) -> str:
    omega = (f"ω = {admin.calculate_init(2 * cfg.layers, cfg.output_change_scale):.3f}"
             if cfg.omega == "closed" else "ω profiled on the first batch")
    deepnorm = (f"α = {admin.deepnorm_alpha(cfg.layers):.3f}, "
                f"V, output and FFN weights start × {admin.deepnorm_beta(cfg.layers):.3f}")
    kind = dict(vanilla="Post-LN", admin=f"Post-LN, {omega}", preln="Pre-LN", deepnorm=deepnorm)[arm]
    return f"training {arm} ({kind})"


@torch.no_grad()
def fold_error(model: admin.PostLNTransformer, inp: torch.Tensor) -> float:
    """How far the logits of admin.reparameterize(model) are from the model's: max |Δ| / max |logit|."""
    want = model.eval()(inp)
    return ((admin.reparameterize(model).eval()(inp) - want).abs().max() / want.abs().max()).item()


def run(cfg: TrainConfig, log, new_step=make_step) -> tuple[list[ArmResult], float | None]:
    """Train every arm on the same data; return the results and the trained Admin model's fold error."""
    results, data = [], ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    for arm in cfg.arms:
        log(arm_title(arm, cfg))
        results.append(train_arm(arm, cfg, data, log, new_step=new_step))
        if results[-1].interrupted:
            break
    trained = next((r.model for r in results if r.arm == "admin" and r.examples), None)  # ran to its end
    return results, None if trained is None else fold_error(trained, data.eval_input[: cfg.batch_size])


def summary_table(results: list[ArmResult], folded: float | None) -> str:
    """One row per arm; `folded`: the trained Admin model's relative logit error after the fold."""
    lines = [f"{'arm':<8} {'steps':>6} {'final loss':>10} {'accuracy':>9}  {'verdict':<26}"
             f"{'seconds':>8} {'train ms/step':>14}"]
    for r in results:
        lines.append(f"{r.arm:<8} {r.steps:>6} {r.final_loss:>10.4f} {100 * r.accuracy:>8.2f}%  "
                     f"{r.verdict + (' (interrupted)' if r.interrupted else ''):<26}"
                     f"{r.seconds:>8.1f} {r.step_ms:>14.1f}")
    if folded is not None:  # the fold is exact: below the bound, the digits are float32 rounding
        same = (f"same logits (relative error < {FOLD_BOUND:.0e}: float32 rounding)" if folded < FOLD_BOUND
                else f"logits DIFFER (relative error {folded:.1e} >= {FOLD_BOUND:.0e})")
        lines.append(f"admin folded by reparameterize(): plain Post-LN, {same}")
    return "\n".join(lines)


def text_plot(histories: dict[str, list], height: int = 10, width: int = 60) -> str:
    """Held-out loss against step, one letter per arm (first letter; '*' where two overlap)."""
    curves = {arm: [(step, loss) for step, loss, _ in h if math.isfinite(loss)] for arm, h in histories.items()}
    curves = {a: c for a, c in curves.items() if c}
    if not curves:
        return "(nothing to plot)"
    last = max(c[-1][0] for c in curves.values()) or 1
    top = min(max(loss for c in curves.values() for _, loss in c), 3 * CHANCE_LOSS)
    grid = [[" "] * (width + 1) for _ in range(height + 1)]
    for arm, curve in curves.items():
        for step, loss in curve:
            row, col = height - round(min(loss, top) / top * height), round(step / last * width)  # loss 0: bottom
            grid[row][col] = arm[0] if grid[row][col] in (" ", arm[0]) else "*"
    lines = [f"{top * (height - i) / height:7.2f} |" + "".join(row) for i, row in enumerate(grid)]
    return "\n".join(lines + [" " * 8 + "+" + "-" * (width + 1), " " * 8 + f"step 0{str(last).rjust(width - 4)}",
                              " " * 8 + "held-out loss; " + ", ".join(f"{a[0]} = {a}" for a in curves)
                              + f"; chance = ln 10 = {CHANCE_LOSS:.2f}"])


def conclusion(results: list[ArmResult], cfg: TrainConfig) -> str:
    v, a = (next((r for r in results if r.arm == arm), None) for arm in ("vanilla", "admin"))
    if v is None or a is None or v.interrupted or a.interrupted:
        return "Run the vanilla and admin arms to completion to compare them."
    if a.verdict == "learned" and v.verdict != "learned":
        return (f"Conclusion: at {cfg.layers} layers plain Post-LN {v.verdict}, while Admin learned the task "
                f"from the same weights, data and optimizer: the only change is ω on the shortcut. "
                f"(In our stability map vanilla learned only at 6 layers; at 12 it learned with 4x the "
                f"steps and 200 warm-up steps: tutorial.md, Sections 5 and 11.)")
    if a.verdict == "learned":
        return (f"Conclusion: at {cfg.layers} layers both Post-LN arms learn; the failure of vanilla "
                f"Post-LN is a matter of depth (try --layers 48).")
    return (f"Conclusion: vanilla {v.verdict}, admin {a.verdict} at peak lr {cfg.lr:g} with {cfg.warmup} "
            f"warm-up steps. Deep Admin fails when the learning rate climbs too far too fast: halve "
            f"it (--lr {float(f'{cfg.lr / 2:.2g}'):g}) or double the warm-up (--warmup {2 * cfg.warmup}); "
            f"the rule map behind the defaults is in tutorial.md, Section 12.")


def the_end(results: list[ArmResult], folded: float | None, cfg: TrainConfig, seconds: float) -> str:
    """All that follows the training lines: the table, the text plot, examples, the conclusion."""
    parts = ["\nsummary (train ms/step: the median step)", summary_table(results, folded),
             "\n" + text_plot({r.arm: r.history for r in results})]
    parts += [f"\n{r.arm}, held-out examples:\n" + "\n".join("  " + e for e in r.examples)
              for r in results if r.examples]
    return "\n".join(parts + ["\n" + conclusion(results, cfg)]) + f"  ({seconds:.1f}s in all)"


def pyplot():
    """matplotlib.pyplot, drawing to files only, or None where matplotlib (optional) is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def no_figure(path: str) -> str:  # the text plot shows the same curves
    return f"no figure at {path}: drawing it needs matplotlib, which is optional (pip install matplotlib)"


def plot_curves(path: str, results: list[ArmResult], cfg: TrainConfig) -> str:
    """The held-out loss curves as a PNG at `path`, and the line that says so (or how to get it)."""
    plt = pyplot()
    if plt is None:
        return no_figure(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for r in results:
        ax.plot([h[0] for h in r.history], [h[1] for h in r.history], label=f"{r.arm}: {r.verdict}")
    ax.axhline(CHANCE_LOSS, color="grey", ls="--", lw=1, label="chance (ln 10)")
    ax.set(xlabel="training step", ylabel="held-out loss",
           title=f"{cfg.layers}-layer models, {cfg.task} {cfg.digits} digits, seed {cfg.seed}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"wrote {path}"


def main(argv: list[str] | None = None, new_step=make_step) -> dict:
    """Run the demo as the command line asks; return what --json writes."""
    args, cfg = parse_command_line(argv)
    start(cfg)
    log = lambda line: print(line, flush=True)  # noqa: E731
    settings = configuration(cfg)
    log(configuration_line(settings))
    t0 = time.perf_counter()
    results, folded = run(cfg, log, new_step)
    log(the_end(results, folded, cfg, time.perf_counter() - t0))
    arms = {r.arm: {"final_loss": r.final_loss, "accuracy": r.accuracy, "diverged": r.diverged_at is not None,
                    "diverged_at": r.diverged_at, "verdict": r.verdict, "steps": r.steps, "seconds": r.seconds,
                    "train_ms_per_step": r.step_ms, "interrupted": r.interrupted, "history": r.history,
                    "examples": r.examples, "eval_seconds": r.eval_seconds, "last_finite_loss": r.last_finite_loss}
            for r in results}
    out = {"config": settings, "arms": arms, "fold_error": folded}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        log(plot_curves(args.plot, results, cfg))
    return out


if __name__ == "__main__":
    main()
