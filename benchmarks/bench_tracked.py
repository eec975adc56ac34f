"""Time plain against tracked local training: cnn1d on one MNIST-1D partition, one table.

    python benchmarks/bench_tracked.py [--epochs 5] [--repeats 5] [--threads 1]

Both columns run `fedadamw.core.training.train_local` unchanged; the tracked column swaps its
optimizer factory for `make_tracked_optimizer`. Plain and tracked alternate, so drifts in the
machine's load hit both; the table shows medians of wall time and of this process's CPU time
(the steadier one on a shared machine, but blind to GPU work). One thread by default, as a Ray
client gets.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

from fedadamw.config import Config, default_config
from fedadamw.core import training
from fedadamw.core.models import model_for
from fedadamw.core.tracked import TrackedOptimizer, make_tracked_optimizer, shrink_ratio_quantiles
from fedadamw.data.split import DataSpec, load_partition
from fedadamw.schema import DECAY_MODES


def _config() -> Config:
    """The default run config, on the data set and model this benchmark names."""
    return default_config().replace(dataset="mnist1d", model="cnn1d")


def _run(mode: str, tracked: bool, epochs: int, partition: int) -> tuple[float, float, str]:
    """Wall and CPU seconds of one `train_local` call; (tracked) the split's check, shrink."""
    cfg = _config()
    data = load_partition(DataSpec.from_config(cfg), partition)
    model = model_for(cfg)
    spec = training.TrainSpec(
        mode=mode,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        local_epochs=epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        partition_id=partition,
        server_round=1,
    )
    made: list[TrackedOptimizer] = []

    def factory(*args: object, **kwargs: object) -> TrackedOptimizer:
        opt = make_tracked_optimizer(*args, **kwargs)  # type: ignore[arg-type]
        made.append(opt)
        return opt

    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with contextlib.ExitStack() as stack:
        if tracked:
            stack.enter_context(mock.patch.object(training, "make_optimizer", factory))
        start, cpu = time.perf_counter(), time.process_time()
        training.train_local(model, data, spec)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if not tracked:
        return wall, cpu, ""
    (opt,) = made
    residual = max(
        float((opt.data_part(p) + opt.decay_part(p) - (p.detach() - w0[n])).abs().max())
        for n, p in model.named_parameters()
    )
    q = shrink_ratio_quantiles(opt)
    shrink = "/".join(f"{q[k]:.3g}" for k in ("p5", "p50", "p95")) if q else "-"
    return wall, cpu, f"{residual:.1e}  {shrink}"


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(DECAY_MODES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = _config()
    n = len(load_partition(DataSpec.from_config(cfg), args.partition))
    steps = args.epochs * -(-n // cfg.batch_size)
    print(
        f"cnn1d, MNIST-1D partition {args.partition} ({n} examples), {args.epochs} epochs = "
        f"{steps} steps of batch {cfg.batch_size}, lr {cfg.learning_rate}, "
        f"λ {cfg.weight_decay}, {args.threads} thread(s), device {training.pick_device()}, "
        f"torch {torch.__version__}; median of {args.repeats}"
    )
    header = (
        f"{'mode':<14}{'plain s':>9}{'tracked s':>11}{'ratio':>7}{'cpu ratio':>11}"
        "  |Δd+Δc−Δ|  shrink p5/p50/p95"
    )
    print(header)
    print("-" * len(header))
    for mode in args.modes.split(","):
        _run(mode, False, 1, args.partition)  # warm-up: lazy init, caches
        _run(mode, True, 1, args.partition)
        runs: dict[bool, list[tuple[float, float, str]]] = {False: [], True: []}
        for _ in range(args.repeats):
            for tracked in (False, True):
                runs[tracked].append(_run(mode, tracked, args.epochs, args.partition))
        p, t = (statistics.median(r[0] for r in runs[k]) for k in (False, True))
        pc, tc = (statistics.median(r[1] for r in runs[k]) for k in (False, True))
        note = runs[True][-1][2]
        print(f"{mode:<14}{p:>9.3f}{t:>11.3f}{t / p:>7.2f}{tc / pc:>11.2f}  {note}")


if __name__ == "__main__":
    main()
