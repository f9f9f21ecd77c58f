"""The stability map: where each residual kind learns, over depth × learning rate × seeds.

    python -m lab.sweep                      # the default grid (216 runs; its time estimate is printed first)
    python -m lab.sweep --quick              # a coarse grid for a class, a few minutes
    python -m lab.sweep --arms vanilla,admin --layers 12,48 --lr 1e-3,2e-3 --seed 0,1 --plot map.png
    python -m lab.sweep --edge --arms admin --layers 48,96 --warmup 100 --steps +300 --lr 2e-3
                                         # the largest learning rate at which every seed learns
    python -m lab.sweep --report --edge ... --results lab/results/rule_map.jsonl   # tabulate a kept file

Every grid point is one run of train_toy's training, exactly as `python train_toy.py --arms ARM
--layers L --lr LR ...` would train that arm (same model, batches, schedule, verdict). The flags are
train_toy's, with the same names; --arms, --layers, --lr, --warmup, --steps, --task, --seed and --omega
take comma-separated lists and the grid is their product (--omega varies the admin arm alone). Other train_toy flags (--d-model, --batch-size,
--digits, --n-heads, --eval-every, --output-change-scale) pass through with one value.

--edge replaces the grid of learning rates by a walk per arm, depth and schedule on a ladder of rates
√2 apart, from the one --lr up while every seed learns and down while one does not, until a rate that
passes sits under one that fails: the edge. --warmup also takes 'layers' (one step per layer) and --steps
'+N' (the warm-up, then N steps), so one schedule can grow with depth.

Each finished run is appended to --results as one JSON line, so an interrupted sweep loses only the
runs in flight, and the same command run again skips what the file already holds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from multiprocessing import get_context

import torch

from lab import cli
from lab import config
import train_toy

GRID_FLAGS = ("arms", "layers", "lr", "warmup", "steps", "task", "seed", "omega")  # a run's key, in order
PASS_THROUGH = ("d_model", "n_heads", "batch_size", "digits", "eval_every", "output_change_scale", "device")
DEFAULT_GRID = {"arms": ["vanilla", "admin", "preln"], "layers": [6, 12, 24, 48],
                "lr": [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3], "seed": [0, 1, 2]}
QUICK_GRID = {"arms": ["vanilla", "admin", "preln"], "layers": [6, 48], "lr": [5e-4, 2e-3, 8e-3],
              "seed": [0]}
MS_PER_LAYER_STEP = 1.8  # a training step and its share of evaluations, per layer, on a 2-core CPU


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def warmup_spec(text: str) -> int | str:
    """A warm-up length: a whole number of steps, 'layers' (one step per layer) or 'depth' (the demo's)."""
    return text if text in ("layers", "depth") else cli.whole(0)(text)


def steps_spec(text: str) -> int | str:
    """A budget: a whole number of steps, '+N' (the warm-up, then N steps of decay) or 'depth'."""
    if text.startswith("+"):
        return f"+{cli.whole(1)(text[1:])}"
    return text if text == "depth" else cli.whole(1)(text)


def schedule(warmup: int | str, steps: int | str, layers: int) -> tuple[int, int]:
    """The (warm-up, budget) in steps that a schedule's specs give at `layers` layers; 'depth' is
    what the demo trains with there (config.schedule_for: 50 of 200 up to 48 layers, 100 of 400 deeper)."""
    demo = config.schedule_for(layers)
    warmup = layers if warmup == "layers" else demo["warmup"] if warmup == "depth" else warmup
    if steps == "depth":
        return warmup, demo["steps"]
    return warmup, (warmup + int(steps[1:]) if isinstance(steps, str) else steps)


def build_parser() -> argparse.ArgumentParser:
    """train_toy's parser (argparse parents), with the grid flags redefined as comma-separated lists."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False, conflict_handler="resolve",
        parents=[train_toy.build_parser(add_help=False)],
        epilog="The other flags are train_toy's and take one value (python train_toy.py --help).")
    p.add_argument("--arms", type=cli.comma_list(cli.one_of(train_toy.ARMS), "arms"),
                   help=f"residual kinds, from {', '.join(train_toy.ARMS)} (default: {','.join(DEFAULT_GRID['arms'])})")
    p.add_argument("--layers", type=cli.comma_list(cli.whole(1, 512), "layer counts"),
                   help="depths (default: 6,12,24,48)")
    p.add_argument("--lr", type=cli.comma_list(cli.positive_float, "learning rates"),
                   help="peak learning rates (default: 2.5e-4,5e-4,1e-3,2e-3,4e-3,8e-3)")
    p.add_argument("--warmup", type=cli.comma_list(warmup_spec, "warm-up step counts"),
                   default=["depth"], help="warm-up steps, 'layers' for one warm-up step per layer, or "
                   "'depth' for the demo's at each depth (default: depth: 50 up to 48 layers, 100 deeper)")
    p.add_argument("--steps", type=cli.comma_list(steps_spec, "step budgets"), default=["depth"],
                   help="training budgets, '+N' for the warm-up and N steps more, or 'depth' for the "
                        "demo's (default: depth: 200 up to 48 layers, 400 deeper)")
    p.add_argument("--task", type=cli.comma_list(cli.one_of(cli.TASKS), "tasks"), default=["reverse"],
                   help="tasks (default: reverse)")
    p.add_argument("--seed", type=cli.comma_list(cli.whole(0), "seeds"), help="seeds (default: 0,1,2)")
    p.add_argument("--omega", type=cli.comma_list(cli.one_of(("closed", "profiled")), "ω kinds"),
                   default=["closed"], help="the admin arm's ω: closed (form), profiled, or both")
    p.add_argument("--edge", action="store_true",
                   help="instead of a grid of learning rates, find for each arm, depth and schedule the "
                        "largest one at which every seed learns: walk a ladder of rates a factor √2 "
                        "apart, from the first --lr up while all seeds learn, down while one fails")
    p.add_argument("--report", action="store_true",
                   help="train nothing: tabulate (and --json, --plot) what --results already holds")
    p.add_argument("--quick", action="store_true",
                   help=f"a coarse grid for a class: arms {','.join(QUICK_GRID['arms'])}, layers 6,48, "
                        "lr 5e-4,2e-3,8e-3, seed 0 (flags given explicitly still win)")
    p.add_argument("--jobs", type=cli.whole(1), default=1,
                   help="worker processes; runs are independent, so N workers on N free cores finish "
                        "about N times sooner (one run with 2 threads already fills 2 cores; runs that "
                        "share one GPU take turns, unless NVIDIA's multi-process service (MPS) runs: "
                        "see .ci/gpu-check rule)")
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
    if args.edge and len(args.lr) != 1:
        p.error(f"argument --lr: --edge walks from one learning rate, got {len(args.lr)}: "
                + ",".join(f"{lr:g}" for lr in args.lr))
    if args.report and not os.path.isfile(args.results):
        p.error(f"argument --results: --report tabulates an existing results file; {args.results} is none")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    cli.check_outputs(p, {"--results": args.results})
    return args


def fixed_settings(args) -> dict:
    """The settings every run of the sweep shares, as the results file's header keeps them; --report:
    the file's own (a map made on a GPU is tabulated anywhere)."""
    fixed = {name: getattr(args, name) for name in PASS_THROUGH}
    if args.report:
        with open(args.results) as f:
            header = json.loads(f.readline())
        return kept_settings(header) if "fixed" in header else fixed
    return fixed


def kept_settings(header: dict) -> dict:
    """A results file's fixed settings; cuda_graph=False, which files made before the CUDA graph moved to
    lab/cuda_graph.py keep, is the eager step every sweep trains with now."""
    return {k: v for k, v in header["fixed"].items() if (k, v) != ("cuda_graph", False)}


# ---------------------------------------------------------------------------------------------------
# One grid point: one train_toy run
# ---------------------------------------------------------------------------------------------------


def panels(args) -> list[tuple[str, str]]:
    """(arm, ω kind) pairs: --omega varies the admin arm alone (the other arms have no ω to profile)."""
    return [(arm, omega) for arm in args.arms for omega in (args.omega if arm == "admin" else ["closed"])]


def panel_title(arm: str, omega: str) -> str:
    return arm if omega == "closed" else f"{arm} (profiled ω)"


def point(arm: str, omega: str, layers: int, lr: float, warmup, steps, task: str, seed: int) -> dict:
    """One run's settings, its schedule resolved at its depth."""
    warmup, steps = schedule(warmup, steps, layers)
    return {"arm": arm, "layers": layers, "lr": lr, "warmup": warmup, "steps": steps, "task": task,
            "seed": seed, "omega": omega}


def grid_points(args) -> list[dict]:
    return [point(arm, omega, *v) for arm, omega in panels(args) for v in itertools.product(
        args.layers, args.lr, args.warmup, args.steps, args.task, args.seed)]


def run_key(point: dict) -> tuple:
    """A run's identity; results files from before --omega hold closed-form runs."""
    return (point["arm"], point["layers"], float(point["lr"]), point["warmup"], point["steps"],
            point["task"], point["seed"], point.get("omega", "closed"))


def point_config(point: dict, args) -> config.TrainConfig:
    """The training configuration of one grid point: `python train_toy.py --arms ARM --layers L --lr LR
    ...`'s, with the point's settings and the sweep's fixed ones."""
    return config.train_config(args, arms=[point["arm"]], **{k: v for k, v in point.items() if k != "arm"})


def run_point(point: dict, args) -> dict:
    """Train one arm as `python train_toy.py --arms ARM --layers L --lr LR ...` would, quietly, and
    return the run's line for the results file."""
    cfg = point_config(point, args)
    cli.start(cfg)
    data = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    r = train_toy.train_arm(point["arm"], cfg, data, log=lambda line: None)
    if r.interrupted:  # a run cut short is no result: the next sweep trains it again
        raise KeyboardInterrupt
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
    made = kept_settings(header)
    if made != fixed:
        differ = {k: (made.get(k), fixed.get(k)) for k in made | fixed if made.get(k) != fixed.get(k)}
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


def progress_line(i: int, n: int | None, run: dict, elapsed: float, left: float | None) -> str:
    settings = (f"{panel_title(run['arm'], run.get('omega', 'closed')):<7} layers={run['layers']:<3} "
                f"lr={run['lr']:g} warmup={run['warmup']} steps={run['steps']} {run['task']} seed={run['seed']}")
    eta = "" if left is None else f", about {minutes(left)} left"
    count = f"[{i}]" if n is None else f"[{i:>{len(str(n))}}/{n}]"
    return (f"{count} {settings}: {run['verdict']} (accuracy "
            f"{100 * run['accuracy']:.1f}%, loss {run['final_loss']:.4f}, {run['steps_run']} steps, "
            f"{run['seconds']:.1f}s); elapsed {minutes(elapsed)}{eta}")


def tables(runs: list[dict], args) -> str:
    """Per arm (and per warm-up, budget and task, when those vary): learning rates as rows, depths as
    columns, each cell "learned/seeds"; '!' marks a cell where a run diverged to a non-finite loss."""
    out = []
    by_key, lrs = {run_key(r): r for r in runs}, learning_rates(runs, args)
    for (arm, omega), warmup, steps, task in itertools.product(panels(args), args.warmup, args.steps,
                                                               args.task):
        title = f"{panel_title(arm, omega)}: runs that learned (>= 99% exact) / seeds"
        if len(args.warmup) * len(args.steps) * len(args.task) > 1:
            title += f", warmup {warmup}, steps {steps}, {task}"
        lines = [title, f"{'lr':>9} |" + "".join(f"{f'{d} layers':>11}" for d in args.layers)]
        for lr in lrs:
            cells = []
            for layers in args.layers:
                found = [by_key.get(run_key(point(arm, omega, layers, float(lr), warmup, steps, task, s)))
                         for s in args.seed]
                found = [r for r in found if r is not None]
                cell = (f"{sum(r['verdict'] == 'learned' for r in found)}/{len(found)}"
                        + ("!" if any(r["diverged"] for r in found) else "")) if found else "-"
                cells.append(f"{cell:>11}")
            lines.append(f"{lr:>9g} |" + "".join(cells))
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n('!': a run diverged to a non-finite loss; '-': not run)"


def learning_rates(runs: list[dict], args) -> list[float]:
    """The table's rows: the grid's rates, or (--edge) the rungs of the ladder that were trained."""
    return sorted({r["lr"] for r in runs}) if args.edge else args.lr


def save_plot(path: str, runs: list[dict], args) -> None:
    """A heat map: a panel per arm (columns) and per schedule (rows); learning rates up, depths across."""
    plt = cli.pyplot()
    by_key = {run_key(r): r for r in runs}
    lrs, rows = learning_rates(runs, args), list(itertools.product(args.warmup, args.steps))
    fig, axes = plt.subplots(len(rows), len(panels(args)), figsize=(2.8 * len(panels(args)) + 1.2,
                             0.25 * len(lrs) * len(rows) + 1.4 * len(rows) + 0.6), dpi=120, squeeze=False,
                             sharey=True, constrained_layout=True)
    for (warmup, steps), ax_row in zip(rows, axes):
        for ax, (arm, omega) in zip(ax_row, panels(args)):
            share = [[0.0] * len(args.layers) for _ in lrs]
            for i, lr in enumerate(lrs):
                for j, layers in enumerate(args.layers):
                    found = [by_key.get(run_key(point(arm, omega, layers, float(lr), warmup, steps, t, s)))
                             for t in args.task for s in args.seed]
                    found = [r for r in found if r is not None]
                    learned = sum(r["verdict"] == "learned" for r in found)
                    share[i][j] = learned / len(found) if found else float("nan")
                    label = f"{learned}/{len(found)}" + ("!" if any(r["diverged"] for r in found) else "")
                    ax.text(j, i, label if found else "-", ha="center", va="center", fontsize=8)
            image = ax.imshow(share, cmap="RdYlGn", vmin=0, vmax=1, origin="lower", aspect="auto")
            ax.set_xticks(range(len(args.layers)), [str(d) for d in args.layers])
            ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
            ax.set_xlabel("layers")
            ax.set_title(panel_title(arm, omega) + (f"\nwarmup {warmup}, steps {steps}" if len(rows) > 1
                                                    else ""), fontsize=9)
        ax_row[0].set_ylabel("peak learning rate")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="share of seeds that learned")
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# --edge: the largest learning rate that trains, found on a ladder
# ---------------------------------------------------------------------------------------------------

