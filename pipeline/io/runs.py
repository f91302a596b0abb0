"""The files of a run folder that cross stages (`mer train` -> `mer evaluate`, `mer report`).

`predictions.csv` (pooled, and one per fold under `folds/<fold>/`), `train_log.csv` per fold and
`run.json`: one writer and one reader each. Probabilities are written with 6 decimals and read
back exactly, so writing them again gives the same text (a resumed run stays byte-identical).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import MerError

REQUIRED_PREDICTION_COLUMNS = ("sample_id", "subject", "true_label", "pred_label")
LOG_COLUMNS = ("epoch", "loss", "train_accuracy")


def prediction_columns(label_names: Sequence[str]) -> list[str]:
    return ["sample_id", "dataset", "subject", "true_label", "pred_label", *[f"prob_{name}" for name in label_names]]


def write_predictions(path: str | Path, rows: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> None:
    columns = prediction_columns(label_names)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{row[c]:.6f}" if c.startswith("prob_") else row[c] for c in columns])


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a predictions CSV (probabilities as floats); damage is an error naming line and fold."""
    path = Path(path)
    if not path.is_file():
        raise MerError(f"{path} not found: is {path.parent} a run folder written by `mer train`?")
    rows: list[dict[str, Any]] = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise MerError(f"{path} is empty; rerun `mer train`")
        missing = [c for c in REQUIRED_PREDICTION_COLUMNS if c not in header]
        if missing:
            raise MerError(f"{path}: missing column(s) {missing} in the header")
        for record in reader:
            fold = record[header.index("subject")] if len(record) > header.index("subject") else "?"
            if len(record) != len(header):
                raise MerError(
                    f"{path}, line {reader.line_num} (fold {fold}): {len(record)} fields, expected {len(header)}; "
                    "the file is truncated or damaged, rerun `mer train`"
                )
            try:
                rows.append({k: float(v) if k.startswith("prob_") else v for k, v in zip(header, record)})
            except ValueError as exc:
                raise MerError(f"{path}, line {reader.line_num} (fold {fold}): {exc}; rerun `mer train`") from exc
    if not rows:
        raise MerError(f"{path} holds no predictions; rerun `mer train`")
    return rows


WEIGHT_COLUMNS = ("full_weight", "phase_weight")  # the loss weights of the weighting modes, per epoch


def write_train_log(path: str | Path, log: Sequence[Mapping[str, float]]) -> None:
    """`epoch,loss,train_accuracy`, plus `full_weight,phase_weight` when the entries hold them."""
    weighted = bool(log) and all(column in log[0] for column in WEIGHT_COLUMNS)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LOG_COLUMNS + (WEIGHT_COLUMNS if weighted else ()))
        for entry in log:
            weights = [f"{entry[c]:.6f}" for c in WEIGHT_COLUMNS] if weighted else []
            writer.writerow([entry["epoch"], f"{entry['loss']:.6f}", f"{entry['train_accuracy']:.6f}", *weights])


def read_train_log(path: str | Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [
            {
                "epoch": int(r["epoch"]),
                "loss": float(r["loss"]),
                "train_accuracy": float(r["train_accuracy"]),
                **{c: float(r[c]) for c in WEIGHT_COLUMNS if r.get(c) not in (None, "")},
            }
            for r in csv.DictReader(handle)
        ]


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a run folder, with its label_names checked."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise MerError(f"{path} not found: is {run_dir} a run folder written by `mer train`?")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MerError(f"{path} is not valid JSON ({exc}); rerun `mer train`") from exc
    names = info.get("label_names") if isinstance(info, dict) else None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise MerError(f"{path} has no valid label_names list; rerun `mer train`")
    return info
