"""The demo with each training step replayed as one CUDA graph, for timing on a GPU:

    python -m lab.cuda_graph --layers 48 --device cuda     # the demo's flags; the same verdicts

Eager PyTorch launches a few hundred small kernels per layer and step, and at this toy size the GPU
waits on Python for most of them; a graph records them once and replays them with one call. A graph
replays fixed memory, so the batch is copied into static tensors, the learning rate is a tensor that
the optimizer reads on the GPU (filled before each replay), and Adam is `capturable`. The first steps
run eagerly on a side stream: they allocate Adam's state and warm the kernels, as capture requires.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

import train_toy

WARM_STEPS = 3  # eager steps before the graph is recorded


def graphed_adam_step(model: nn.Module, loss_of: Callable[[Tensor, Tensor], Tensor], lr: float,
                      betas: tuple[float, float]) -> Callable[[Tensor, Tensor, float], Tensor]:
    """step(inp, target, lr) -> loss (a 0-dim tensor): forward, loss, backward and Adam, as the eager
    step of train_toy does them, replayed as one CUDA graph. Dropout must be 0."""
    lr_now = torch.tensor(lr, device=next(model.parameters()).device)
    opt = torch.optim.Adam(model.parameters(), lr=lr_now, betas=betas, capturable=True, foreach=True)
    graph, side, static = torch.cuda.CUDAGraph(), torch.cuda.Stream(), {"calls": 0}

    def forward_backward_adam(inp: Tensor, target: Tensor) -> Tensor:
        loss = loss_of(model(inp), target)
        opt.zero_grad(set_to_none=True)  # in the graph, backward then writes the gradients afresh
        loss.backward()
        opt.step()
        return loss

    def step(inp: Tensor, target: Tensor, lr: float) -> Tensor:
        lr_now.fill_(lr)
        if static["calls"] < WARM_STEPS:  # ordinary steps on a side stream
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = forward_backward_adam(inp, target)
            torch.cuda.current_stream().wait_stream(side)
        else:
            if static["calls"] == WARM_STEPS:  # record once; recording runs nothing, so replay it too
                static.update(inp=inp.clone(), target=target.clone())
                with torch.cuda.graph(graph):
                    static["loss"] = forward_backward_adam(static["inp"], static["target"])
            static["inp"].copy_(inp)
            static["target"].copy_(target)
            graph.replay()
            loss = static["loss"]
        static["calls"] += 1
        return loss
    return step


def graphed_step(model: nn.Module, cfg: train_toy.TrainConfig):
    """train_toy's make_step, replayed as a CUDA graph."""
    return graphed_adam_step(model, train_toy.loss_of, cfg.lr, train_toy.BETAS)


def main(argv: list[str] | None = None) -> dict:
    """The demo (train_toy.main) with graphed steps; without CUDA, exit 2 naming --device."""
    device = train_toy.parse_args(argv).device
    if device != "cuda":
        train_toy.build_parser().error(f"argument --device: a CUDA graph needs cuda, got {device}")
    return train_toy.main(argv, new_step=graphed_step)


if __name__ == "__main__":
    main()