LADDER = tuple(float(f"{1e-3 * 2 ** (k / 2):.3g}") for k in range(-4, 11))  # 2.5e-4 ... 0.032, √2 apart


def rung(lr: float) -> int:
    """The ladder's rung nearest to `lr`."""
    return min(range(len(LADDER)), key=lambda i: abs(math.log(LADDER[i] / lr)))


def edge_cells(args) -> list[tuple]:
    """(arm, ω kind, layers, warm-up, budget, task): each gets its own walk up or down the ladder."""
    return [(arm, omega, *v) for arm, omega in panels(args)
            for v in itertools.product(args.layers, args.warmup, args.steps, args.task)]


def cell_point(cell: tuple, lr: float, seed: int) -> dict:
    arm, omega, layers, warmup, steps, task = cell
    return point(arm, omega, layers, lr, warmup, steps, task, seed)


def passes(cell: tuple, i: int, done: dict, seeds: list[int]) -> bool | None:
    """Whether every seed learned at rung i: False from the first seed that did not (one worker
    trains no more seeds there), None while it is open."""
    runs = [done.get(run_key(cell_point(cell, LADDER[i], s))) for s in seeds]
    if any(r is not None and r["verdict"] != "learned" for r in runs):
        return False
    return None if None in runs else True


def next_rung(cell: tuple, done: dict, args) -> int | None:
    """The rung this cell trains next, walking from the first --lr: up while every seed learns, down
    while one does not. None once a rung that passed sits under one that failed, or the walk would
    leave the ladder: the edge is then read off the results by edge_of."""
    i = rung(args.lr[0])
    while (ok := passes(cell, i, done, args.seed)) is not None:
        j = i + 1 if ok else i - 1
        if not 0 <= j < len(LADDER) or passes(cell, j, done, args.seed) not in (None, ok):
            return None
        i = j
    return i


