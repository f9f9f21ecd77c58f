"""train_toy runs where --device says (that admin.py follows its inputs' device: test_admin.py, Section 9).

Each check runs on the CPU and on every accelerator torch sees here; the first line of pytest's
output says which ran (CI has no GPU: there they run on the CPU alone)."""

import pytest

import train_toy
from lab import cuda_graph
from lab.testing_tools import ACCELERATORS, TINY_RUN, exit_2_error

DEVICES = ["cpu"] + ACCELERATORS


@pytest.mark.parametrize("device", DEVICES)
def test_train_toy_runs_on_the_device_it_reports(device, capsys):
    out = train_toy.main(["--layers", "1", *TINY_RUN, "--device", device])
    assert out["config"]["device"].split(" ")[0] == device
    assert f"device={device}" in capsys.readouterr().out
    assert all(arm["steps"] == 6 for arm in out["arms"].values())


def test_auto_picks_an_accelerator_when_there_is_one():
    args = train_toy.parse_args([])
    assert args.device == (ACCELERATORS or ["cpu"])[0]


@pytest.mark.parametrize("absent", [d for d in ("cuda", "mps") if d not in DEVICES])
def test_an_absent_device_is_exit_2_naming_the_flag(absent, capsys):
    err = exit_2_error(train_toy.parse_args, ["--device", absent], capsys)
    assert f"argument --device: {absent} is not available on this machine (available: cpu" in err


def test_cuda_graph_replays_the_eager_step_or_is_refused_without_cuda(capsys):
    """Where CUDA exists: the graphed training step gives the eager numbers, to float32 precision.
    Two Adam implementations round differently (fused with a float learning rate; capturable, with
    a tensor one), by about 1e-7 per step; over 30 steps of a tiny model the held-out losses stay
    within 1e-3 of each other, and the verdicts agree. Without CUDA, asking for the graph is exit 2."""
    tiny = ["--layers", "2", *TINY_RUN, "--d-model", "16", "--steps", "30", "--eval-every", "5",
            "--warmup", "5"]
    if "cuda" not in ACCELERATORS:
        err = exit_2_error(cuda_graph.main, tiny + ["--device", "cpu"], capsys)
        assert "argument --device" in err and "needs cuda, got cpu" in err
        return
    eager = train_toy.main(tiny + ["--device", "cuda"])
    graphed = cuda_graph.main(tiny + ["--device", "cuda"])
    for arm in ("vanilla", "admin"):
        a, b = eager["arms"][arm], graphed["arms"][arm]
        assert a["steps"] == b["steps"] and a["verdict"] == b["verdict"]
        for (step_a, loss_a, _), (step_b, loss_b, _) in zip(a["history"], b["history"], strict=True):
            assert step_a == step_b and loss_b == pytest.approx(loss_a, rel=1e-3), (arm, step_a)
