"""Wall time of one federated arm: a plain one-process torch loop vs `fedadamw run` (Flower+Ray).

docs/design.md's reference job is MNIST-1D, 20 clients, the 1-D CNN, 2 local epochs, 30 rounds;
the target is for the Flower path to beat the plain loop. Both paths use the same data split,
models, `train_local` and evaluation; the plain loop trains the clients one after the other
in this process, FedAvg by hand, no divergence bookkeeping. Prints one table with the ratio.

    python benchmarks/bench_simulation.py [--clients 20 --rounds 30 --epochs 2 --mode decoupled]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedadamw.config import Config
from fedadamw.core.models import build_model
from fedadamw.core.sampling import sample_partitions
from fedadamw.core.training import TrainSpec, evaluate, train_local
from fedadamw.data import registry
from fedadamw.data.split import DataSpec, load_partition, load_splits
from fedadamw.results.reader import arm_summary, connect_readonly


def plain_loop(cfg: Config, mode: str) -> tuple[float, float]:
    """(seconds, final accuracy) of FedAvg written as a single-process loop."""
    spec = DataSpec.from_config(cfg)
    _, test = load_splits(cfg.dataset)
    shape, classes = registry.get(cfg.dataset).shape, registry.get(cfg.dataset).num_classes
    parts = [load_partition(spec, p) for p in range(cfg.num_clients)]  # warm, as Ray's cache is
    start = time.perf_counter()
    model = build_model(cfg.model, shape, classes, cfg.seed)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    for rnd in range(1, cfg.num_server_rounds + 1):
        total, acc_state = 0, {k: torch.zeros_like(v) for k, v in global_state.items()}
        for pid in sample_partitions(cfg.seed, rnd, range(cfg.num_clients), cfg.clients_per_round):
            model.load_state_dict(global_state)
            task = TrainSpec(
                mode,
                cfg.learning_rate,
                cfg.weight_decay,
                cfg.local_epochs,
                cfg.batch_size,
                cfg.seed,
                pid,
                rnd,
            )
            result = train_local(model, parts[pid], task)
            total += result.num_examples
            for k, v in result.state.items():
                acc_state[k] += result.num_examples * v
        global_state = {k: v / total for k, v in acc_state.items()}
        model.load_state_dict(global_state)
        _, accuracy = evaluate(model, test)
    return time.perf_counter() - start, accuracy


def flower_run(cfg: Config, mode: str, out: Path) -> tuple[float, float, float]:
    """(whole-command seconds, seconds of the rounds alone, final accuracy) of `fedadamw run`."""
    sets = {
        "num-clients": cfg.num_clients,
        "num-server-rounds": cfg.num_server_rounds,
        "local-epochs": cfg.local_epochs,
        "arms": mode,
        "experiment": "bench",
    }
    argv = [sys.executable, "-m", "fedadamw.cli", "run", "--out", str(out)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    (row,) = arm_summary(out / "results.db")
    conn = connect_readonly(out / "results.db")
    rounds_s = float(conn.execute("SELECT SUM(seconds) FROM rounds WHERE round >= 1").fetchone()[0])
    conn.close()
    return seconds, rounds_s, float(row["final_accuracy"])


def main() -> None:
    """Run both paths once each and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--mode", default="decoupled")
    args = ap.parse_args()
    cfg = Config.from_mapping(
        {"num-clients": args.clients, "num-server-rounds": args.rounds, "local-epochs": args.epochs}
    )
    torch.set_num_threads(1)  # the plain loop gets one core, as each Ray client does
    plain_s, plain_acc = plain_loop(cfg, args.mode)
    with tempfile.TemporaryDirectory() as tmp:
        flower_s, rounds_s, flower_acc = flower_run(cfg, args.mode, Path(tmp) / "out")
    print(
        f"job: {args.clients} clients, {args.rounds} rounds, {args.epochs} local epochs, "
        f"{cfg.model}, {args.mode}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':<34}{'seconds':>10}{'final acc':>11}{'ratio':>8}")
    print(f"{'plain one-process torch loop':<34}{plain_s:>10.1f}{plain_acc:>11.3f}{1.0:>8.2f}")
    print(
        f"{'fedadamw run: rounds only':<34}{rounds_s:>10.1f}{flower_acc:>11.3f}"
        f"{rounds_s / plain_s:>8.2f}"
    )
    print(
        f"{'fedadamw run: whole command':<34}{flower_s:>10.1f}{flower_acc:>11.3f}"
        f"{flower_s / plain_s:>8.2f}"
    )


if __name__ == "__main__":
    main()