def edge_of(cell: tuple, done: dict, seeds: list[int]) -> dict:
    """The cell's edge, read off the results whatever rung the walk started from: the highest rung
    at which every seed learned, with the rung above run and failed (or the ladder's top passed).
    Where the results do not settle it yet (found False): the highest rung that passed and the lowest
    above it that failed, as far as they are known."""
    known = {i: passes(cell, i, done, seeds) for i in range(len(LADDER))}
    good = [i for i, ok in known.items() if ok and (i + 1 == len(LADDER) or known[i + 1] is False)]
    low = max([i for i, ok in known.items() if ok], default=None)
    high = min([i for i, ok in known.items() if ok is False and (low is None or i > low)], default=None)
    return {"found": bool(good) or high == 0,
            "largest_lr": None if low is None else LADDER[low],  # every seed learned
            "failing_lr": None if high is None else LADDER[high]}  # a seed did not


def edges(args, done: dict) -> list[dict]:
    """Every cell's edge, with the cell's settings (its schedule resolved), for --json."""
    out = []
    for cell in edge_cells(args):
        settings = cell_point(cell, 0.0, 0)
        out.append({k: settings[k] for k in ("arm", "omega", "layers", "warmup", "steps", "task")}
                   | edge_of(cell, done, args.seed))
    return out


