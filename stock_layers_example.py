"""Does Admin matter for PyTorch's own layers? The demo's task on 48 stock nn.TransformerEncoderLayer.

    python stock_layers_example.py                  # 48 layers: torch's init and Xavier, 3 arms each
    python stock_layers_example.py --layers 6 --json results/stock_layers_6.json

The demo (train_toy.py) trains our own PostLNTransformer. Here the model is what most people have: token
and position embeddings, torch.nn.TransformerEncoder of `--layers` layers under a causal mask, a
linear head. Three arms on the same data, loop, schedule and verdicts as the demo (train_toy's):
    vanilla           nn.TransformerEncoderLayer (Post-LN, norm_first=False: torch's default)
    admin             admin.TransformerEncoderLayer, ω = admin.calculate_init(2 · layers)
    admin profiled    admin.TransformerEncoderLayer, ω profiled on the first batch (the paper)
each with two initializations:
    torch             what the layers do on their own: Q, K, V Xavier-uniform, every nn.Linear
                      Kaiming-uniform(a=√5) (standard deviation 1/√(3 · fan_in): weak branches)
    xavier            what nn.Transformer does to its stack: Xavier-uniform for every weight matrix
The same seed gives every arm of one initialization the same initial weights (ω draws nothing). After
training, each Admin arm is folded by admin.fold and loaded, strictly, into the stock classes.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import admin
import cli
import train_toy

INITS = ("torch", "xavier")
ARMS = ("vanilla", "admin", "admin profiled")
FOLD_GAP = 1e-5  # "same logits": float32 rounding (the fold itself is checked in float64 by admin.fold)


class StockLM(nn.Module):
    """Embeddings, nn.TransformerEncoder of Post-LN layers under a causal mask, a head: (B, T) -> (B, T, V)."""

    def __init__(self, arm: str, layers: int, args):
        super().__init__()
        C, V = args.d_model, train_toy.VOCAB
        self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(2 * args.digits, C)
        sizes = dict(d_model=C, nhead=args.n_heads, dim_feedforward=4 * C, dropout=0.0, batch_first=True)
        layer = (nn.TransformerEncoderLayer(**sizes) if arm == "vanilla"
                 else admin.TransformerEncoderLayer(**sizes, num_res_layers=2 * layers))
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(C, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)  # True: a later position
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, C)
        return self.head(self.encoder(x, mask=causal, is_causal=True))  # (B, T, V)


def make_stock_model(arm: str, init: str, args) -> StockLM:
    torch.manual_seed(args.seed)  # the same draws for every arm: ω is no random number
    model = StockLM(arm, args.layers, args)
    if init == "xavier":  # nn.Transformer's _reset_parameters, on the stack it would own
        for p in model.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
    return model.to(args.device)


def run(args, log) -> list[dict]:
    data, rows = train_toy.ToyData(args.task, args.digits, args.seed, args.device), []
    for init in args.inits:
        for arm in args.arms:
            model = make_stock_model(arm, init, args)
            first = next(data.batches(args.batch_size))[0]
            omegas = admin.profile_omega(model, first) if arm == "admin profiled" else None
            log(f"training {arm}, {init} init")
            result = train_toy.train_arm(arm, args, data, log, model=model)
            row = dict(init=init, arm=arm, steps=result.steps, loss=result.final_loss,
                       accuracy=result.accuracy, verdict=result.verdict, seconds=result.seconds,
                       omega=[min(omegas), max(omegas)] if omegas else None, folded=None,
                       history=result.history)
            if arm != "vanilla" and result.diverged_at is None:
                row["folded"] = fold_into_stock(model, init, first, args)
            rows.append(row)
    return rows


def fold_into_stock(model: StockLM, init: str, batch: torch.Tensor, args) -> float:
    """Fold ω with admin.fold, load the rest strictly into the vanilla StockLM: the relative logit gap."""
    model.eval()
    with torch.no_grad():
        want = model(batch)
    folded = admin.fold(model, batch, embeddings={model.encoder: [model.tok.weight, model.pos.weight]})
    stock = make_stock_model("vanilla", init, args)
    stock.load_state_dict(folded.state_dict, strict=True)
    with torch.no_grad():
        return ((stock.eval()(batch) - want).abs().max() / want.abs().max()).item()


def render(config: dict, rows: list[dict], seconds: float) -> str:
    """What main() prints, less the training lines: the configuration, the table, the time."""
    return "\n".join(["configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()),
                      table(rows, config["layers"]), f"({seconds:.0f}s in all)"])


def table(rows: list[dict], layers: int) -> str:
    lines = [f"{layers} stock layers  arm             steps  final loss  accuracy  verdict         "
             "profiled ω      folded, in stock layers"]
    for r in rows:
        omega = "" if r["omega"] is None else f"{r['omega'][0]:.2f} to {r['omega'][1]:.2f}"
        folded = ("" if r["folded"] is None else "strict load, same logits" if r["folded"] < FOLD_GAP
                  else f"logits off by {r['folded']:.1e}")
        lines.append(f"{r['init'] + ' init':<17} {r['arm']:<15} {r['steps']:>5}  {r['loss']:>10.4f}  "
                     f"{100 * r['accuracy']:>7.2f}%  {r['verdict']:<15} {omega:<15} {folded}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=train_toy.DefaultsHelp)
    p.add_argument("--layers", type=cli.whole(1), default=48, help="encoder layers (2 sub-layers each)")
    p.add_argument("--arms", type=cli.comma_list(cli.one_of(ARMS), "arms"), default=list(ARMS),
                   help=f"comma-separated arms, from {', '.join(ARMS)}")
    p.add_argument("--inits", type=cli.comma_list(cli.one_of(INITS), "inits"), default=list(INITS),
                   help=f"comma-separated initializations, from {', '.join(INITS)}")
    train_toy.add_schedule_flags(p, by_depth=True)
    p.add_argument("--eval-every", type=cli.whole(1), default=20, help="steps between held-out evaluations")
    cli.add_model_flags(p)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.set_defaults(cuda_graph=False, omega="closed", plot=None)  # eager steps; ω profiled here, not by train_arm
    args = cli.finish(p, p.parse_args(argv))
    train_toy.fill_schedule(args)
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    cli.start(args)
    log = lambda line: print(line, flush=True)  # noqa: E731
    config = cli.configuration(args, skip=("json", "plot", "cuda_graph", "omega"))
    start = time.perf_counter()
    log(render(config, [], 0.0).splitlines()[0])  # the configuration line, before training
    rows = run(args, log)
    log("\n".join(render(config, rows, time.perf_counter() - start).splitlines()[1:]))
    cli.write_outputs(args, {"config": config, "rows": rows}, None, log)
    return rows


if __name__ == "__main__":
    main()
