"""MER metrics over LOSO predictions pooled across all folds.

- accuracy: correct / all predictions;
- UF1 (unweighted F1): the mean over classes of the per-class F1;
- UAR (unweighted average recall): the mean over classes of the per-class recall.

Classes are those present in the ground truth of the evaluated set, as in the MER literature (MEGC
2019 and later): a class no sample belongs to has no defined recall, and counting it as 0 would
penalize every method for the class preset rather than for its predictions. Predictions of such a
class still count, as errors against the true class. The per-class table lists every class of the
run, absent ones with support 0. Per dataset and per subject figures follow the same rules on
their own subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, recall_score

from pipeline.errors import MerError
from pipeline.io.runs import read_predictions


@dataclass
class Predictions:
    """One row per clip, labels as indices into label_names."""

    sample_ids: np.ndarray
    subjects: np.ndarray
    datasets: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.y_true)


def load_predictions(
    path: str | Path, label_names: Sequence[str], expected_folds: dict[str, int] | None = None
) -> Predictions:
    """A run's predictions CSV as label indices, checking labels and folds; errors name the file, line and fold.

    `expected_folds` maps fold (subject) -> number of test samples, as recorded in run.json; a
    fold with fewer or more rows (a truncated file, an interrupted copy) is an error.
    """
    path = Path(path)
    rows = read_predictions(path)
    index = {name: i for i, name in enumerate(label_names)}
    y_true, y_pred = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
    for i, row in enumerate(rows):
        for column, target in (("true_label", y_true), ("pred_label", y_pred)):
            if row[column] not in index:
                raise MerError(
                    f"{path}, line {i + 2} (fold {row['subject']}, sample {row['sample_id']}): {column} {row[column]!r} "
                    f"is not one of the run's classes {list(label_names)} (run.json label_names)"
                )
            target[i] = index[row[column]]
    subjects = np.array([row["subject"] for row in rows])
    if expected_folds is not None:
        found = dict(zip(*np.unique(subjects, return_counts=True)))
        problems = [
            f"fold {fold}: {found.get(fold, 0)} predictions, run.json expects {n}"
            for fold, n in sorted(expected_folds.items())
            if found.get(fold, 0) != n
        ]
        problems += [
            f"fold {fold}: {n} predictions but the fold is not in run.json"
            for fold, n in sorted(found.items())
            if fold not in expected_folds
        ]
        if problems:
            raise MerError(f"{path} does not match run.json (truncated or mixed runs?): " + "; ".join(problems))
    ids = np.array([row["sample_id"] for row in rows])
    if len(set(ids.tolist())) != len(ids):
        raise MerError(f"{path}: some sample_id values occur more than once (mixed runs?)")
    datasets = np.array([row.get("dataset") or "" for row in rows])
    return Predictions(ids, subjects, datasets, y_true, y_pred, list(label_names))


def dataset_name(predictions: Predictions) -> str:
    """The dataset(s) of the predictions, 'casme2' or 'casme2+samm' for a composite; 'unknown' when unnamed."""
    names = sorted(set(predictions.datasets.tolist()) - {""})
    return "+".join(names) if names else "unknown"


def present_labels(y_true: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(y_true))


def uf1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean per-class F1 over the classes present in y_true."""
    return float(f1_score(y_true, y_pred, labels=present_labels(y_true), average="macro", zero_division=0))


