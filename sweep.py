"""The stability map: where each residual kind learns, over depth × learning rate × seeds.

    python sweep.py                      # the default grid (216 runs; its time estimate is printed first)
    python sweep.py --quick              # a coarse grid for a class, a few minutes
    python sweep.py --arms vanilla,admin --layers 12,48 --lr 1e-3,2e-3 --seed 0,1 --plot map.png

Every grid point is one run of train_toy's training, exactly as `python train_toy.py --arms ARM
--layers L --lr LR ...` would train that arm (same model, batches, schedule, verdict). The flags are
train_toy's, with the same names; --arms, --layers, --lr, --warmup, --steps, --task, --seed and --omega
take comma-separated lists and the grid is their product (--omega varies the admin arm alone). Other train_toy flags (--d-model, --batch-size,
--digits, --n-heads, --eval-every, --output-change-scale) pass through with one value.

Each finished run is appended to --results as one JSON line, so an interrupted sweep loses only the
runs in flight, and the same command run again skips what the file already holds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import torch

import cli
import train_toy

GRID_FLAGS = ("arms", "layers", "lr", "warmup", "steps", "task", "seed", "omega")  # a run's key, in order
PASS_THROUGH = ("d_model", "n_heads", "batch_size", "digits", "eval_every", "output_change_scale", "device",
                "cuda_graph")
DEFAULT_GRID = {"arms": ["vanilla", "admin", "preln"], "layers": [6, 12, 24, 48],
                "lr": [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3], "seed": [0, 1, 2]}
QUICK_GRID = {"arms": ["vanilla", "admin", "preln"], "layers": [6, 48], "lr": [5e-4, 2e-3, 8e-3],
              "seed": [0]}
MS_PER_LAYER_STEP = 1.8  # a training step and its share of evaluations, per layer, on a 2-core CPU


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """train_toy's parser (argparse parents), with the grid flags redefined as comma-separated lists."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False, conflict_handler="resolve",
        parents=[train_toy.build_parser(add_help=False)],
        epilog="The other flags are train_toy's and take one value (python train_toy.py --help).")
    p.add_argument("--arms", type=cli.comma_list(cli.one_of(train_toy.ARMS), "arms"),
                   help=f"residual kinds, from {', '.join(train_toy.ARMS)} (default: all three)")
    p.add_argument("--layers", type=cli.comma_list(cli.whole(1, 512), "layer counts"),
                   help="depths (default: 6,12,24,48)")
    p.add_argument("--lr", type=cli.comma_list(cli.positive_float, "learning rates"),
                   help="peak learning rates (default: 2.5e-4,5e-4,1e-3,2e-3,4e-3,8e-3)")
    p.add_argument("--warmup", type=cli.comma_list(cli.whole(0), "warm-up step counts"),
                   default=[50], help="warm-up steps (default: 50, the demo's)")
    p.add_argument("--steps", type=cli.comma_list(cli.whole(1), "step budgets"), default=[200],
                   help="training budgets (default: 200, the demo's)")
    p.add_argument("--task", type=cli.comma_list(cli.one_of(cli.TASKS), "tasks"), default=["reverse"],
                   help="tasks (default: reverse)")
    p.add_argument("--seed", type=cli.comma_list(cli.whole(0), "seeds"), help="seeds (default: 0,1,2)")
    p.add_argument("--omega", type=cli.comma_list(cli.one_of(("closed", "profiled")), "ω kinds"),
                   default=["closed"], help="the admin arm's ω: closed (form), profiled, or both")
    p.add_argument("--quick", action="store_true",
                   help="a coarse grid for a class: arms all, layers 6,48, lr 5e-4,2e-3,8e-3, seed 0 "
                        "(flags given explicitly still win)")
    p.add_argument("--jobs", type=cli.whole(1), default=1,
                   help="worker processes; runs are independent, so N workers on N free cores finish "
                        "about N times sooner (one run with 2 threads already fills 2 cores; runs that "
                        "share one GPU take turns)")
    p.add_argument("--threads", type=cli.whole(1),
                   help="torch threads per worker (default: the cores divided by --jobs, at least 1)")
    p.add_argument("--results", metavar="PATH", default="sweep_results.jsonl",
                   help="one JSON line per finished run; rerunning skips the runs already there")
    p.add_argument("--json", metavar="PATH", help="write the config and all runs of the grid as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG heat map, one panel per arm "
                                                  "(needs matplotlib)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = cli.finish(p, p.parse_args(argv))
    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    for name, default in grid.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.fixed = {name: getattr(args, name) for name in PASS_THROUGH}
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    cli.check_outputs(p, {"--results": args.results})
    return args


# ---------------------------------------------------------------------------------------------------
# One grid point: one train_toy run
# ---------------------------------------------------------------------------------------------------


def panels(args) -> list[tuple[str, str]]:
    """(arm, ω kind) pairs: --omega varies the admin arm alone (the other arms have no ω to profile)."""
    return [(arm, omega) for arm in args.arms for omega in (args.omega if arm == "admin" else ["closed"])]


def panel_title(arm: str, omega: str) -> str:
    return arm if omega == "closed" else f"{arm} (profiled ω)"


def grid_points(args) -> list[dict]:
    values = list(itertools.product(*(getattr(args, f) for f in GRID_FLAGS[1:-1])))
    return [{"arm": arm, **dict(zip(GRID_FLAGS[1:-1], v)), "omega": omega}
            for arm, omega in panels(args) for v in values]


def run_key(point: dict) -> tuple:
    """A run's identity; results files from before --omega hold closed-form runs."""
    return (point["arm"], point["layers"], float(point["lr"]), point["warmup"], point["steps"],
            point["task"], point["seed"], point.get("omega", "closed"))


def run_point(point: dict, args) -> dict:
    """Train one arm as `python train_toy.py --arms ARM --layers L --lr LR ...` would, quietly, and
    return the run's line for the results file."""
    run_args = argparse.Namespace(**{**vars(args), **point, "arms": [point["arm"]]})
    cli.start(run_args)
    data = train_toy.ToyData(point["task"], args.digits, point["seed"], args.device)
    r = train_toy.train_arm(point["arm"], run_args, data, log=lambda line: None)
    return {**point, "accuracy": r.accuracy, "final_loss": r.final_loss, "verdict": r.verdict,
            "diverged": r.diverged_at is not None, "steps_run": r.steps, "seconds": round(r.seconds, 2)}


# ---------------------------------------------------------------------------------------------------
# The results file: a header line with the fixed settings, then one line per finished run
# ---------------------------------------------------------------------------------------------------


def load_results(path: str, fixed: dict) -> dict[tuple, dict]:
    """The runs already in `path`, by key. Refuses a file made with other fixed settings."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return {}
    done = {}
    with open(path) as f:
        text = f.read()
    if not text.endswith("\n"):  # a line cut short by a crash: drop it, and that run is done again
        text = text[: text.rfind("\n") + 1]
        os.truncate(path, len(text.encode()))
    lines = text.splitlines()
    if not lines:
        return {}
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or "fixed" not in header:
        raise ValueError(f"{path} is not a sweep results file (its first line is no header); "
                         f"choose another --results")
    if header["fixed"] != fixed:
        differ = {k: (header["fixed"].get(k), fixed[k]) for k in fixed
                  if header["fixed"].get(k) != fixed[k]}
        raise ValueError(f"{path} holds runs made with other fixed settings "
                         + ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in differ.items())
                         + "; use another --results file, or the same settings")
    for line in lines[1:]:
        run = json.loads(line)
        done[run_key(run)] = run
    return done


def append_line(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------


def work(point: dict) -> int:
    return point["layers"] * point["steps"]  # what a run costs, at most: it may stop early


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def progress_line(i: int, n: int, run: dict, elapsed: float, left: float | None) -> str:
    settings = (f"{panel_title(run['arm'], run.get('omega', 'closed')):<7} layers={run['layers']:<3} "
                f"lr={run['lr']:g} warmup={run['warmup']} steps={run['steps']} {run['task']} seed={run['seed']}")
    eta = "" if left is None else f", about {minutes(left)} left"
    return (f"[{i:>{len(str(n))}}/{n}] {settings}: {run['verdict']} (accuracy "
            f"{100 * run['accuracy']:.1f}%, loss {run['final_loss']:.4f}, {run['steps_run']} steps, "
            f"{run['seconds']:.1f}s); elapsed {minutes(elapsed)}{eta}")


def tables(runs: list[dict], args) -> str:
    """Per arm (and per warm-up, budget and task, when those vary): learning rates as rows, depths as
    columns, each cell "learned/seeds"; '!' marks a cell where a run diverged to a non-finite loss."""
    out = []
    by_key = {run_key(r): r for r in runs}
    for (arm, omega), warmup, steps, task in itertools.product(panels(args), args.warmup, args.steps,
                                                               args.task):
        title = f"{panel_title(arm, omega)}: runs that learned (>= 99% exact) / seeds"
        if len(args.warmup) * len(args.steps) * len(args.task) > 1:
            title += f", warmup {warmup}, steps {steps}, {task}"
        lines = [title, f"{'lr':>9} |" + "".join(f"{f'{d} layers':>11}" for d in args.layers)]
        for lr in args.lr:
            cells = []
            for layers in args.layers:
                found = [by_key.get((arm, layers, float(lr), warmup, steps, task, s, omega))
                         for s in args.seed]
                found = [r for r in found if r is not None]
                cell = (f"{sum(r['verdict'] == 'learned' for r in found)}/{len(found)}"
                        + ("!" if any(r["diverged"] for r in found) else "")) if found else "-"
                cells.append(f"{cell:>11}")
            lines.append(f"{lr:>9g} |" + "".join(cells))
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n('!': a run diverged to a non-finite loss; '-': not run)"


def save_plot(path: str, runs: list[dict], args) -> None:
    plt = cli.pyplot()
    by_key = {run_key(r): r for r in runs}
    fig, axes = plt.subplots(1, len(panels(args)), figsize=(2.8 * len(panels(args)) + 1.2, 3.4), dpi=120,
                             squeeze=False, sharey=True, constrained_layout=True)
    for ax, (arm, omega) in zip(axes[0], panels(args)):
        share = [[0.0] * len(args.layers) for _ in args.lr]
        for i, lr in enumerate(args.lr):
            for j, layers in enumerate(args.layers):
                found = [by_key.get((arm, layers, float(lr), w, st, t, s, omega)) for w in args.warmup
                         for st in args.steps for t in args.task for s in args.seed]
                found = [r for r in found if r is not None]
                learned = sum(r["verdict"] == "learned" for r in found)
                share[i][j] = learned / len(found) if found else float("nan")
                label = f"{learned}/{len(found)}" + ("!" if any(r["diverged"] for r in found) else "")
                ax.text(j, i, label if found else "-", ha="center", va="center", fontsize=9)
        image = ax.imshow(share, cmap="RdYlGn", vmin=0, vmax=1, origin="lower", aspect="auto")
        ax.set_xticks(range(len(args.layers)), [str(d) for d in args.layers])
        ax.set_yticks(range(len(args.lr)), [f"{lr:g}" for lr in args.lr])
        ax.set_xlabel("layers")
        ax.set_title(panel_title(arm, omega))
    axes[0][0].set_ylabel("peak learning rate")
    fig.colorbar(image, ax=axes[0].tolist(), label="share of seeds that learned")
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------


def run_grid(todo: list[dict], args, done: dict, n_total: int, log) -> None:
    """Train the points in `todo`, appending each finished run to the results file and `done`."""
    start, total_work = time.perf_counter(), sum(work(p) for p in todo)
    finished_work, i = 0, n_total - len(todo)

    def finish(run: dict) -> None:
        nonlocal finished_work, i
        append_line(args.results, run)
        done[run_key(run)] = run
        finished_work += work(run)
        i += 1
        elapsed = time.perf_counter() - start
        left = elapsed / finished_work * (total_work - finished_work) if finished_work else None
        log(progress_line(i, n_total, run, elapsed, left))

    if args.jobs == 1:
        for point in todo:
            finish(run_point(point, args))
        return
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_point, point, args) for point in todo]
        try:
            for future in as_completed(futures):
                finish(future.result())
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep as the command line asks; return what --json writes."""
    args = parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        done = load_results(args.results, args.fixed)
    except ValueError as error:
        build_parser().error(f"argument --results: {error}")  # exit 2
    points = grid_points(args)
    todo = [p for p in points if run_key(p) not in done]
    config = {name: getattr(args, name) for name in GRID_FLAGS} | args.fixed
    log("sweep: " + ", ".join(f"{k}={v}" for k, v in config.items())
        + f", jobs={args.jobs}, threads={args.threads}, torch={torch.__version__}")
    upper = sum(work(p) for p in todo) * MS_PER_LAYER_STEP / 1000 / args.jobs
    log(f"{len(points)} runs, {len(points) - len(todo)} already in {args.results}; estimate for the "
        f"{len(todo)} to do: about {minutes(upper)} on a 2-core CPU ({MS_PER_LAYER_STEP} ms per layer "
        f"per step with evaluations, full budgets; runs that learn stop early)")
    if not os.path.exists(args.results) or os.path.getsize(args.results) == 0:
        append_line(args.results, {"fixed": args.fixed, "torch": torch.__version__})
    interrupted = False
    try:
        run_grid(todo, args, done, len(points), log)
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted: the finished runs are in {args.results}; run the same command to go on")
    runs = [done[run_key(p)] for p in points if run_key(p) in done]
    log("\n" + tables(runs, args))
    out = {"config": config, "runs": runs}
    cli.write_outputs(args, out, lambda path: save_plot(path, runs, args), log)
    if interrupted:
        sys.exit(130)
    return out


if __name__ == "__main__":
    main()
