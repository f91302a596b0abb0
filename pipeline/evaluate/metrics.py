"""MER metrics over LOSO predictions pooled across all folds.

- accuracy: correct / all predictions;
- UF1 (unweighted F1): the mean over classes of the per-class F1;
- UAR (unweighted average recall): the mean over classes of the per-class recall.

One label set (`label_set`): UF1 and UAR average over the run's classes (run.json label_names, the
DI cache's classes) that have at least one clip in the run. LOSO predicts every clip of the cache,
so these are the cache's classes less those of the class preset the dataset copy lacks (a class no
clip belongs to has no defined recall for any method, and counting it would penalize every method
for the preset; `mer train` warns about such a class). The set is fixed once per run and used alike
in the headline figure and in every bootstrap resample: a class of the set that a resample happens
to lack counts with F1 = 0 and recall = 0 there (it is not dropped from the average, which would
move the resample's figure onto another scale). Predictions of a class outside the set still count,
as errors against the true class. The per-class table lists every class of the run, absent ones
with support 0. Per dataset and per subject figures use their own subset's classes.

Uncertainty: with one run per cell, intervals resample whole subjects; with several training seeds
per cell, a two-level (hierarchical) bootstrap resamples subjects and, independently, seeds, both
with replacement, and the statistic is the mean over the drawn seeds of the pooled metric on the
drawn subjects (`seed_bootstrap`, `paired_seed_comparison`), so the interval includes the
seed-to-seed spread of training as well as the subject sampling.
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


def label_set(predictions: Predictions) -> np.ndarray:
    """The fixed classes UF1 and UAR average over for this run (module docstring): the run's classes
    with at least one clip in it, as indices into label_names."""
    return present_labels(predictions.y_true)


def uf1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Mean per-class F1 over `labels` (default: the classes present in y_true); an absent one counts 0."""
    labels = present_labels(y_true) if labels is None else np.asarray(labels)
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def uar(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Mean per-class recall over `labels` (default: the classes present in y_true); an absent one counts 0."""
    labels = present_labels(y_true) if labels is None else np.asarray(labels)
    return float(recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def summary(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[int] | None = None) -> dict[str, Any]:
    return {
        "accuracy": accuracy(y_true, y_pred),
        "uf1": uf1(y_true, y_pred, labels),
        "uar": uar(y_true, y_pred, labels),
        "n_samples": int(len(y_true)),
    }


def compute_metrics(predictions: Predictions) -> dict[str, Any]:
    """Flat accuracy / uf1 / uar / n_samples, plus per_class, per_subject and per_dataset tables."""
    names = predictions.label_names
    y_true, y_pred = predictions.y_true, predictions.y_pred
    labels = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    result = summary(y_true, y_pred, label_set(predictions))
    result["n_subjects"] = int(len(set(predictions.subjects.tolist())))
    result["classes"] = [names[i] for i in label_set(predictions)]
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


def metrics_from_confusion(counts: np.ndarray, labels: Sequence[int] | None = None) -> dict[str, float]:
    """Accuracy, UF1 and UAR from a (K, K) confusion matrix (rows true), same rules as above:
    averaged over `labels` (default: the classes present in the matrix's truth)."""
    batch = metrics_batch(np.asarray(counts)[None], labels)
    return {name: float(values[0]) for name, values in batch.items()}


def metrics_batch(counts: np.ndarray, labels: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Accuracy, UF1 and UAR of a stack (..., K, K) of confusion matrices, each of shape (...).

    UF1 and UAR average over `labels`, the same classes for every matrix; a class of `labels` a
    matrix has no true sample of counts as F1 = 0 and recall = 0. Without `labels`: the classes
    with a true sample in the first matrix (a single matrix: its present classes).
    """
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.shape[-1]
    if labels is None:
        labels = np.flatnonzero(counts.reshape(-1, k, k)[0].sum(axis=1) > 0)
    labels = np.asarray(labels, dtype=np.int64)
    total = counts.sum(axis=(-2, -1))
    hits_all = np.diagonal(counts, axis1=-2, axis2=-1)
    true_per_class = counts.sum(axis=-1)[..., labels]
    predicted_per_class = counts.sum(axis=-2)[..., labels]
    hits = hits_all[..., labels]
    recall = np.divide(hits, true_per_class, out=np.zeros_like(hits), where=true_per_class > 0)
    # F1 = 2 TP / (true + predicted), as scikit-learn computes it: equal proportions give
    # bit-identical values, so an interval without spread is exactly the value.
    both = true_per_class + predicted_per_class
    f1 = np.divide(2 * hits, both, out=np.zeros_like(hits), where=both > 0)
    accuracy = np.divide(hits_all.sum(axis=-1), total, out=np.zeros_like(total), where=total > 0)
    if len(labels) == 0:
        zeros = np.zeros(counts.shape[:-2])
        return {"accuracy": accuracy, "uf1": zeros, "uar": zeros}
    return {"accuracy": accuracy, "uf1": f1.mean(axis=-1), "uar": recall.mean(axis=-1)}


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


def _aligned(runs: Sequence[Predictions], reference: Predictions) -> list[Predictions]:
    """`runs` reordered to the clip order of `reference`; MerError unless they hold the same clips."""
    order = np.argsort(reference.sample_ids)
    aligned = []
    for run in runs:
        other = np.argsort(run.sample_ids)
        if not np.array_equal(reference.sample_ids[order], run.sample_ids[other]):
            raise MerError("the runs do not hold the same clips; compare runs made from the same DI cache")
        if not np.array_equal(reference.y_true[order], run.y_true[other]):
            raise MerError("the runs give the same clips different true labels; compare runs of the same DI cache")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        aligned.append(
            Predictions(
                reference.sample_ids,
                reference.subjects,
                reference.datasets,
                reference.y_true,
                run.y_pred[other][back],
                run.label_names,
            )
        )
    return aligned


def _seed_confusions(runs: Sequence[Predictions]) -> np.ndarray:
    """(seeds, subjects, K, K): per-subject confusions of each seed's run, on the first run's clips."""
    runs = _aligned(runs, runs[0])
    k = len(runs[0].label_names)
    return np.stack([_per_subject_confusions(r.subjects, r.y_true, r.y_pred, k) for r in runs])


def _resampled(confusions: np.ndarray, subject_weights: np.ndarray, seed_draws: np.ndarray, labels) -> dict:
    """Per resample: the mean over its drawn seeds of the metrics on its drawn subjects.

    confusions (S, N, K, K); subject_weights (R, N) how often each subject is drawn; seed_draws (R, D)."""
    pooled = np.einsum("rn,snkl->rskl", subject_weights, confusions)  # (R, S, K, K)
    per_seed = metrics_batch(pooled, labels)
    rows = np.arange(len(seed_draws))[:, None]
    return {name: values[rows, seed_draws].mean(axis=1) for name, values in per_seed.items()}


def _draws(n_subjects: int, n_seeds: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(subject weights (R, N), seed draws (R, S)): subjects and seeds drawn with replacement.

    With one seed the subject draws equal `_subject_draws` (the single-run bootstrap of before)."""
    subjects = _subject_draws(n_subjects, n_resamples, seed)
    weights = np.zeros((n_resamples, n_subjects))
    np.add.at(weights, (np.arange(n_resamples)[:, None], subjects), 1)
    seeds = np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_resamples, n_seeds))
    return weights, seeds


def seed_summary(runs: Sequence[Predictions]) -> dict[str, Any]:
    """Mean over the runs (one per training seed) of each pooled metric, its seed-to-seed standard
    deviation (ddof 1; 0 with one seed), min and max, over the first run's fixed label set."""
    labels = label_set(runs[0])
    values = {
        name: np.array([summary(r.y_true, r.y_pred, labels)[name] for r in runs]) for name in ("accuracy", "uf1", "uar")
    }
    return {
        name: {
            "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()),
            "max": float(v.max()),
            "seeds": len(v),
        }
        for name, v in values.items()
    }


def seed_bootstrap(
    runs: Sequence[Predictions], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile intervals of the seed-mean pooled metrics: subjects and seeds resampled (hierarchical)."""
    labels = label_set(runs[0])
    confusions = _seed_confusions(runs)
    weights, seed_draws = _draws(confusions.shape[1], confusions.shape[0], n_resamples, seed)
    draws = _resampled(confusions, weights, seed_draws, labels)
    return {name: _interval(draws[name], level) for name in ("accuracy", "uf1", "uar")}


def bootstrap_intervals(
    predictions: Predictions, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile intervals of the pooled metrics, resampling whole subjects with replacement; UF1
    and UAR over the run's fixed label set in every resample."""
    return seed_bootstrap([predictions], n_resamples, level, seed)


def paired_seed_comparison(
    reference: Sequence[Predictions],
    candidate: Sequence[Predictions],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Candidate minus reference (each a list of runs, one per seed) on the same clips.

    Observed: the difference of the seed means. Bootstrap: the same subjects are drawn for both
    (the clips are paired), the seeds of each side independently, both with replacement. For each
    metric: both seed means, the difference, its percentile interval and the share of resamples in
    which the candidate is not better (a one-sided bootstrap p-value over subjects and seeds).
    """
    runs = _aligned([*reference, *candidate], reference[0])
    labels = label_set(reference[0])
    a, b = _seed_confusions(runs[: len(reference)]), _seed_confusions(runs[len(reference) :])
    weights, seeds_a = _draws(a.shape[1], a.shape[0], n_resamples, seed)
    seeds_b = np.random.default_rng([seed, 2]).integers(0, b.shape[0], size=(n_resamples, b.shape[0]))
    resampled_a = _resampled(a, weights, seeds_a, labels)
    resampled_b = _resampled(b, weights, seeds_b, labels)
    observed_a = {k: float(v.mean()) for k, v in metrics_batch(a.sum(axis=1), labels).items()}
    observed_b = {k: float(v.mean()) for k, v in metrics_batch(b.sum(axis=1), labels).items()}
    result = {}
    for name in ("accuracy", "uf1", "uar"):
        values = resampled_b[name] - resampled_a[name]
        low, high = _interval(values, level)
        result[name] = {
            "reference": observed_a[name],
            "candidate": observed_b[name],
            "difference": observed_b[name] - observed_a[name],
            "low": low,
            "high": high,
            "p_not_better": float(np.mean(values <= 0)),
        }
    return result


def paired_comparison(
    reference: Predictions, candidate: Predictions, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Candidate minus reference on the same clips, with a subject bootstrap of the difference.

    Both runs must hold the same clips. For each metric: both values, the observed difference,
    its percentile interval, and the share of resamples in which the candidate is not better
    (a one-sided bootstrap p-value: small means the gain is unlikely to be subject noise).
    """
    return paired_seed_comparison([reference], [candidate], n_resamples, level, seed)
