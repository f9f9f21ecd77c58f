"""The depth demo: deep vanilla Post-LN fails on a toy task, the same model with Admin learns it.

    python train_toy.py --layers 48        # vanilla Post-LN vs Admin, 48 layers (96 sub-layers)
    python train_toy.py --layers 6         # both learn: the failure is a matter of depth
    python train_toy.py --measure          # the amplification effect itself, no training
    python train_toy.py --device cuda      # on a GPU (auto picks it), each step replayed as a CUDA graph

Every arm trains the same admin.PostLNTransformer (same initial weights: ω adds no random draws), on the
same batches, with the same optimizer and schedule; only the residual differs:
    vanilla  x_i = LN(x_{i-1} + f_i(x_{i-1}))           Post-LN
    admin    x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))     Post-LN, ω = admin.calculate_init(2 * layers)
    preln    x_i = x_{i-1} + f_i(LN(x_{i-1}))           Pre-LN baseline (optional arm)

The task, a worked example (--task reverse --digits 4). Tokens 0-9 are digits, 10 is the separator "|":
    digits     3 1 4 1
    sequence   3 1 4 1 | 1 4 1 3                        (copy: 3 1 4 1 | 3 1 4 1)
    input      3 1 4 1 | 1 4 1                          the sequence without its last token
    target     - - - - 1 4 1 3                          the next token; "-" = ignore_index (prompt)
The loss covers only the answer. Accuracy is exact match of whole answers on a held-out set whose
digit strings are never drawn for training. It is measured by one teacher-forced pass: every answer
token is the argmax given the true earlier ones exactly when greedy decoding reproduces the answer.

Optimizer: Adam, β = (0.9, 0.98) as in the paper's recipes; linear warm-up to --lr, then linear decay to
zero at the end of --steps; no gradient clipping (it would hide the instability this demo is about).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import admin

SEP, VOCAB, IGNORE = 10, 11, -100
ARMS = ("vanilla", "admin", "preln")
TASKS = ("reverse", "copy")
TASK_VERBS = {"reverse": "reversed", "copy": "copied"}
DEVICES = ("auto", "cpu", "cuda", "mps")
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over the ten digits
SOLVED, SOLVED_EVALS = 0.99, 3  # "learned": 99% exact; stop an arm that held it for 3 evaluations


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


def digit_strings(n: int, digits: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(10, (n, digits), generator=gen)  # (n, digits)


def string_codes(strings: torch.Tensor) -> torch.Tensor:
    """Each digit string as one integer, for set membership (digits <= 16 fits in int64)."""
    powers = 10 ** torch.arange(strings.size(1), dtype=torch.long)
    return (strings * powers).sum(1)


def to_example(strings: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit strings (n, D) -> model input (n, 2D) and target (n, 2D), as in the module docstring."""
    answer = strings.flip(1) if task == "reverse" else strings
    sep = torch.full((strings.size(0), 1), SEP)
    sequence = torch.cat([strings, sep, answer], 1)  # (n, 2D + 1)
    target = sequence[:, 1:].clone()
    target[:, : strings.size(1)] = IGNORE  # the prompt and the separator are not asked for
    return sequence[:, :-1], target  # (n, 2D), (n, 2D)


