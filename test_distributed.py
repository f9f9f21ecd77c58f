"""Admin under DistributedDataParallel: two CPU processes (gloo, localhost only) against one process.

Data parallel training of an Admin model with a trainable vector ω must be ordinary data parallel
training: ω is a parameter like any other. Profiling is the one step that needs care, because DDP's
constructor copies rank 0's parameters and buffers to every rank, and nothing copies them afterwards.
"""

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import admin
from lab.testing_tools import rel_err, tiny_config, train_steps

WORLD, STEPS, BATCH = 2, 3, 8


def fresh_model() -> admin.PostLNTransformer:
    torch.manual_seed(0)
    return admin.PostLNTransformer(tiny_config(n_layers=2, d_model=8, d_ff=16)).double()  # vector ω


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(11, (BATCH, 7), generator=gen) for _ in range(STEPS)]


def own_batch(rank: int) -> torch.Tensor:
    """A batch that differs between ranks, as each rank's data does."""
    return torch.randint(11, (4, 7), generator=torch.Generator().manual_seed(100 + rank))


def sgd(model) -> torch.optim.SGD:
    # SGD with momentum, not Adam: the comparison below stays linear in the gradients. Adam divides
    # each gradient by its own size, and the key bias's gradient is exactly zero in exact arithmetic
    # (softmax ignores a bias shared by all keys): Adam would turn its rounding noise into updates.
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def omegas(state: dict) -> list[torch.Tensor]:
    return [v for k, v in state.items() if k.endswith(".omega")]


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        # Training: each rank takes its half of every batch; DDP averages the gradients.
        model = DistributedDataParallel(fresh_model())
        train_steps(model, [idx.chunk(WORLD)[rank] for idx in batches()], sgd(model))
        torch.save(model.module.state_dict(), os.path.join(out, f"trained{rank}.pt"))
        # Profiling before wrapping, each rank on its own batch: DDP's constructor then copies rank 0's ω.
        model = fresh_model()
        admin.profile_omega(model, own_batch(rank))
        torch.save(DistributedDataParallel(model).module.state_dict(), os.path.join(out, f"before{rank}.pt"))
        # Profiling after wrapping would leave each rank its own ω, silently: profile_omega refuses.
        try:
            admin.profile_omega(DistributedDataParallel(fresh_model()), own_batch(rank))
            refused = "profiled"
        except ValueError as error:
            refused = str(error)
        with open(os.path.join(out, f"after{rank}.txt"), "w") as f:
            f.write(refused)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_parallel_training_and_where_to_profile(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    load = lambda name: torch.load(tmp_path / f"{name}.pt", weights_only=True)  # noqa: E731

    # Two halves on two ranks = the whole batch on one process. float64, three SGD steps: the two
    # differ only in the order of summation (1e-16); a gradient summed instead of averaged, or one
    # rank's half missing, would differ by 1e-3 or more.
    single = fresh_model()
    train_steps(single, batches(), sgd(single))
    for rank in range(WORLD):
        trained = load(f"trained{rank}")
        for key, value in single.state_dict().items():
            assert rel_err(trained[key], value) <= 1e-10, f"rank {rank}: {key} differs from one process"
    assert all(torch.equal(a, b) for a, b in zip(omegas(load("trained0")), omegas(load("trained1")))), \
        "ω differs between the ranks after training"
    assert any(w.std() > 0 for w in omegas(load("trained0"))), "ω did not train into a vector"

    # Profiled before wrapping: every rank holds rank 0's ω.
    rank0 = fresh_model()
    admin.profile_omega(rank0, own_batch(0))
    for rank in range(WORLD):
        before = omegas(load(f"before{rank}"))
        assert all(torch.equal(a, b) for a, b in zip(before, omegas(rank0.state_dict())))
    # Profiling after wrapping is refused on every rank, naming the module to profile instead.
    for rank in range(WORLD):
        refused = (tmp_path / f"after{rank}.txt").read_text()
        assert "DistributedDataParallel wrapper; call it on the model inside (model.module)" in refused, refused
