"""Whole-process wall time: a plain torch loop against `fedadamw run` with each engine, one run.

    python benchmarks/bench_simulation.py [--repeats 2] [--scale 10,100,1000] [--skip-jobs]
        [--transformer 20,3] [--skip-transformer]

Table 1, the reference job of the issue (MNIST-1D, cnn1d, 2 local epochs of AdamW with lr 1e-3
and λ 0.01, batch 32, Dirichlet α = 0.3, one decoupled arm) at 20 clients × 30 rounds and at
100 clients × 10 rounds, three ways, each a whole process timed from its start to its exit:

- a plain one-process torch loop (`--plain-loop`, this file): FedAvg by hand over the same
  split with `train_local` and the server's evaluation every round, nothing stored;
- `fedadamw run --set engine=flower`: Flower's simulation engine (Ray), one actor per core;
- `fedadamw run --set engine=vmap`: the vectorized cohort engine, no Ray.

Ratios are to the plain loop of the same repeat; the runs alternate, and each cell is the
median over `--repeats`. "fixed" is the whole time less the stored rounds' seconds: imports,
data preparation, Ray's start and stop.

Table 1b, the transformer job (`--transformer CLIENTS,ROUNDS`): the same three paths on
Shakespeare's speaking roles (natural-id, one client per role), the causal transformer at its
default sizes (2 layers, d = 32, 4 heads, 80-character windows), 10 local steps of AdamW (lr 3e-3,
λ 0.1, `decay-params = no-embeddings`) of batch 16, every client every round.

Table 2, scale: `synthetic` data (FedProx's Synthetic(1, 1), one natural client each), cnn1d,
1 local epoch, 2 rounds, every client in every round, for each client count: the median
seconds per round of both engines (the Flower engine is left out above 100 clients unless
`--flower-at-scale`: a message costs ~7 ms there), and the server's measurement per round
(`fedadamw.core.updates.measure_round`: reply checks, Δ, the Gram matrices and statistics)
for cnn1d and for resnet20 (272k parameters), timed in this process on K random replies. The
resnet20 round time at K clients is K × one client's local training (50 CIFAR-sized examples,
2 epochs of batch 32, measured here), i.e. a lower bound: it leaves out the server's work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REFERENCE = {
    "local-epochs": 2,
    "learning-rate": 1e-3,
    "weight-decay": 0.01,
    "batch-size": 32,
    "dirichlet-alpha": 0.3,
    "arms": "decoupled",
}
JOBS = ((20, 30), (100, 10))  # (clients, rounds)
TRANSFORMER = {
    "dataset": "shakespeare",
    "model": "transformer",
    "partitioner": "natural-id",
    "min-partition-size": 0,
    "local-steps": 10,
    "learning-rate": 3e-3,
    "weight-decay": 0.1,
    "decay-params": "no-embeddings",
    "batch-size": 16,
    "arms": "decoupled",
}
SETTINGS = {"reference": REFERENCE, "transformer": TRANSFORMER}


def plain_loop(clients: int, rounds: int, job: str = "reference") -> float:
    """FedAvg as a single-process torch loop; the final test accuracy."""
    import torch

    from fedadamw.config import Config
    from fedadamw.core.models import model_for
    from fedadamw.core.sampling import sample_partitions
    from fedadamw.core.training import TrainSpec, evaluate, train_local
    from fedadamw.data.split import DataSpec, load_partition, load_splits

    torch.set_num_threads(1)  # one core, as each Ray client and `fedadamw run --threads 1`
    cfg = Config.from_mapping(
        {**SETTINGS[job], "num-clients": clients, "num-server-rounds": rounds}
    )
    spec = DataSpec.from_config(cfg)
    _, test = load_splits(spec)
    model = model_for(cfg)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = 0.0
    for rnd in range(1, rounds + 1):
        total, acc_state = 0, {k: torch.zeros_like(v) for k, v in global_state.items()}
        for pid in sample_partitions(cfg.seed, rnd, range(clients), cfg.clients_per_round):
            model.load_state_dict(global_state)
            task = TrainSpec(
                "decoupled",
                cfg.learning_rate,
                cfg.weight_decay,
                cfg.local_epochs,
                cfg.batch_size,
                cfg.seed,
                pid,
                rnd,
                local_steps=cfg.local_steps,
                decay_params=cfg.decay_params,
            )
            result = train_local(model, load_partition(spec, pid), task)
            total += result.num_examples
            for k, v in result.state.items():
                acc_state[k] += result.num_examples * v
        global_state = {k: v / total for k, v in acc_state.items()}
        model.load_state_dict(global_state)
        _, accuracy = evaluate(model, test)
    return accuracy


def _timed(argv: list[str]) -> tuple[float, str]:
    """(seconds from start to exit, stdout) of a fresh process."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[2:5]} failed: {proc.stderr[-2000:]}")
    return seconds, proc.stdout