def edge_text(e: dict) -> str:
    low, high = e["largest_lr"], e["failing_lr"]
    if e["found"]:
        return f"<{high:g}" if low is None else f"{low:g}" if high is not None else f">={low:g}"
    return "?" if low is None and high is None else f">={low:g}" if high is None else (
        f"<{high:g}" if low is None else f"{low:g}-{high:g}?")


def edge_table(args, done: dict) -> str:
    """Per schedule: arms as rows, depths as columns, each cell the largest rate at which every seed
    learned. Unsettled cells: '>=' a rate that passed with the rung above not yet run, '<' a rate that
    failed with none below passing yet, 'a-b?' a gap between the two; '?' nothing run."""
    out = []
    for warmup, steps, task in itertools.product(args.warmup, args.steps, args.task):
        lines = [f"largest learning rate at which all {len(args.seed)} seeds learned: warmup {warmup}, "
                 f"steps {steps}, {task}",
                 f"{'':<18}|" + "".join(f"{f'{d} layers':>16}" for d in args.layers)]
        for arm, omega in panels(args):
            cells = [edge_text(edge_of((arm, omega, layers, warmup, steps, task), done, args.seed))
                     for layers in args.layers]
            lines.append(f"{panel_title(arm, omega):<18}|" + "".join(f"{c:>16}" for c in cells))
        out.append("\n".join(lines))
    return "\n\n".join(out)


