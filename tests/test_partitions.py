"""`fedadamw partitions`: the printed label histogram and the plot file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedadamw.config import Config
from fedadamw.data.labels import default_plot_path, describe, partitions_command
from fedadamw.data.split import DataSpec, holdout, load_splits, partition_indices
from fedadamw.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"


def test_table_rows_are_each_clients_label_counts_and_a_plot_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = Config.from_mapping({"num-clients": 4, "partitioner": "pathological"})
    plot = tmp_path / "sub" / "split.png"
    assert partitions_command(cfg, plot) == 0
    assert plot.read_bytes().startswith(PNG)
    out = capsys.readouterr().out
    # Independent count: bincount of the labels of each client's training rows (its
    # partition less the rows it holds out for validation).
    train, _ = load_splits("mnist1d")
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 4}
    spec = DataSpec.from_config(cfg)
    for client, part in enumerate(partition_indices(spec)):
        idx = np.setdiff1d(part, holdout(spec, client)[1])
        assert len(idx) == len(part) - int(0.1 * len(part))
        counts = np.bincount(train.y[idx], minlength=10)
        cells = [c.strip() for c in rows[str(client)].split("│")[1:-1]]
        assert cells[1] == str(len(idx))
        assert cells[4:] == [str(v) if v else "·" for v in counts]
    assert "pathological, 2 classes per client" in out and f"plot: {plot}" in out


def test_wide_histograms_keep_summary_columns_and_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = Config.from_mapping(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "partitioner": "natural-id",
            "num-clients": 3,
            "experiment": "syn",
        }
    )
    assert partitions_command(cfg, None) == 0
    assert default_plot_path(cfg) == Path("runs/syn/partitions.png")
    assert (tmp_path / "runs" / "syn" / "partitions.png").read_bytes().startswith(PNG)
    assert describe(cfg) == "synthetic(1, 1) · 3 clients · natural-id · seed 0"
    assert "examples per client: min" in capsys.readouterr().out


def test_an_impossible_split_is_a_config_error(tmp_path: Path) -> None:
    cfg = Config.from_mapping({"partitioner": "linear", "min-partition-size": 4000})
    with pytest.raises(ConfigError, match="min-partition-size: 4000"):
        partitions_command(cfg, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