class ToyData:
    """A fixed held-out set, and training batches that never contain a held-out string."""

    def __init__(self, task: str, digits: int, batch_size: int, seed: int, device: str = "cpu"):
        self.task, self.digits, self.batch_size, self.device = task, digits, batch_size, device
        self.gen = torch.Generator().manual_seed(seed)
        n_eval = min(128, 10**digits // 5)
        drawn = torch.unique(string_codes(digit_strings(4 * n_eval, digits, self.gen)))  # sorted
        held_out = drawn[torch.randperm(len(drawn), generator=self.gen)[:n_eval]]  # unsorted: unbiased
        self.held_out_codes = held_out
        strings = torch.stack([(held_out // 10**k) % 10 for k in range(digits)], 1)  # decode codes
        # Drawn on the CPU from one generator, then moved: the same strings on every device.
        self.eval_input, self.eval_target = (t.to(device) for t in to_example(strings, task))

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        strings = digit_strings(self.batch_size, self.digits, self.gen)
        clash = torch.isin(string_codes(strings), self.held_out_codes)
        while clash.any():  # redraw the rows that hit the held-out set
            strings[clash] = digit_strings(int(clash.sum()), self.digits, self.gen)
            clash = torch.isin(string_codes(strings), self.held_out_codes)
        inp, target = to_example(strings, self.task)
        return inp.to(self.device), target.to(self.device)


def describe(inp: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, task: str) -> str:
    digits = inp.size(0) // 2
    asked = " ".join(map(str, inp[:digits].tolist()))
    want = " ".join(map(str, target[digits:].tolist()))
    got = " ".join(map(str, pred[digits:].tolist()))
    mark = "ok" if want == got else "wrong"
    return f"{TASK_VERBS[task]} {asked} -> expected {want}, got {got} ({mark})"


# ---------------------------------------------------------------------------------------------------
# Training one arm
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
    infer_ms: float = float("nan")  # median forward time on one batch, no grad
    examples: list = field(default_factory=list)
    interrupted: bool = False
    model: admin.PostLNTransformer | None = None

    @property
    def final_loss(self) -> float:
        return self.history[-1][1] if self.history else float("nan")

    @property
    def accuracy(self) -> float:
        return self.history[-1][2] if self.history else 0.0

    @property
    def verdict(self) -> str:
        if self.diverged_at is not None:
            return f"diverged at step {self.diverged_at}"
        if self.accuracy >= SOLVED:
            return "learned"
        if self.accuracy < 0.01:
            return "did not learn"
        return f"partly learned ({100 * self.accuracy:.0f}%)"


@torch.no_grad()
def evaluate(model, data: ToyData) -> tuple[float, float, torch.Tensor]:
    """Held-out loss, exact-match accuracy and the argmax predictions (n, 2D)."""
    model.eval()
    logits = model(data.eval_input)  # (n, 2D, V)
    model.train()
    loss = F.cross_entropy(logits.flatten(0, 1), data.eval_target.flatten(), ignore_index=IGNORE)
    pred = logits.argmax(-1)
    answer = data.eval_target != IGNORE
    exact = ((pred == data.eval_target) | ~answer).all(1).float().mean()
    return loss.item(), exact.item(), pred


def make_model(arm: str, args, seed: int) -> admin.PostLNTransformer:
    torch.manual_seed(seed)  # the same initial weights for every arm
    config = admin.TransformerConfig(
        vocab_size=VOCAB, max_len=2 * args.digits, d_model=args.d_model, n_heads=args.n_heads,
        d_ff=4 * args.d_model, n_layers=args.layers, residual=arm,
        output_change_scale=args.output_change_scale)
    return admin.PostLNTransformer(config).to(args.device)


def sync(device: str) -> None:
    """Wait for the device to finish what was queued, so that a clock read after it is honest."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def inference_ms(model, inp: torch.Tensor, repeats: int = 10) -> float:
    model.eval()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(inp)
        sync(inp.device)
        times.append(time.perf_counter() - start)
    model.train()
    return 1000 * statistics.median(times[1:])  # the first call warms caches


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """The learning rate at `step` as a fraction of --lr: linear warm-up over `warmup` steps, then
    linear decay to zero at the end of the budget (0 warm-up steps: start at the peak)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def cuda_graph_step(model, args):
    """The training step of train_arm — forward, loss, backward, Adam — as one CUDA graph.

    Eager PyTorch launches a few hundred small kernels per layer and step, and at this toy size the GPU
    waits on Python for most of them; a graph records them once and replays them with one call. A
    graph replays fixed memory, so the batch is copied into static tensors, the learning rate is a
    tensor that the optimizer reads on the GPU (filled before each replay), and Adam is `capturable`.
    The first steps run eagerly on a side stream: they allocate Adam's state and warm the kernels, as
    capture requires. Returns step(inp, target, lr) -> loss, a 0-dim tensor; dropout must be 0."""
    lr = torch.tensor(args.lr, device=args.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), capturable=True, foreach=True)
    graph, side, static = torch.cuda.CUDAGraph(), torch.cuda.Stream(), {}

    def forward_backward_adam(inp, target):
        loss = F.cross_entropy(model(inp).flatten(0, 1), target.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)  # in the graph, backward then writes the gradients afresh
        loss.backward()
        opt.step()
        return loss

    def step(inp, target, lr_now: float):
        lr.fill_(lr_now)
        if not static:
            static.update(calls=0, inp=inp.clone(), target=target.clone())
        if static["calls"] < 3:  # warm-up: ordinary steps on a side stream
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = forward_backward_adam(inp, target)
            torch.cuda.current_stream().wait_stream(side)
        else:
            if static["calls"] == 3:  # record once; recording runs nothing, so replay this step too
                with torch.cuda.graph(graph):
                    static["loss"] = forward_backward_adam(static["inp"], static["target"])
            static["inp"].copy_(inp)
            static["target"].copy_(target)
            graph.replay()
            loss = static["loss"]
        static["calls"] += 1
        return loss
    return step


def train_arm(arm: str, args, log) -> ArmResult:
    result = ArmResult(arm)
    model = result.model = make_model(arm, args, args.seed)
    data = ToyData(args.task, args.digits, args.batch_size, args.seed, args.device)  # same batches per arm
    graphed = cuda_graph_step(model, args) if args.cuda_graph else None
    if graphed is None:
        fused = torch.device(args.device).type in ("cpu", "cuda")  # one fused kernel where torch has it
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), fused=fused)
    start, step_times, solved_evals = time.perf_counter(), [], 0
    try:
        for step in range(args.steps + 1):
            if step % args.eval_every == 0 or step == args.steps:
                loss, acc, _ = evaluate(model, data)
                result.history.append([step, loss, acc])
                log(f"  {arm:<8} step {step:>5}  loss {loss:7.4f}  acc {100 * acc:6.2f}%  "
                    f"{time.perf_counter() - start:6.1f}s")
                solved_evals = solved_evals + 1 if acc >= SOLVED else 0
                if solved_evals >= SOLVED_EVALS:
                    break
            if step == args.steps:
                break
            inp, target = data.batch()
            lr_now = args.lr * lr_factor(step, args.warmup, args.steps)
            t0 = time.perf_counter()
            if graphed is not None:  # the same step, replayed as a CUDA graph (--cuda-graph)
                loss = graphed(inp, target, lr_now)
            else:
                logits = model(inp)  # (B, 2D, V)
                loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
            if not math.isfinite(loss.item()):
                result.diverged_at = step
                log(f"  {arm} diverged at step {step}; last finite loss {result.last_finite_loss}")
                break
            result.last_finite_loss = loss.item()
            if graphed is None:
                for group in opt.param_groups:
                    group["lr"] = lr_now
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sync(args.device)
            step_times.append(time.perf_counter() - t0)
            result.steps = step + 1
    except KeyboardInterrupt:
        result.interrupted = True
        log(f"  {arm} interrupted at step {result.steps}")
    result.seconds = time.perf_counter() - start
    if step_times:
        result.step_ms = 1000 * statistics.median(step_times)
    if result.diverged_at is None and not result.interrupted:
        _, _, pred = evaluate(model, data)
        result.examples = [describe(data.eval_input[i], data.eval_target[i], pred[i], args.task)
                           for i in range(3)]
        result.infer_ms = inference_ms(model, data.eval_input[: args.batch_size])
    return result


# ---------------------------------------------------------------------------------------------------
# --measure: the amplification effect, |F(x, W) − F(x, W*)| after one small update, against depth
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def output_change(model: admin.PostLNTransformer, idx: torch.Tensor, delta: float, seed: int) -> float:
    """|F(x, W*) − F(x, W)|² / |F(x, W)|², where W* adds ±delta (random signs, drawn from `seed`)
    to every weight matrix of every block; F is model.hidden, the last layer's output. ω and the
    embeddings are not perturbed."""
    before = model.hidden(idx)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.dim() == 2:
            signs = torch.randint(2, p.shape, generator=gen).to(p.device, p.dtype) * 2 - 1
            p.add_(delta * signs)
    after = model.hidden(idx)
    return ((after - before).pow(2).sum() / before.pow(2).sum()).item()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), as statistics.quantiles computes them."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure(args, log) -> list[dict]:
    """One row per (depth, arm): the output change of `args.repeats` fresh models (seeds seed,
    seed + 1, …, each with its own random signs), their median and quartiles."""
    rows = []
    idx, _ = ToyData(args.task, args.digits, 16, args.seed, args.device).batch()
    for layers in args.measure:
        sized = argparse.Namespace(**{**vars(args), "layers": layers})
        for arm in args.arms:
            draws = [output_change(make_model(arm, sized, args.seed + r).double(), idx, args.delta,
                                   args.seed + r) for r in range(args.repeats)]
            q1, median, q3 = quartiles(draws)
            rows.append({"arm": arm, "layers": layers, "output_change": median, "q1": q1, "q3": q3,
                         "draws": draws})
        log("  " + "  ".join(f"{r['arm']} {r['layers']} layers: {r['output_change']:.3e}"
                             for r in rows if r["layers"] == layers))
    return rows


