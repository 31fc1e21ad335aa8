"""CODE-15% reader: HDF5 files with ``tracings`` (N, 4096, 12) at 400 Hz and ``exam_id`` (N,), and ``exams.csv``.

``exams.csv`` (at the source root) joins on ``exam_id``: ``patient_id``, ``age``, ``is_male``. The leads are DI, DII,
DIII, AVR, AVL, AVF, V1-V6. Exams shorter than 4096 samples are zero-padded at both ends; the reader trims both
ends. Rows with ``exam_id`` 0 are the files' padding and are not records.

The unit: the authors' README says the values are "at the scale 1e-4V: so it should be multiplied by 1000 in
order to obtain the signals in V", which contradicts itself; the multiplier reads as millivolts, the default
here (1000 uV per unit). ``source_unit_uv`` overrides it (100 for the 1e-4 V reading), and a record whose largest
peak-to-peak amplitude lies outside 0.1-5 mV gets an ``amplitude`` warning, which a wrong unit gives every record.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ecgfast.ingest.record import Option, Reader, Record, SkipRecord, age_years, source_files

LEADS = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
FS = 400.0
UNIT_UV = 1000.0
PLAUSIBLE_MV = (0.1, 5.0)


class Code15Reader(Reader):
    """Items ``<file path without .hdf5>/<exam_id>``; ``read(item)`` gives one exam in millivolts."""

    format = "code15"
    ALIASES = ("hdf5",)
    SUFFIXES = (".hdf5", ".h5")
    OPTIONS = (Option("source_unit_uv", f"microvolts per unit of the samples (default {UNIT_UV:g})", float),)

    def __init__(self, root, source_unit_uv: float | None = None):
        self.root = Path(root)
        self.files = source_files(self.root, self.SUFFIXES)
        if source_unit_uv is not None and not source_unit_uv > 0:
            raise ValueError(f"source_unit_uv must be positive, got {source_unit_uv}")
        self.scale = (source_unit_uv or UNIT_UV) / 1000.0
        exams = (self.root if self.root.is_dir() else self.root.parent) / "exams.csv"
        self.exams: dict[str, dict[str, str]] = {}
        if exams.is_file():
            with open(exams, newline="") as f:
                self.exams = {row["exam_id"].strip().removesuffix(".0"): row for row in csv.DictReader(f)}
        self._open: dict[str, object] = {}  # file item -> open h5py.File
        self._rows: dict[str, dict[str, int]] = {}  # file item -> exam id -> row

    def _file(self, name: str):
        import h5py

        if name not in self._open:
            f = h5py.File(self.files[name], "r")
            if "tracings" not in f or "exam_id" not in f:
                raise ValueError(f"{self.files[name]} lacks a tracings or exam_id dataset")
            ids = np.asarray(f["exam_id"][:]).astype(np.int64)
            if f["tracings"].ndim != 3 or f["tracings"].shape[0] != len(ids):
                raise ValueError(f"{self.files[name]}: tracings {f['tracings'].shape} for {len(ids)} exam ids")
            self._open[name] = f
            self._rows[name] = {str(e): r for r, e in enumerate(ids.tolist()) if e != 0}
        return self._open[name]

    def items(self) -> list[str]:
        """Every exam of every file; a file that cannot be opened is one item, which :meth:`read` reports."""
        items = []
        for name in self.files:
            try:
                self._file(name)
            except (OSError, ValueError, KeyError):
                items.append(name)
                continue
            items += [f"{name}/{e}" for e in self._rows[name]]
        return items

    def metadata(self, items: list[str]) -> dict:
        """``patient_keys`` from exams.csv's ``patient_id`` (None for an exam it does not list)."""
        keys = []
        for item in items:
            row = self.exams.get(item.rsplit("/", 1)[-1])
            keys.append((row.get("patient_id") or "").strip().removesuffix(".0") or None if row else None)
        return {"patient_keys": keys}

    def read(self, item: str) -> Record:
        name, _, exam = item.rpartition("/")
        if name not in self.files:  # a file listed whole: it could not be opened
            name, exam = item, None
        try:
            f = self._file(name)
        except (OSError, ValueError, KeyError) as err:
            raise SkipRecord(item, "unreadable", str(err)) from err
        if exam not in self._rows[name]:
            raise SkipRecord(item, "missing", f"exam {exam} is not in {self.files[name].name}")
        x = np.asarray(f["tracings"][self._rows[name][exam]], np.float32).T * np.float32(self.scale)  # (12, 4096)
        nonzero = np.flatnonzero(np.any(x != 0, axis=0))
        if len(nonzero) == 0:
            raise SkipRecord(item, "flat_record", "every lead is zero")
        x = x[:, nonzero[0] : nonzero[-1] + 1]
        row = self.exams.get(exam, {})
        male = (row.get("is_male") or "").strip().lower()
        warnings = []
        finite = np.where(np.isfinite(x), x, 0)
        amplitude = float(np.ptp(finite, axis=1).max())
        if not PLAUSIBLE_MV[0] <= amplitude <= PLAUSIBLE_MV[1]:
            warnings.append(("amplitude", f"largest peak-to-peak {amplitude:.3g} mV outside {PLAUSIBLE_MV[0]}-"
                             f"{PLAUSIBLE_MV[1]} mV at {self.scale * 1000:g} uV per unit (--source-unit-uv)"))
        return Record(
            item=item, signal=x, lead_names=list(LEADS), fs=FS,
            age=age_years(row.get("age", math.nan)),
            sex={"true": 1, "1": 1, "false": 0, "0": 0}.get(male, -1),
            patient_key=(row.get("patient_id") or "").strip().removesuffix(".0") or None,
            warnings=warnings,
        )
