"""Centralized reference check: MNIST-1D's models through fedadamw's own trainer, next to the
test accuracies the MNIST-1D authors publish (Greydanus & Kobak, ICML 2024; README of
github.com/greydanus/mnist1d: logistic regression 32 %, MLP 68 %, CNN 94 %).

A federation of one client that holds the whole train split (`num-clients = 1`,
`partitioner = iid`) is centralized training, and FedAvg over one client returns that client's
weights. So `fedadamw run --set num-clients=1 --set partitioner=iid` computes exactly this loop,
plus Ray and Flower messaging that do not touch the numbers: every round calls
`training.train_local` (a fresh optimizer on the global weights, as on a client) for the local
epochs, then `training.evaluate` on the test split. Running it here, without Flower, keeps the
check to seconds and leaves nothing but the trainer under test.

The default recipe is the authors' (notebooks/train.py): Adam, learning rate 1e-2, no weight
decay, batch 100, 6,000 steps = 150 epochs of 40 batches, here as 30 rounds × 5 local epochs
("federated" schedule, Adam's moments restart each round) and as 1 round × 150 epochs
("one round": plain centralized training).

    python benchmarks/centralized.py [--seeds 0,1,2] [--models logreg,mlp,cnn1d]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedadamw.config import Config
from fedadamw.core.models import model_for
from fedadamw.core.training import TrainSpec, evaluate, train_local
from fedadamw.data.split import load_partition, load_splits, prepare

# Test accuracy the MNIST-1D authors publish for each model (README table, MNIST-1D row).
PUBLISHED = {"logreg": 0.32, "mlp": 0.68, "cnn1d": 0.94}
LABELS = {"logreg": "logistic regression", "mlp": "MLP", "cnn1d": "CNN"}


@dataclass(frozen=True)
class Outcome:
    """One training run: final and best test accuracy, final train accuracy, wall time."""

    final: float
    best: float
    train_acc: float
    seconds: float


def run(model_name: str, seed: int, rounds: int, epochs: int, args: argparse.Namespace) -> Outcome:
    """Train one model centrally through train_local/evaluate; accuracy after every round."""
    cfg = Config.from_mapping(
        {
            "model": model_name,
            "num-clients": 1,
            "partitioner": "iid",
            "seed": seed,
            "batch-size": args.batch_size,
            "learning-rate": args.learning_rate,
            "weight-decay": args.weight_decay,
            "local-epochs": epochs,
            "num-server-rounds": rounds,
        }
    )
    spec = prepare(cfg)
    data = load_partition(spec, 0)
    _, test = load_splits(spec)
    device = torch.device("cpu")
    model = model_for(cfg)
    accs = []
    start = time.perf_counter()
    for server_round in range(1, rounds + 1):
        train = TrainSpec(
            mode=args.mode,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            local_epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            partition_id=0,
            server_round=server_round,
        )
        result = train_local(model, data, train, device)
        model.load_state_dict(result.state)  # what the server would aggregate and send back
        accs.append(evaluate(model, test, device)[1])
    seconds = time.perf_counter() - start
    return Outcome(accs[-1], max(accs), evaluate(model, data, device)[1], seconds)


def main() -> None:
    """Run every model × schedule × seed and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logreg,mlp,cnn1d")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--mode", default="none", help="decay mode (authors: Adam, no decay)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30, help="federated schedule: rounds")
    parser.add_argument("--local-epochs", type=int, default=5, help="… × local epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    schedules = [
        (f"federated {args.rounds}×{args.local_epochs}", args.rounds, args.local_epochs),
        (f"one round 1×{args.rounds * args.local_epochs}", 1, args.rounds * args.local_epochs),
    ]
    table = Table(
        title=(
            f"MNIST-1D, one client holding all 4,000 train examples · mode {args.mode} · "
            f"lr {args.learning_rate:g} · batch {args.batch_size} · seeds {args.seeds}"
        )
    )
    for col in (
        "model",
        "schedule",
        "published",
        "final test acc",
        "best round",
        "final train acc",
        "s/run",
    ):
        table.add_column(col, justify="left" if col in ("model", "schedule") else "right")
    for name in args.models.split(","):
        for label, rounds, epochs in schedules:
            runs = [run(name, seed, rounds, epochs, args) for seed in seeds]
            final = np.array([r.final for r in runs])
            spread = 100 * final.std(ddof=1) if len(runs) > 1 else 0.0
            table.add_row(
                LABELS.get(name, name),
                label,
                f"{100 * PUBLISHED[name]:.0f}%" if name in PUBLISHED else "—",
                f"{100 * final.mean():.1f}% ± {spread:.1f}",
                f"{100 * np.mean([r.best for r in runs]):.1f}%",
                f"{100 * np.mean([r.train_acc for r in runs]):.1f}%",
                f"{np.mean([r.seconds for r in runs]):.1f}",
            )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