def run_loop(clients: int, rounds: int, job: str = "reference") -> tuple[float, float]:
    """(whole-process seconds, final accuracy) of the plain loop."""
    argv = [sys.executable, __file__, "--plain-loop", f"{clients},{rounds},{job}"]
    seconds, out = _timed(argv)
    return seconds, float(out.strip().splitlines()[-1])


def run_fedadamw(settings: dict[str, object], out: Path) -> tuple[float, list[float], float]:
    """(whole-command seconds, each stored round's seconds, final accuracy) of `fedadamw run`."""
    from fedadamw.results.reader import connect_readonly
    from fedadamw.results.summaries import arm_summary
    from fedadamw.schema import STORE_FILE

    argv = [sys.executable, "-m", "fedadamw.cli", "run", "--out", str(out), "--restart"]
    for key, value in {**settings, "experiment": "bench"}.items():
        argv += ["--set", f"{key}={value}"]
    seconds, _ = _timed(argv)
    (row,) = arm_summary(out / STORE_FILE)
    conn = connect_readonly(out / STORE_FILE)
    per_round = [float(r[0]) for r in conn.execute("SELECT seconds FROM rounds WHERE round >= 1")]
    conn.close()
    return seconds, per_round, float(row["final_accuracy"])


def _prepare(settings: dict[str, object]) -> None:
    """Make the split once, untimed: every path then reads it from the disk cache."""
    from fedadamw.config import Config
    from fedadamw.data.split import prepare

    prepare(Config.from_mapping(settings))


