"""One training configuration (config.py): every script builds its runs' configurations the same way,
so the demo, a sweep grid point, a deep_end watched run and a bench run at the same depth train alike."""

import argparse
import dataclasses

import pytest

from lab import bench
from lab import config
from lab import deep_end
from lab import sweep
import train_toy

SMALL = ["--d-model", "8", "--n-heads", "2", "--digits", "3", "--batch-size", "8", "--threads", "1",
         "--device", "cpu"]  # model flags only: the schedule is left to the depth


def first_losses(cfg: config.TrainConfig, arm: str = "admin", steps: int = 3) -> list:
    """The held-out evaluation at step 0 and the loss of the `steps`-th step, as train_arm trains `arm`."""
    def stop(i, model):
        if i == steps:
            raise KeyboardInterrupt  # train_arm keeps what ran, as on Ctrl-C
    data = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device)
    r = train_toy.train_arm(arm, cfg, data, lambda line: None, watch=stop)
    assert r.steps == steps and r.interrupted
    return [r.history[0], r.last_finite_loss]


@pytest.mark.parametrize("layers, schedule", [(48, (2e-3, 50, 200)), (192, (1e-3, 100, 400))])
def test_every_script_trains_a_run_at_the_same_depth_as_the_demo(layers, schedule, tmp_path):
    depth = ["--layers", str(layers)]
    demo = train_toy.parse_args([*depth, "--arms", "admin", *SMALL])
    assert (demo.lr, demo.warmup, demo.steps) == schedule, "the schedule by depth"
    assert (demo.schedule is None) == (layers <= config.SHALLOW)
    grid = sweep.parse_args([*depth, "--arms", "admin", "--lr", f"{demo.lr:g}", "--seed", "0",
                             "--results", str(tmp_path / "r.jsonl"), *SMALL])
    watch = deep_end.parse_args(["watch", *depth, "--arms", "admin", "--repeats", "1", *SMALL])
    _, stuck = bench.parse_args(["--stuck", *depth, *SMALL])
    configs = {"sweep grid point": [sweep.point_config(p, grid) for p in sweep.grid_points(grid)],
               "deep_end watch": [deep_end.watch_configs(watch)[0]],
               "bench --stuck": [dataclasses.replace(stuck, arms=["admin"])]}
    for script, cfgs in configs.items():
        assert cfgs == [demo], f"{script} configures another run than the demo:\n{cfgs}\n{demo}"
    assert stuck.arms == train_toy.parse_args([*depth, *SMALL]).arms, "bench --stuck trains the demo's arms"
    # Equal configurations train the same numbers: train_arm is a function of its configuration (the
    # seed in it), so one script's run, trained again, stands for all three (each once: 3 s a run at 192)
    grid_point = configs["sweep grid point"][0]
    assert first_losses(grid_point) == first_losses(demo), "the same configuration trains the same numbers"


def test_a_flag_given_wins_over_the_depth_and_the_reason_names_only_what_the_depth_set():
    cfg = train_toy.parse_args(["--layers", "192", "--lr", "3e-3", *SMALL])
    assert (cfg.lr, cfg.warmup, cfg.steps) == (3e-3, 100, 400)
    assert "warmup 100, steps 400" in cfg.schedule and "lr " not in cfg.schedule.split("(")[0]
    watch = deep_end.parse_args(["watch", "--layers", "192", "--warmup", "7", *SMALL])
    assert deep_end.watch_configs(watch)[0].warmup == 7


def test_a_script_without_a_flag_trains_with_the_demos_default():
    """deep_end and bench have no --omega or --eval-every: closed-form ω, the demo's evaluations."""
    _, cfg = bench.parse_args(SMALL)
    assert (cfg.omega, cfg.eval_every) == ("closed", config.EVAL_EVERY)


@pytest.mark.parametrize("layers", [48, 192])
def test_a_command_line_without_schedule_flags_trains_on_the_schedule_of_its_depth(layers):
    """Kills: a setting that the command line lacks taken as dataclasses' MISSING instead of unset
    (None), so the depth's schedule is not filled in. measure.py, for one, has no --steps, --lr or
    --warmup: its models train (deep_end, the docs' live checks) on the schedule of their depth."""
    given = vars(train_toy.build_parser().parse_args(["--device", "cpu"]))
    args = argparse.Namespace(**{k: v for k, v in given.items() if k not in ("steps", "lr", "warmup")})
    cfg = config.train_config(args, layers=layers)
    assert {k: getattr(cfg, k) for k in ("steps", "lr", "warmup")} == config.schedule_for(layers)
