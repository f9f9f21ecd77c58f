"""Does Admin matter for PyTorch's own layers? The demo's task on 48 stock nn.TransformerEncoderLayer.

    python -m examples.stock_layers                  # 48 layers: torch's init and Xavier, 3 arms each
    python -m examples.stock_layers --layers 6 --json lab/results/stock_layers_6.json

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
import json
import time
from dataclasses import fields

import torch
from torch import nn

import admin
import train_toy
from train_toy import TrainConfig

INITS = ("torch", "xavier")
ARMS = ("vanilla", "admin", "admin profiled")
FOLD_GAP = 1e-5  # "same logits": float32 rounding (the fold itself is checked in float64 by admin.fold)


class StockLM(nn.Module):
    """Embeddings, nn.TransformerEncoder of Post-LN layers under a causal mask, a head: (B, T) -> (B, T, V)."""

    def __init__(self, arm: str, cfg: TrainConfig):
        super().__init__()
        C, V, layers = cfg.d_model, train_toy.VOCAB, cfg.layers
        self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(2 * cfg.digits, C)
        sizes = dict(d_model=C, nhead=cfg.n_heads, dim_feedforward=4 * C, dropout=0.0, batch_first=True)
        layer = (nn.TransformerEncoderLayer(**sizes) if arm == "vanilla"
                 else admin.TransformerEncoderLayer(**sizes, num_res_layers=2 * layers))
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(C, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)  # True: a later position
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, C)
        return self.head(self.encoder(x, mask=causal, is_causal=True))  # (B, T, V)


def make_stock_model(arm: str, init: str, cfg: TrainConfig) -> StockLM:
    torch.manual_seed(cfg.seed)  # the same draws for every arm: ω is no random number
    model = StockLM(arm, cfg)
    if init == "xavier":  # nn.Transformer's _reset_parameters, on the stack it would own
        for p in model.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
    return model.to(cfg.device)


def run(cfg: TrainConfig, inits: list[str], log) -> list[dict]:
    data, rows = train_toy.ToyData(cfg.task, cfg.digits, cfg.seed, cfg.device), []
    for init in inits:
        for arm in cfg.arms:
            model = make_stock_model(arm, init, cfg)
            first = next(data.batches(cfg.batch_size))[0]
            omegas = admin.profile_omega(model, first) if arm == "admin profiled" else None
            log(f"training {arm}, {init} init")
            result = train_toy.train_arm(arm, cfg, data, log, model=model)
            row = dict(init=init, arm=arm, steps=result.steps, loss=result.final_loss,
                       accuracy=result.accuracy, verdict=result.verdict, seconds=result.seconds,
                       omega=[min(omegas), max(omegas)] if omegas else None, folded=None,
                       history=result.history)
            if arm != "vanilla" and result.diverged_at is None:
                row["folded"] = fold_into_stock(model, init, first, cfg)
            rows.append(row)
    return rows


def fold_into_stock(model: StockLM, init: str, batch: torch.Tensor, cfg: TrainConfig) -> float:
    """Fold ω with admin.fold, load the rest strictly into the vanilla StockLM: the relative logit gap."""
    model.eval()
    with torch.no_grad():
        want = model(batch)
    folded = admin.fold(model, batch, embeddings={model.encoder: [model.tok.weight, model.pos.weight]})
    stock = make_stock_model("vanilla", init, cfg)
    stock.load_state_dict(folded.state_dict, strict=True)
    with torch.no_grad():
        return ((stock.eval()(batch) - want).abs().max() / want.abs().max()).item()


def render(config: dict, rows: list[dict], seconds: float) -> str:
    """What main() prints, less the training lines: the configuration, the table, the time."""
    return "\n".join([train_toy.configuration_line(config),
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


def choice_list(allowed: tuple[str, ...]):
    """An argparse type: comma-separated distinct values from `allowed`."""
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",")]
        if set(values) - set(allowed) or len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"must be distinct values from {', '.join(allowed)}, got {text!r}")
        return values
    return parse


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, list[str], argparse.Namespace]:
    """The run's training configuration (the demo's TrainConfig), the initializations, and the parsed
    flags (for --json). The schedule and model flags are the demo's (train_toy.py)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=train_toy.DefaultsHelp)
    p.add_argument("--layers", type=int, default=48, help="encoder layers, 2 sub-layers each (default 48)")
    p.add_argument("--arms", type=choice_list(ARMS), default=list(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--inits", type=choice_list(INITS), default=list(INITS),
                   help=f"comma-separated initializations, from {', '.join(INITS)}")
    for flag, kind in (("--steps", int), ("--lr", float), ("--warmup", int), ("--eval-every", int)):
        p.add_argument(flag, type=kind, help="as train_toy.py's (default: the demo's, by depth)")
    train_toy.add_model_flags(p)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = train_toy.finish(p, p.parse_args(argv))
    names = [f.name for f in fields(TrainConfig) if f.name != "schedule"]
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    return TrainConfig(**given), args.inits, args  # eager steps; ω is profiled here, not by train_arm


def configuration(cfg: TrainConfig, inits: list[str]) -> dict:
    """The configuration line's settings: the demo's, with the initializations after the arms."""
    shown = {k: v for k, v in train_toy.configuration(cfg).items() if k != "omega"}
    return {k: v for k, v in shown.items() if k in ("layers", "arms")} | {"inits": inits} | shown


def main(argv: list[str] | None = None) -> list[dict]:
    cfg, inits, args = parse_args(argv)
    train_toy.start(cfg)
    log = lambda line: print(line, flush=True)  # noqa: E731
    settings = configuration(cfg, inits)
    start = time.perf_counter()
    log(train_toy.configuration_line(settings))
    rows = run(cfg, inits, log)
    log("\n".join(render(settings, rows, time.perf_counter() - start).splitlines()[1:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": settings, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