def jobs(repeats: int, job: str = "reference", sizes: tuple[tuple[int, int], ...] = JOBS) -> None:
    """Table 1 (or 1b): the plain loop and both engines, whole processes, alternating."""
    if job == "reference":
        print(
            "reference job: MNIST-1D, cnn1d, 2 local epochs AdamW (lr 1e-3, λ 0.01), batch 32, "
            f"Dirichlet α=0.3, one arm; whole process; median of {repeats}"
        )
    else:
        print(
            "\ntransformer job: Shakespeare roles (natural-id), transformer 2×32×4, 10 local "
            "steps AdamW (lr 3e-3, λ 0.1, no-embeddings), batch 16, one arm; whole process; "
            f"median of {repeats}"
        )
    print(
        f"{'job':<22}{'path':<28}{'seconds':>9}{'ratio':>7}{'rounds s':>10}{'fixed s':>9}{'acc':>7}"
    )
    for clients, rounds in sizes:
        _prepare({**SETTINGS[job], "num-clients": clients})
        cells: dict[str, list[tuple[float, float, float, float]]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                loop_s, loop_acc = run_loop(clients, rounds, job)
                cells.setdefault("plain torch loop", []).append((loop_s, 1.0, 0.0, loop_acc))
                for engine in ("flower", "vmap"):
                    settings = {
                        **SETTINGS[job],
                        "num-clients": clients,
                        "num-server-rounds": rounds,
                        "engine": engine,
                    }
                    whole, per_round, acc = run_fedadamw(settings, Path(tmp) / engine)
                    cells.setdefault(f"fedadamw run, {engine}", []).append(
                        (whole, whole / loop_s, sum(per_round), acc)
                    )
        for path, runs in cells.items():
            whole = statistics.median(r[0] for r in runs)
            ratio = statistics.median(r[1] for r in runs)
            rounds_s = statistics.median(r[2] for r in runs)
            fixed = "" if path.startswith("plain") else f"{whole - rounds_s:>9.1f}"
            rounds_cell = "" if path.startswith("plain") else f"{rounds_s:>10.1f}"
            print(
                f"{f'{clients} clients × {rounds}':<22}{path:<28}{whole:>9.1f}{ratio:>7.2f}"
                f"{rounds_cell:>10}{fixed:>9}{runs[-1][3]:>7.3f}"
            )


def _median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measurement_seconds(model_name: str, shape: tuple[int, ...], clients: int) -> float:
    """The server's per-round measurement of `clients` replies of this model (in-process)."""
    import numpy as np

    from fedadamw import schema
    from fedadamw.core.models import build_model
    from fedadamw.core.training import pick_device
    from fedadamw.core.updates import ClientReply, measure_round

    model = build_model(model_name, shape, 10, seed=0, norm="group")
    global_arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    replies = [
        ClientReply(
            node_id=pid,
            partition_id=pid,
            arrays={
                k: (v + 1e-3 * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in global_arrays.items()
            },
            metrics={
                schema.NUM_EXAMPLES: 50,
                schema.TRAIN_LOSS: 1.0,
                schema.LOCAL_STEPS: 4,
                schema.PARTITION_ID: pid,
            },
        )
        for pid in range(clients)
    ]
    names = {n for n, _ in model.named_parameters()}
    return _median_time(
        lambda: measure_round(global_arrays, replies, device=pick_device(), only=names),
        repeats=1 if clients >= 1000 else 3,
    )


def resnet20_client_seconds() -> float:
    """One client's local training on 50 CIFAR-sized examples (2 epochs, batch 32)."""
    import numpy as np

    from fedadamw.core.models import build_model
    from fedadamw.core.training import TrainSpec, train_local
    from fedadamw.data.split import ArrayDataset

    rng = np.random.default_rng(0)
    data = ArrayDataset(
        rng.standard_normal((50, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 50)
    )
    spec = TrainSpec("decoupled", 1e-3, 0.01, 2, 32, 0, 0, 1)

    def one() -> None:
        model = build_model("resnet20", (3, 32, 32), 10, seed=0, norm="batch")
        train_local(model, data, spec)

    one()  # warm-up
    return _median_time(one)


def scale(client_counts: list[int], flower_at_scale: bool) -> None:
    """Table 2: seconds per round against clients, and the server's share at resnet20 size."""
    client_s = resnet20_client_seconds()
    print(
        "\nscale: synthetic data, cnn1d, 1 local epoch, every client every round; "
        f"resnet20 client training {client_s:.2f} s each (measured)"
    )
    print(
        f"{'clients':>8}{'flower s/round':>16}{'vmap s/round':>14}{'measure cnn1d':>15}"
        f"{'measure resnet20':>18}{'resnet20 round ≥':>18}{'share':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for k in client_counts:
            settings = {
                "dataset": "synthetic",
                "partitioner": "natural-id",
                "num-clients": k,
                "num-server-rounds": 2,
                "local-epochs": 1,
                "learning-rate": 1e-3,
                "arms": "decoupled",
            }
            _prepare(settings)
            row = []
            for engine in ("flower", "vmap"):
                if engine == "flower" and k > 100 and not flower_at_scale:
                    row.append("—")
                    continue
                out = Path(tmp) / f"{engine}-{k}"
                _, per_round, _ = run_fedadamw({**settings, "engine": engine}, out)
                row.append(f"{statistics.median(per_round):.2f}")
            small = measurement_seconds("cnn1d", (60,), k)
            big = measurement_seconds("resnet20", (3, 32, 32), k)
            round_s = k * client_s
            print(
                f"{k:>8}{row[0]:>16}{row[1]:>14}{small:>15.3f}{big:>18.2f}{round_s:>18.1f}"
                f"{big / (big + round_s):>7.1%}"
            )


def main() -> None:
    """Print both tables (or, with --plain-loop, run the loop and print its accuracy)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain-loop", metavar="CLIENTS,ROUNDS,JOB", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each path (median)")
    parser.add_argument("--scale", default="10,100,1000", help="client counts of table 2")
    parser.add_argument("--skip-jobs", action="store_true", help="only table 2")
    parser.add_argument("--skip-scale", action="store_true", help="only table 1")
    parser.add_argument(
        "--transformer", default="20,3", metavar="CLIENTS,ROUNDS", help="table 1b's job"
    )
    parser.add_argument("--skip-transformer", action="store_true", help="no table 1b")
    parser.add_argument(
        "--flower-at-scale", action="store_true", help="also time the Flower engine above 100"
    )
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # flwr-datasets' split progress bars
    if args.plain_loop:
        clients, rounds, job = args.plain_loop.split(",")
        print(plain_loop(int(clients), int(rounds), job))
        return
    if not args.skip_jobs:
        jobs(args.repeats)
    if not args.skip_transformer:
        clients, rounds = (int(v) for v in args.transformer.split(","))
        jobs(args.repeats, "transformer", ((clients, rounds),))
    if not args.skip_scale:
        scale([int(k) for k in args.scale.split(",")], args.flower_at_scale)


if __name__ == "__main__":
    main()