def uar(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean per-class recall over the classes present in y_true."""
    return float(recall_score(y_true, y_pred, labels=present_labels(y_true), average="macro", zero_division=0))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    return {
        "accuracy": accuracy(y_true, y_pred),
        "uf1": uf1(y_true, y_pred),
        "uar": uar(y_true, y_pred),
        "n_samples": int(len(y_true)),
    }


def compute_metrics(predictions: Predictions) -> dict[str, Any]:
    """Flat accuracy / uf1 / uar / n_samples, plus per_class, per_subject and per_dataset tables."""
    names = predictions.label_names
    y_true, y_pred = predictions.y_true, predictions.y_pred
    labels = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    result = summary(y_true, y_pred)
    result["n_subjects"] = int(len(set(predictions.subjects.tolist())))
    result["classes"] = [names[i] for i in present_labels(y_true)]
    result["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    result["per_subject"] = {}
    for subject in sorted(set(predictions.subjects.tolist())):
        mask = predictions.subjects == subject
        result["per_subject"][subject] = {
            "accuracy": accuracy(y_true[mask], y_pred[mask]),
            "n_samples": int(mask.sum()),
            "n_correct": int((y_true[mask] == y_pred[mask]).sum()),
        }
    datasets = sorted(set(predictions.datasets.tolist()) - {""})
    if len(datasets) > 1:
        result["per_dataset"] = {
            d: summary(y_true[predictions.datasets == d], y_pred[predictions.datasets == d]) for d in datasets
        }
    return result


def confusion(predictions: Predictions) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class, in label_names order."""
    return confusion_matrix(predictions.y_true, predictions.y_pred, labels=np.arange(len(predictions.label_names)))


# ---------------------------------------------------------------------------------------------
# Uncertainty over subjects: LOSO folds are subjects, so subjects are the unit to resample.


def metrics_from_confusion(counts: np.ndarray) -> dict[str, float]:
    """Accuracy, UF1 and UAR from a (K, K) confusion matrix (rows true), same rules as above.

    F1 is 2 TP / (true + predicted), one division of integers as scikit-learn computes it, so
    equal proportions give bit-identical values: an interval without spread is exactly the value.
    """
    total = counts.sum()
    true_per_class, predicted_per_class, hits = counts.sum(axis=1), counts.sum(axis=0), np.diag(counts)
    present = true_per_class > 0
    recall = hits[present] / true_per_class[present]
    f1 = 2 * hits[present] / (true_per_class[present] + predicted_per_class[present])
    return {"accuracy": float(hits.sum() / total), "uf1": float(f1.mean()), "uar": float(recall.mean())}


def _per_subject_confusions(subjects: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(S, K, K) confusion matrices, one per subject, so a resample of subjects is a sum."""
    names, subject_index = np.unique(subjects, return_inverse=True)
    flat = np.zeros((len(names), k * k), np.int64)
    np.add.at(flat, (subject_index, y_true * k + y_pred), 1)
    return flat.reshape(len(names), k, k)


def _subject_draws(n_subjects: int, n_resamples: int, seed: int) -> np.ndarray:
    """`n_resamples` draws of whole subjects with replacement: subjects are LOSO's unit."""
    return np.random.default_rng(seed).integers(0, n_subjects, size=(n_resamples, n_subjects))


def _interval(values: Sequence[float], level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def bootstrap_intervals(
    predictions: Predictions, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile intervals of the pooled metrics, resampling whole subjects with replacement."""
    k = len(predictions.label_names)
    confusions = _per_subject_confusions(predictions.subjects, predictions.y_true, predictions.y_pred, k)
    draws = [
        metrics_from_confusion(confusions[d].sum(axis=0)) for d in _subject_draws(len(confusions), n_resamples, seed)
    ]
    return {name: _interval([d[name] for d in draws], level) for name in ("accuracy", "uf1", "uar")}


def paired_comparison(
    reference: Predictions, candidate: Predictions, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Candidate minus reference on the same clips, with a subject bootstrap of the difference.

    Both runs must hold the same clips. For each metric: both values, the observed difference,
    its percentile interval, and the share of resamples in which the candidate is not better
    (a one-sided bootstrap p-value: small means the gain is unlikely to be subject noise).
    """
    order, other = np.argsort(reference.sample_ids), np.argsort(candidate.sample_ids)
    if not np.array_equal(reference.sample_ids[order], candidate.sample_ids[other]):
        raise MerError("the two runs do not hold the same clips; compare runs made from the same DI cache")
    k = len(reference.label_names)
    subjects, y_true = reference.subjects[order], reference.y_true[order]
    a = _per_subject_confusions(subjects, y_true, reference.y_pred[order], k)
    b = _per_subject_confusions(subjects, y_true, candidate.y_pred[other], k)
    draws = _subject_draws(len(a), n_resamples, seed)
    observed_a, observed_b = metrics_from_confusion(a.sum(axis=0)), metrics_from_confusion(b.sum(axis=0))
    resampled_a = [metrics_from_confusion(a[d].sum(axis=0)) for d in draws]
    resampled_b = [metrics_from_confusion(b[d].sum(axis=0)) for d in draws]
    result = {}
    for name in ("accuracy", "uf1", "uar"):
        values = [y[name] - x[name] for x, y in zip(resampled_a, resampled_b)]
        low, high = _interval(values, level)
        result[name] = {
            "reference": observed_a[name],
            "candidate": observed_b[name],
            "difference": observed_b[name] - observed_a[name],
            "low": low,
            "high": high,
            "p_not_better": float(np.mean(np.asarray(values) <= 0)),
        }
    return result