def measure_table(rows: list[dict], arms: list[str]) -> str:
    """Medians, the spread (third over first quartile) and the growth of the median over depth."""
    depths = sorted({r["layers"] for r in rows})
    row = {(r["arm"], r["layers"]): r for r in rows}
    change = {key: r["output_change"] for key, r in row.items()}
    head = f"{'layers':>6} {'sub-layers':>10}" + "".join(
        f" {a + ' median':>15} {'q3/q1':>6} {'growth':>7}" for a in arms)
    if "vanilla" in arms and "admin" in arms:
        head += f" {'vanilla/admin':>14}"
    lines = [head]
    for d in depths:
        line = f"{d:>6} {2 * d:>10}"
        for a in arms:
            spread = row[a, d]["q3"] / row[a, d]["q1"]
            line += f" {change[a, d]:>15.3e} {spread:>5.2f}x {change[a, d] / change[a, depths[0]]:>6.1f}x"
        if "vanilla" in arms and "admin" in arms:
            line += f" {change['vanilla', d] / change['admin', d]:>13.1f}x"
        lines.append(line)
    growth = ", ".join(f"{a} {change[a, depths[-1]] / change[a, depths[0]]:.1f}x" for a in arms)
    ratio = 2 * depths[-1] / (2 * depths[0])
    lines.append(f"From {depths[0]} to {depths[-1]} layers ({ratio:g}x the sub-layers) the median output "
                 f"change grew: {growth}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------


FOLD_BOUND = 1e-4  # relative logit error of the fold: float32 rounding gives ~1e-7, a wrong fold ~1e-2


def fold_verdict(relative_error: float) -> str:
    """The folded model's relative logit error, said against FOLD_BOUND: the fold is exact, so any
    difference is float32 rounding, whose digits vary between machines and mean nothing."""
    if relative_error < FOLD_BOUND:
        return f"same logits (relative error < {FOLD_BOUND:.0e}: float32 rounding)"
    return f"logits DIFFER (relative error {relative_error:.1e} >= {FOLD_BOUND:.0e})"


def summary_table(results: list[ArmResult], folded: tuple[float, float] | None) -> str:
    """One row per arm; `folded` is (inference ms, relative logit error) of the Admin model after
    reparameterize, when there is one."""
    lines = [f"{'arm':<8} {'steps':>6} {'final loss':>10} {'accuracy':>9}  {'verdict':<26}"
             f"{'seconds':>8} {'train ms/step':>14} {'infer ms':>9}"]
    for r in results:
        lines.append(f"{r.arm:<8} {r.steps:>6} {r.final_loss:>10.4f} {100 * r.accuracy:>8.2f}%  "
                     f"{r.verdict + (' (interrupted)' if r.interrupted else ''):<26}"
                     f"{r.seconds:>8.1f} {r.step_ms:>14.1f} {r.infer_ms:>9.2f}")
    if folded is not None:
        label = f"admin folded by reparameterize(): plain Post-LN, {fold_verdict(folded[1])}"
        lines.append(f"{label:<86}{folded[0]:>9.2f}")
    return "\n".join(lines)


def text_plot(results: list[ArmResult], height: int = 10, width: int = 60) -> str:
    """Held-out loss against step, one letter per arm (first letter; '*' where two overlap)."""
    curves = {r.arm: [(step, loss) for step, loss, _ in r.history if math.isfinite(loss)]
              for r in results}
    curves = {a: c for a, c in curves.items() if c}
    if not curves:
        return "(nothing to plot)"
    last = max(c[-1][0] for c in curves.values()) or 1
    top = min(max(loss for c in curves.values() for _, loss in c), 3 * CHANCE_LOSS)
    grid = [[" "] * (width + 1) for _ in range(height + 1)]
    for arm, curve in curves.items():
        for step, loss in curve:
            row = height - round(min(loss, top) / top * height)  # loss 0 on the bottom row
            col = round(step / last * width)
            grid[row][col] = arm[0] if grid[row][col] in (" ", arm[0]) else "*"
    lines = [f"{top * (height - i) / height:7.2f} |" + "".join(row) for i, row in enumerate(grid)]
    lines.append(" " * 8 + "+" + "-" * (width + 1))
    lines.append(" " * 8 + f"step 0{str(last).rjust(width - 4)}")
    lines.append(" " * 8 + "held-out loss; " + ", ".join(f"{a[0]} = {a}" for a in curves)
                 + f"; chance = ln 10 = {CHANCE_LOSS:.2f}")
    return "\n".join(lines)


def conclusion(results: list[ArmResult], layers: int) -> str:
    by_arm = {r.arm: r for r in results}
    v, a = by_arm.get("vanilla"), by_arm.get("admin")
    if v is None or a is None or v.interrupted or a.interrupted:
        return "Run the vanilla and admin arms to completion to compare them."
    if a.verdict == "learned" and v.verdict != "learned":
        return (f"Conclusion: at {layers} layers plain Post-LN {v.verdict}, while Admin learned the task "
                f"from the same weights, data and optimizer: the only change is ω on the shortcut. "
                f"(In our stability map vanilla learned at 6 layers, and at 12 only with 4x the steps "
                f"and 200 warm-up steps: tutorial.md, Section 5.)")
    if a.verdict == "learned" and v.verdict == "learned":
        return (f"Conclusion: at {layers} layers both Post-LN arms learn; the failure of vanilla "
                f"Post-LN is a matter of depth (try --layers 48).")
    return f"Conclusion: vanilla {v.verdict}, admin {a.verdict}; see the table above."


def result_json(r: ArmResult) -> dict:
    return {"final_loss": r.final_loss, "accuracy": r.accuracy, "diverged": r.diverged_at is not None,
            "diverged_at": r.diverged_at, "verdict": r.verdict, "steps": r.steps,
            "seconds": r.seconds, "train_ms_per_step": r.step_ms, "infer_ms": r.infer_ms,
            "interrupted": r.interrupted, "history": r.history}


def save_plot(path: str, results: list[ArmResult] | None, rows: list[dict] | None, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if rows is not None:
        n = [2 * d for d in args.measure]
        for arm in args.arms:
            arm_rows = [r for r in rows if r["arm"] == arm]
            line, = ax.loglog(n, [r["output_change"] for r in arm_rows], "o-", label=f"{arm} (median)")
            ax.fill_between(n, [r["q1"] for r in arm_rows], [r["q3"] for r in arm_rows],
                            color=line.get_color(), alpha=0.2, lw=0)
            first = arm_rows[0]["output_change"]  # the theory's growth, drawn through the first median
            if arm == "vanilla":
                ax.loglog(n, [first * k / n[0] for k in n], ":", color=line.get_color(),
                          label="∝ n, for reference")
            if arm == "admin":
                ax.loglog(n, [first * math.log(k + 1) / math.log(n[0] + 1) for k in n], ":",
                          color=line.get_color(), label="∝ ln(n + 1), for reference")
        ax.set_xticks([2 * d for d in args.measure], [str(2 * d) for d in args.measure])
        ax.minorticks_off()
        ax.set_xlabel("residual sub-layers n (2 per layer)")
        ax.set_ylabel("relative output change |ΔF|² / |F|²")
        ax.set_title(f"Output change after a ±{args.delta:g} update; band: quartiles of {args.repeats} "
                     "models", fontsize=10)
    else:
        for r in results:
            ax.plot([h[0] for h in r.history], [h[1] for h in r.history], label=f"{r.arm}: {r.verdict}")
        ax.axhline(CHANCE_LOSS, color="grey", ls="--", lw=1, label="chance (ln 10)")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out loss")
        ax.set_title(f"{args.layers}-layer models, {args.task} {args.digits} digits, seed {args.seed}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def whole(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got {text!r}")
        return value
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def arm_list(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms or len(set(arms)) != len(arms):
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of distinct arms from {', '.join(ARMS)}, got {text!r}")
    return arms


def depth_list(text: str) -> list[int]:
    try:
        depths = sorted({whole(1, 512)(d) for d in text.split(",")})
    except argparse.ArgumentTypeError:
        depths = []
    if not depths:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of layer counts from 1 to 512, got {text!r}")
    return depths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Vanilla Post-LN vs Admin on a toy sequence task, or (--measure) the output "
                    "change of a fresh model against depth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=whole(1), default=48,
                   help="Transformer layers; each has 2 residual sub-layers, so ω uses n = 2 * layers")
    p.add_argument("--task", choices=TASKS, default="reverse", help="what the answer is")
    p.add_argument("--arms", type=arm_list, default=["vanilla", "admin"],
                   help=f"comma-separated residual kinds to compare, from {', '.join(ARMS)}")
    p.add_argument("--steps", type=whole(1), default=200,
                   help="training budget per arm; an arm that failed always runs all of it")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak Adam learning rate")
    p.add_argument("--warmup", type=whole(0), default=50, help="linear warm-up steps to --lr")
    p.add_argument("--output-change-scale", choices=("O(logn)", "O(1)"), default="O(logn)",
                   help="admin arm: ω = admin.calculate_init(2 * layers, this)")
    p.add_argument("--batch-size", type=whole(1), default=16, help="training examples per step")
    p.add_argument("--d-model", type=whole(1), default=64, help="model width C (d_ff = 4C)")
    p.add_argument("--n-heads", type=whole(1), default=4, help="attention heads; must divide --d-model")
    p.add_argument("--digits", type=whole(1, 16), default=6, help="length of each digit string")
    p.add_argument("--seed", type=whole(0), default=0,
                   help="seeds the weights, the data and the perturbations: same seed, same numbers")
    p.add_argument("--eval-every", type=whole(1), default=20, help="steps between held-out evaluations")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where model, data and evaluation live: auto = cuda if there is one, else mps "
                        "if there is one, else cpu")
    p.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                   help="replay each training step as one CUDA graph (auto: on with --device cuda); "
                        "off trains eagerly, the reference")
    p.add_argument("--threads", type=whole(1), default=2,
                   help="torch threads; on a 2-core CPU, 2 made a 48-layer step about 12%% faster than "
                   "1 in our runs (bench.py --threads 1)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the curves (needs matplotlib)")
    p.add_argument("--measure", type=depth_list, nargs="?", const=[6, 12, 24, 48, 96], default=None,
                   metavar="LAYERS", help="instead of training, measure the output change after a "
                   "small update of a fresh model at these depths (comma-separated; default "
                   "6,12,24,48,96)")
    p.add_argument("--delta", type=positive_float, default=1e-6,
                   help="--measure: size of the random-sign update added to every weight")
    p.add_argument("--repeats", type=whole(1), default=16,
                   help="--measure: fresh models (seeds, each with its own signs) per depth and arm; "
                   "the table shows their median and quartiles")
    return p


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(asked: str, parser: argparse.ArgumentParser) -> str:
    """`auto` → cuda, else mps, else cpu; an absent device is exit 2 naming the flag."""
    found = available_devices()
    if asked == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if d in found)
    if asked not in found:
        parser.error(f"argument --device: {asked} is not available on this machine "
                     f"(available: {', '.join(found)})")
    return asked


