"""The grid engine against per-run vmap, the Flower engine and a compute floor, in one sitting.

    python benchmarks/bench_grid.py [--vmap-points 11] [--flower-points 2] [--scale 1,10,100,1000]

Table 1, `experiments/lr_wd_grid.toml` as shipped (132 runs = 4 η × 11 arms × 3 seeds, 10
clients, 20 rounds × 20 local steps), each a whole `fedadamw run` process timed from start to
exit:

- `engine = grid`: all 132 runs;
- `engine = vmap` (one run after another) and `engine = flower` (Ray): the same experiment cut
  to its first runs (`--vmap-points`, `--flower-points`: runs of seed 0, η = 0.001), their time
  scaled to 132 runs by the count of runs — the runs of this grid do the same work, so the
  scaling is linear (the column says how many runs were timed);
- the compute floor: the grid's number of client steps (132 × 20 rounds × 10 clients × 20
  steps) times the cost of one step of cnn1d forward + backward measured as the grid engine
  batches it (`fedadamw.core.stacked`, 64 models of batch 32 per call, no optimizer, no
  federation), in a loop in this process.

Table 2, scale: seconds per round of `engine = grid` against the number of runs in the batch
(seeds of the default config, 10 clients each, 1 round of 20 local steps after round 0), and
per client step, so the growth of the cost is visible.

Torch threads: every side uses one (`--threads 1` of `fedadamw run`, the default; this process
sets one for the floor), and so each uses one core of the machine; Flower's engine runs one Ray
actor per core (two here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "experiments" / "lr_wd_grid.toml"
RUNS, ROUNDS, CLIENTS, STEPS = 132, 20, 10, 20


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def cut_grid(runs: int, folder: Path) -> tuple[Path, int]:
    """The shipped grid cut to its first `runs` runs of seed 0 and the smallest η; (file, runs)."""
    data = tomllib.loads(GRID.read_text())
    sweep = data.pop("sweep")
    kept, count = [], 0
    for point in sweep["decay"]:
        take = point["arms"].split(",")[: runs - count]
        if take:
            kept.append({**point, "arms": ",".join(take)})
            count += len(take)
    data |= {"seed": sweep["seed"][0], "learning-rate": sweep["learning-rate"][0]}
    if len(kept) == 1:  # one point is no sweep: its keys go to the top level
        data |= kept[0]
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items()]
    if len(kept) > 1:
        lines += ["", "[sweep]", f"decay = {_toml_value(kept)}"]
    path = folder / f"cut{runs}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, count


def timed_run(config: Path, engine: str, out: Path) -> float:
    """Seconds of one whole `fedadamw run` process (its output goes to out/console.txt)."""
    argv = [sys.executable, "-m", "fedadamw.cli", "run", "--config", str(config)]
    argv += ["--set", f"engine={engine}", "--out", str(out), "--restart", "--force"]
    started = time.perf_counter()
    with (out.parent / f"{out.name}.console.txt").open("w") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (out.parent / f"{out.name}.console.txt").read_text().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"bench_grid: {engine} run failed (exit {proc.returncode})")
    return seconds


def floor_per_step(models: int = 64, batch: int = 32, steps: int = 200) -> float:
    """Seconds of one client step (cnn1d forward + backward), batched as the grid engine does."""
    import torch

    from fedadamw.core.models import build_model
    from fedadamw.core.stacked import stacked_forward

    torch.set_num_threads(1)
    model = build_model("cnn1d", (40,), 10, 0)
    forward = stacked_forward(model)
    assert forward is not None
    leaves = {
        n: p.detach().unsqueeze(0).repeat(models, *[1] * p.dim()).requires_grad_()
        for n, p in model.named_parameters()
    }
    x, y = torch.randn(models, batch, 40), torch.randint(0, 10, (models, batch))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            logits = forward(leaves, x)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            torch.autograd.grad(loss, list(leaves.values()))
        best = min(best, (time.perf_counter() - started) / (steps * models))
    return best


def scale_row(runs: int, folder: Path) -> tuple[int, float, float]:
    """(runs, seconds per round, microseconds per client step) of the grid engine."""
    config = folder / f"scale{runs}.toml"
    seeds = ", ".join(str(s) for s in range(runs))
    config.write_text(
        f'experiment = "bench-scale"\nnum-server-rounds = 1\nlocal-steps = {STEPS}\n'
        f'arms = "decoupled"\n\n[sweep]\nseed = [{seeds}]\n'
    )
    timed_run(config, "grid", folder / f"scale{runs}")
    # Each run's round-1 `seconds` is the wall time of that round for the whole batch.
    import sqlite3

    conn = sqlite3.connect(folder / f"scale{runs}" / "results.db")
    (round_s,) = conn.execute("SELECT max(seconds) FROM rounds WHERE round = 1").fetchone()
    conn.close()
    return runs, round_s, round_s / (runs * CLIENTS * STEPS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmap-points", type=int, default=11, help="runs timed per-run vmap")
    parser.add_argument("--flower-points", type=int, default=2, help="runs timed with Flower")
    parser.add_argument("--scale", default="1,10,100,1000", help="runs per batch in table 2")
    parser.add_argument("--skip-grid", action="store_true", help="only table 2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        folder = Path(tmp)
        if not args.skip_grid:
            floor = floor_per_step() * RUNS * ROUNDS * CLIENTS * STEPS
            grid = timed_run(GRID, "grid", folder / "grid")
            rows = [("grid", RUNS, grid)]
            for engine, points in (("vmap", args.vmap_points), ("flower", args.flower_points)):
                config, count = cut_grid(points, folder)
                rows.append(
                    (engine, count, timed_run(config, engine, folder / engine) * RUNS / count)
                )
            print(f"\nexperiments/lr_wd_grid.toml, {RUNS} runs (one torch thread per process)\n")
            print("| engine | runs timed | 132 runs | ÷ grid | ÷ compute floor |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for engine, count, seconds in rows:
                print(
                    f"| {engine} | {count} | {seconds / 60:.1f} min | {seconds / grid:.1f}× "
                    f"| {seconds / floor:.1f}× |"
                )
            print(f"| compute floor | — | {floor / 60:.1f} min | {floor / grid:.2f}× | 1.0× |")
        print("\nengine = grid, seconds per round against runs in the batch (10 clients each)\n")
        print("| runs | s per round | µs per client step |")
        print("| ---: | ---: | ---: |")
        for runs in (int(r) for r in args.scale.split(",")):
            n, round_s, per_step = scale_row(runs, folder)
            print(f"| {n} | {round_s:.2f} | {per_step:.0f} |")


if __name__ == "__main__":
    main()