# ---------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------


def keep(run: dict, args, done: dict) -> None:
    """A finished run: one line in the results file, and known from now on."""
    append_line(args.results, run)
    done[run_key(run)] = run


def run_grid(todo: list[dict], args, done: dict, n_total: int, log) -> None:
    """Train the points in `todo`, appending each finished run to the results file and `done`."""
    start, total_work = time.perf_counter(), sum(work(p) for p in todo)
    finished_work, i = 0, n_total - len(todo)

    def finish(run: dict) -> None:
        nonlocal finished_work, i
        keep(run, args, done)
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


def run_edges(args, done: dict, log) -> None:
    """--edge: train each cell's next rung (all seeds at once), until every cell's walk has ended."""
    start, i, in_flight = time.perf_counter(), 0, {}

    def next_points() -> list[dict]:
        todo = []
        for cell in edge_cells(args):
            if (at := next_rung(cell, done, args)) is not None:
                todo += [p for p in (cell_point(cell, LADDER[at], s) for s in args.seed)
                         if run_key(p) not in done and run_key(p) not in in_flight]
        return sorted(todo, key=work, reverse=True)  # the longest first, so none is left to run alone

    def finish(run: dict) -> None:
        nonlocal i
        keep(run, args, done)
        i += 1
        log(progress_line(i, None, run, time.perf_counter() - start, None))

    if args.jobs == 1:
        while todo := next_points():
            finish(run_point(todo[0], args))
        return
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        try:
            while True:
                for p in next_points():
                    in_flight[run_key(p)] = pool.submit(run_point, p, args)
                if not in_flight:
                    return
                finished, _ = wait(in_flight.values(), return_when=FIRST_COMPLETED)
                for key in [k for k, f in in_flight.items() if f in finished]:
                    finish(in_flight.pop(key).result())
        except KeyboardInterrupt:
            for future in in_flight.values():
                future.cancel()
            raise