def device_name(device: str) -> str:
    """The device as the configuration line reports it: cpu, or e.g. cuda (NVIDIA H100 80GB HBM3)."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device == "cuda" else device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.device = resolve_device(args.device, p)
    if args.cuda_graph == "on" and args.device != "cuda":
        p.error(f"argument --cuda-graph: on needs --device cuda (the device is {args.device})")
    args.cuda_graph = args.cuda_graph != "off" and args.device == "cuda"
    if args.measure is not None and args.device == "mps":
        p.error("argument --device: --measure computes in float64, which mps does not support; "
                "use --device cpu")
    if args.d_model % args.n_heads:
        p.error(f"argument --n-heads: must divide --d-model={args.d_model}, got {args.n_heads}")
    check_outputs(p, {"--json": args.json, "--plot": args.plot})
    return args


def check_outputs(p: argparse.ArgumentParser, paths: dict[str, str | None]) -> None:
    """Exit 2, naming the flag, for an output path that is not a writable file, and for --plot
    without matplotlib (which is optional)."""
    for flag, path in paths.items():
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK) \
                or (os.path.exists(path) and not os.access(path, os.W_OK)):
            p.error(f"argument {flag}: cannot write to {path!r} (need a writable file path)")
    if paths.get("--plot") is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("argument --plot: needs matplotlib, which is optional: pip install matplotlib")


def arm_label(arm: str, args) -> str:
    if arm == "admin":
        return f"Post-LN, ω = {admin.calculate_init(2 * args.layers, args.output_change_scale):.3f}"
    return {"vanilla": "Post-LN", "preln": "Pre-LN"}[arm]


def run_measure(args, log) -> dict:
    log(f"output change |F(x, W*) - F(x, W)|^2 / |F(x, W)|^2, W* = W ± {args.delta:g} on every "
        f"block weight matrix, float64, median of {args.repeats} seeds")
    start = time.perf_counter()
    rows = measure(args, log)
    log(measure_table(rows, args.arms))
    log(f"({time.perf_counter() - start:.1f}s)")
    return {"rows": rows, "output_change": "|F(x,W*)-F(x,W)|^2 / |F(x,W)|^2 of the last layer's output",
            "update": f"+-{args.delta:g} random sign on every block weight matrix"}


def run_training(args, log) -> list[ArmResult]:
    results, start = [], time.perf_counter()
    for arm in args.arms:
        log(f"training {arm} ({arm_label(arm, args)})")
        results.append(train_arm(arm, args, log))
        if results[-1].interrupted:
            break
    folded = None
    trained_admin = next((r.model for r in results if r.arm == "admin" and r.examples), None)
    if trained_admin is not None:
        plain = admin.reparameterize(trained_admin)
        held_out = ToyData(args.task, args.digits, args.batch_size, args.seed, args.device).eval_input
        inp = held_out[: args.batch_size]
        with torch.no_grad():
            want = trained_admin.eval()(inp)
            error = ((plain.eval()(inp) - want).abs().max() / want.abs().max()).item()
        folded = (inference_ms(plain, inp), error)
    log("\nsummary (train ms/step and infer ms are medians; infer = one forward pass of a batch)")
    log(summary_table(results, folded))
    log("\n" + text_plot(results))
    for r in results:
        if r.examples:
            log(f"\n{r.arm}, held-out examples:\n" + "\n".join("  " + e for e in r.examples))
    log(f"\n{conclusion(results, args.layers)}  ({time.perf_counter() - start:.1f}s in all)")
    return results


def main(argv: list[str] | None = None) -> dict:
    """Run the demo (or --measure) as the command line asks; return what --json writes."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda line: print(line, flush=True)  # noqa: E731
    unused = ("json", "plot") + (("layers", "steps", "lr", "warmup", "batch_size", "eval_every", "cuda_graph")
                                 if args.measure is not None else ("measure", "delta", "repeats"))
    config = {k: v for k, v in vars(args).items() if k not in unused}
    config.update(device=device_name(args.device), threads=torch.get_num_threads(), torch=torch.__version__)
    log("configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    results = rows = None
    if args.measure is not None:
        out = {"config": config, "measure": run_measure(args, log)}
        rows = out["measure"]["rows"]
    else:
        results = run_training(args, log)
        out = {"config": config, "arms": {r.arm: result_json(r) for r in results}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        save_plot(args.plot, results, rows, args)
        log(f"wrote {args.plot}")
    return out


if __name__ == "__main__":
    main()
