"""Time one round of local training: the sequential `train_local` loop against `train_cohort`.

    python benchmarks/bench_cohort.py [--clients 20,100] [--repeats 3] [--threads N]

MNIST-1D split across the clients by the run config's Dirichlet partitioner (fedadamw.data.split),
the 1-D CNN, 2 local epochs of AdamW (lr 1e-3, λ 0.01, batch 32): every client of the split
trains once from the same global weights, on the CPU. Both paths are warmed up once untimed
(the first call of each in a process is shown apart, "cold");
the first table shows the medians of wall time and of this process's CPU time (the steadier one
on a shared machine) over the repeats, both paths measured in the same run.
The second compares the returned weights, per client max |w_a − w_b| / max |w_b − w_global|
(median and max over clients): cohort against loop, and each against `train_local` in float64,
which shows how far float32 itself is from the exact trajectory (see fedadamw.core.cohort).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import Tensor, nn

from fedadamw.config import Config
from fedadamw.core.cohort import CohortClient, train_cohort
from fedadamw.core.models import model_for
from fedadamw.core.training import TrainResult, TrainSpec, train_local
from fedadamw.data.split import ArrayDataset, DataSpec, load_partition

CPU = torch.device("cpu")


def _clients(num_clients: int) -> tuple[nn.Module, dict[str, Tensor], list[CohortClient]]:
    """The model, its global weights and one round's clients of a `num_clients` split."""
    cfg = Config.from_mapping(
        {
            "dataset": "mnist1d",
            "model": "cnn1d",
            "num-clients": num_clients,
            "local-epochs": 2,
            "batch-size": 32,
            "learning-rate": 1e-3,
            "weight-decay": 0.01,
            # Dirichlet(0.3) cannot give each of 100 clients 10 of the 4,000 examples.
            "min-partition-size": 0,
        }
    )
    spec = DataSpec.from_config(cfg)
    model = model_for(cfg)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = []
    for pid in range(num_clients):
        data = load_partition(spec, pid)
        if len(data) == 0:
            continue  # an empty Dirichlet share: train_local refuses it, so no client sends it
        task = TrainSpec(
            "decoupled",
            cfg.learning_rate,
            cfg.weight_decay,
            cfg.local_epochs,
            cfg.batch_size,
            cfg.seed,
            pid,
            1,
        )
        clients.append(CohortClient(data, task))
    return model, global_state, clients


def _loop(
    model: nn.Module, global_state: dict[str, Tensor], clients: list[CohortClient]
) -> list[TrainResult]:
    """The sequential path: one client after the other, as the plain loop and Ray actors do."""
    results = []
    for c in clients:
        model.load_state_dict(global_state)
        results.append(train_local(model, c.data, c.spec, CPU))
    return results


class _Float64Data(ArrayDataset):
    """The same examples, handed to train_local as float64 (for a float64 model)."""

    def tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        x, y = super().tensors(device)
        return x.double(), y


def _float64_loop(
    model: nn.Module, global_state: dict[str, Tensor], clients: list[CohortClient]
) -> list[TrainResult]:
    """train_local in float64: torch's own optimizers on the exact (to 1e-16) trajectory."""
    wide = copy.deepcopy(model).double()
    wide_clients = [CohortClient(_Float64Data(c.data.x, c.data.y), c.spec) for c in clients]
    return _loop(wide, global_state, wide_clients)


def _rel_diffs(
    a: list[TrainResult], b: list[TrainResult], global_state: dict[str, Tensor]
) -> tuple[float, float]:
    """(median, max) over clients of max |w_a − w_b| / max |w_b − w_global|, in float64."""
    diffs = []
    for ra, rb in zip(a, b, strict=True):
        wa = {k: v.double() for k, v in ra.state.items()}
        wb = {k: v.double() for k, v in rb.state.items()}
        diff = max(float((wa[k] - wb[k]).abs().max()) for k in global_state)
        moved = max(float((wb[k] - global_state[k].double()).abs().max()) for k in global_state)
        diffs.append(diff / moved)
    return statistics.median(diffs), max(diffs)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="20,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for k in (int(c) for c in args.clients.split(",")):
        model, global_state, clients = _clients(k)
        start = time.perf_counter()
        cohort = train_cohort(model, global_state, clients, CPU)  # warm-up (cold first call)
        cold = time.perf_counter() - start
        loop = _loop(model, global_state, clients)  # warm-up
        loop_s, cohort_s, loop_cpu, cohort_cpu = [], [], [], []
        for _ in range(args.repeats):  # alternate, so drifts in the machine's load hit both
            start, cpu = time.perf_counter(), time.process_time()
            loop = _loop(model, global_state, clients)
            loop_s.append(time.perf_counter() - start)
            loop_cpu.append(time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            cohort = train_cohort(model, global_state, clients, CPU)
            cohort_s.append(time.perf_counter() - start)
            cohort_cpu.append(time.process_time() - cpu)
        steps = [r.local_steps for r in loop]
        exact = _float64_loop(model, global_state, clients)
        rows.append(
            (
                len(clients),
                sum(steps),
                max(steps),
                statistics.median(loop_s),
                statistics.median(cohort_s),
                statistics.median(loop_cpu),
                statistics.median(cohort_cpu),
                cold,
                _rel_diffs(cohort, loop, global_state),
                _rel_diffs(loop, exact, global_state),
                _rel_diffs(cohort, exact, global_state),
            )
        )
    print(
        "cnn1d on MNIST-1D (Dirichlet 0.3), 2 local epochs, AdamW lr 1e-3 λ 0.01, batch 32, "
        f"CPU, torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(
        f"{'clients':>8}{'steps':>7}{'longest':>9}{'loop s':>9}{'cohort s':>10}{'ratio':>7}"
        f"{'loop cpu':>10}{'cohort cpu':>12}{'ratio':>7}{'cold s':>8}"
    )
    for n, total, longest, loop_t, cohort_t, loop_c, cohort_c, cold, *_ in rows:
        print(
            f"{n:>8}{total:>7}{longest:>9}{loop_t:>9.3f}{cohort_t:>10.3f}"
            f"{cohort_t / loop_t:>7.2f}{loop_c:>10.3f}{cohort_c:>12.3f}{cohort_c / loop_c:>7.2f}"
            f"{cold:>8.2f}"
        )
    print("\nweights, relative difference per client (median / max over clients)")
    print(f"{'clients':>8}{'cohort vs loop':>20}{'loop vs float64':>20}{'cohort vs float64':>20}")
    for n, *_, vs_loop, loop_exact, cohort_exact in rows:
        cells = [f"{med:.1e} / {top:.1e}" for med, top in (vs_loop, loop_exact, cohort_exact)]
        print(f"{n:>8}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