def summary(args, done: dict) -> tuple[list[dict], str]:
    """The runs the sweep covers (the grid's points, or every run of the walks' cells) and the tables
    printed at its end."""
    if args.edge:  # every rung of every walk that was trained
        runs = [done[k] for cell in edge_cells(args) for lr in LADDER for seed in args.seed
                if (k := run_key(cell_point(cell, lr, seed))) in done]
        return runs, tables(runs, args) + "\n\n" + edge_table(args, done)
    runs = [done[run_key(p)] for p in grid_points(args) if run_key(p) in done]
    return runs, tables(runs, args)


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep as the command line asks; return what --json writes."""
    args = parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        done = load_results(args.results, fixed_settings(args))
    except ValueError as error:
        build_parser().error(f"argument --results: {error}")  # exit 2
    points = [] if args.edge else grid_points(args)
    todo = [] if args.report else [p for p in points if run_key(p) not in done]
    settings = {name: getattr(args, name) for name in GRID_FLAGS} | fixed_settings(args) | (
        {"edge": True} if args.edge else {})
    log("sweep: " + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f", jobs={args.jobs}, threads={args.threads}, torch={torch.__version__}")
    if args.edge:
        log(f"{len(edge_cells(args))} walks on the ladder {', '.join(f'{lr:g}' for lr in LADDER)}, from "
            f"{LADDER[rung(args.lr[0])]:g}; {len(done)} runs already in {args.results}")
    else:
        upper = sum(work(p) for p in todo) * MS_PER_LAYER_STEP / 1000 / args.jobs
        log(f"{len(points)} runs, {len(points) - len(todo)} already in {args.results}; estimate for the "
            f"{len(todo)} to do: about {minutes(upper)} on a 2-core CPU ({MS_PER_LAYER_STEP} ms per layer "
            f"per step with evaluations, full budgets; runs that learn stop early)")
    if not args.report and (not os.path.exists(args.results) or os.path.getsize(args.results) == 0):
        append_line(args.results, {"fixed": fixed_settings(args), "torch": torch.__version__})
    interrupted = False
    try:
        if args.edge and not args.report:
            run_edges(args, done, log)
        elif todo:
            run_grid(todo, args, done, len(points), log)
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted: the finished runs are in {args.results}; run the same command to go on")
    runs, text = summary(args, done)
    log("\n" + text)
    out = {"config": settings, "runs": runs} | ({"edges": edges(args, done)} if args.edge else {})
    cli.write_outputs(args, out, lambda path: save_plot(path, runs, args), log)
    if interrupted:
        sys.exit(130)
    return out


if __name__ == "__main__":
    main()
