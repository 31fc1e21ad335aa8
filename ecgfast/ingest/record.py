"""What every format's reader yields: one source record in millivolts, or a reason to skip it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Record:
    """One ECG as its source holds it, before resampling, lead matching and cropping.

    Attributes:
        item: the record's name inside the source: its path relative to the source root without extension
            (plus ``/<item>`` for one of several records inside one file). The record id is
            ``<source name>/<item>``, and label and patient CSVs refer to records by ``item``.
        signal: float32 millivolts (n_signals, n_samples).
        lead_names: the signals' names as the source gives them (matched through ``ecgfast.leads.canonical_lead``).
        fs: sampling rate in Hz.
        age: years, NaN unknown. sex: 0 female, 1 male, -1 unknown.
        patient_key: the source's patient identifier, None when it has none.
        warnings: ``(reason, detail)`` pairs the reader noticed (an implausible amplitude...), reported as ``warn``.
    """

    item: str
    signal: np.ndarray
    lead_names: list[str]
    fs: float
    age: float = math.nan
    sex: int = -1
    patient_key: str | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)


class SkipRecord(ValueError):
    """A record that cannot be stored: ``reason`` is a report code (``bad_header``, ``truncated``...)."""

    def __init__(self, item: str, reason: str, detail: str = ""):
        super().__init__(f"record {item}: {reason} {detail}".rstrip())
        self.item, self.reason, self.detail = item, reason, detail
