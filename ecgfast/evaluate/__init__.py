"""Downstream evaluation: patient splits, metrics with a paired bootstrap, the arms and protocol, reports and plots.

One module per job: ``tasks`` (what a task name asks for: a label, a label group, a threshold), ``splits`` (who
trains, validates and is scored, bound to a store), ``metrics`` (AUROC, AUPRC, bootstrap replicates over test
patients, means over seeds), ``protocol`` (the arms under one early-stopping rule), ``reports`` (table, CSV, JSON,
provenance) and ``plots`` (the figures).
"""

from .metrics import (
    auprc,
    auroc,
    bootstrap_auroc_ci,
    bootstrap_counts,
    macro_auroc,
    patient_scores,
    replicate_metric,
    seed_mean_interval,
)
from .plots import plot_embedding, plot_results, plot_views
from .protocol import ARMS, COMPARISONS, DownstreamConfig, Evaluation, run_protocol, train_downstream
from .reports import file_sha256, format_table, provenance, write_predictions, write_results
from .splits import (
    LabelFraction,
    PatientSplit,
    fold_split,
    labelled_patient_split,
    nested_fractions,
    patient_labels,
    patient_split,
    store_identity,
)
from .tasks import Task, parse_threshold, resolve_tasks, unknown_tasks

__all__ = [
    "ARMS",
    "COMPARISONS",
    "DownstreamConfig",
    "Evaluation",
    "LabelFraction",
    "PatientSplit",
    "Task",
    "auprc",
    "auroc",
    "bootstrap_auroc_ci",
    "bootstrap_counts",
    "file_sha256",
    "fold_split",
    "format_table",
    "labelled_patient_split",
    "macro_auroc",
    "nested_fractions",
    "parse_threshold",
    "patient_labels",
    "patient_scores",
    "patient_split",
    "plot_embedding",
    "plot_results",
    "plot_views",
    "provenance",
    "replicate_metric",
    "resolve_tasks",
    "run_protocol",
    "seed_mean_interval",
    "store_identity",
    "train_downstream",
    "unknown_tasks",
    "write_predictions",
    "write_results",
]
