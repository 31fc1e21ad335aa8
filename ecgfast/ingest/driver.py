"""The ingest driver: plan the records of a source, convert each to the store's rate, duration and leads, append.

Format-independent: a reader (one module per format) lists a source's items and reads one item into a
:class:`~ecgfast.ingest.record.Record`; everything after that happens here.
"""

from __future__ import annotations

import csv
import importlib
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ecgfast.ingest.record import Record, SkipRecord
from ecgfast.leads import DERIVED_FROM_I_II, LEADS8, LEADS12, canonical_lead, select_leads

READERS = {"wfdb": "ecgfast.ingest.wfdb:WFDBReader"}


@dataclass
class IngestReport:
    """What an ingest did; ``str()`` gives the summary the ``ecgfast ingest`` command prints."""

    source: str
    dest: str
    format: str
    stored: int = 0
    already_stored: int = 0  # records of this source that the store held before
    skipped: Counter = field(default_factory=Counter)  # reason code -> records
    warned: Counter = field(default_factory=Counter)  # reason code -> records
    seconds: float = 0.0
    store_summary: str = ""

    def __str__(self) -> str:
        rate = self.stored / self.seconds if self.seconds else math.inf

        def counts(c: Counter) -> str:
            return f" ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})" if c else ""

        return "\n".join([
            f"ingested {self.stored:,} records from {self.source} ({self.format}) into {self.dest} "
            f"in {self.seconds:.1f} s ({rate:,.0f} records/s)",
            f"already stored {self.already_stored:,}; skipped {sum(self.skipped.values()):,}{counts(self.skipped)}; "
            f"warned {sum(self.warned.values()):,}{counts(self.warned)}",
            self.store_summary,
        ]).rstrip()


def _reader(format: str, src):
    if format not in READERS:
        raise ValueError(f"format must be one of {sorted(READERS)}, got {format!r}")
    module, name = READERS[format].split(":")
    return getattr(importlib.import_module(module), name)(src)


def _read_csv(path, columns: str) -> dict[str, dict[str, str]]:
    """Rows of a CSV keyed by its ``record_id`` column; ``columns`` names the CSV in errors."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "record_id" not in rows[0]:
        raise ValueError(f"{columns} CSV {path} needs a record_id column and at least one row")
    return {row.pop("record_id"): row for row in rows}


def _labels(table: dict[str, dict[str, str]], items: list[str], path) -> dict[str, np.ndarray]:
    names = list(next(iter(table.values())))
    out = {name: np.full(len(items), np.nan, np.float32) for name in names}
    for i, item in enumerate(items):
        for name, value in table.get(item, {}).items():
            try:
                out[name][i] = float(value) if value.strip() else np.nan
            except ValueError as err:
                raise ValueError(f"labels CSV {path}: record {item}, label {name}: {value!r} is not a number") from err
    return out


def plan(items: list[str], patient_keys: list[str]) -> list[int]:
    """The storing order: the items grouped by patient, patients in order of first appearance (stable)."""
    first: dict[str, int] = {}
    for key in patient_keys:
        first.setdefault(key, len(first))
    return sorted(range(len(items)), key=lambda i: first[patient_keys[i]])


def convert(record: Record, leads: tuple[str, ...], fs: float, n_samples: int):
    """A source record on the store's grid: (signal float32 (L, T) mV, length, lead_valid (L,), warnings).

    Resampled with ``scipy.signal.resample_poly``, cropped or zero-padded to ``n_samples``; leads matched by name,
    III, aVR, aVL and aVF derived from I and II where the source lacks them; missing, all-NaN and flat leads zeroed
    and marked invalid. Raises :class:`SkipRecord` when nothing usable remains.
    """
    names = {}
    for row, name in enumerate(record.lead_names):
        lead = canonical_lead(name)
        if lead is not None and lead not in names:
            names[lead] = row
    if not names:
        raise SkipRecord(record.item, "lead_set", f"no standard lead among {record.lead_names}")
    x = np.asarray(record.signal, np.float32)[list(names.values())]
    warnings = []
    all_nan = np.isnan(x).all(axis=1)
    if not np.isfinite(x[~all_nan]).all():
        raise SkipRecord(record.item, "nan", "NaN or inf samples inside a lead")
    if all_nan.any():
        warnings.append(("nan", " ".join(np.array(list(names))[all_nan])))
        x[all_nan] = 0
    if record.fs != fs:
        from scipy.signal import resample_poly

        ratio = Fraction(fs / record.fs).limit_denominator(1000)
        x = resample_poly(x, ratio.numerator, ratio.denominator, axis=1).astype(np.float32)
    length = min(x.shape[1], n_samples)
    present = [ld for ld in leads if ld in names or (ld in DERIVED_FROM_I_II and {"I", "II"} <= names.keys())]
    if not present:
        raise SkipRecord(record.item, "lead_set", f"none of the store's leads among {record.lead_names}")
    out = np.zeros((len(leads), n_samples), np.float32)
    rows = [leads.index(ld) for ld in present]
    out[rows, :length] = select_leads(x[:, :length], list(names), present)
    valid = np.zeros(len(leads), bool)
    valid[rows] = out[rows, :length].max(axis=1) != out[rows, :length].min(axis=1)
    missing = [ld for ld in leads if ld not in present]
    if missing:
        warnings.append(("lead_set", "missing " + " ".join(missing)))
    if not valid.any():
        raise SkipRecord(record.item, "flat_record", "every lead is flat")
    flat = [ld for ld, v in zip(leads, valid) if not v and ld in present]
    if flat:
        warnings.append(("flat_lead", " ".join(flat)))
    return out, length, valid, warnings


def ingest(
    src,
    dest,
    *,
    format: str = "wfdb",
    fs: float = 500,
    seconds: float = 10,
    leads: int = 12,
    gain_uv: float = 1.0,
    source_name: str | None = None,
    labels=None,
    patients=None,
    batch_records: int | None = None,
    progress: bool = True,
) -> IngestReport:
    """Ingest the source ``src`` into the store ``dest`` (created when absent, appended to otherwise).

    Args:
        src: the source folder. dest: store path or fsspec URL.
        format: the source's format (``wfdb``).
        fs, seconds: the store's rate (Hz) and duration (s); records are resampled and cropped or zero-padded.
        leads: 12 keeps the standard leads; 8 keeps I, II, V1-V6 (reads derive the other four).
        gain_uv: microvolts per stored integer unit.
        source_name: prefix of the record ids (default: the source folder's name).
        labels: CSV with ``record_id`` (the record's path inside the source, without extension) and one column per
            label (numbers; empty for unknown).
        patients: CSV with ``record_id`` and ``patient_key``; a patient's records are stored next to each other.
        batch_records: records converted per append (default: the store's shard size).
        progress: show a progress bar.
    """
    from tqdm import tqdm

    from ecgfast.store import ECGStore

    if leads not in (8, 12):
        raise ValueError(f"leads must be 8 or 12, got {leads}")
    lead_names = LEADS12 if leads == 12 else LEADS8
    n_samples = int(round(fs * seconds))
    started = time.perf_counter()
    reader = _reader(format, src)
    source_name = source_name or Path(src).resolve().name
    items = reader.items()
    label_table = _read_csv(labels, "labels") if labels else None
    patient_table = _read_csv(patients, "patients") if patients else {}
    keys = [patient_table.get(it, {}).get("patient_key") or None for it in items]
    order = plan(items, [k or it for k, it in zip(keys, items)])
    items, keys = [items[i] for i in order], [keys[i] for i in order]
    label_values = _labels(label_table, items, labels) if label_table else {}

    store = _open_or_create(ECGStore, dest, lead_names, fs, n_samples, gain_uv)
    report = IngestReport(source=str(src), dest=str(dest), format=format)
    in_store = set(store.record_ids.tolist())  # running an ingest again adds only what is missing
    todo = [p for p, item in enumerate(items) if f"{source_name}/{item}" not in in_store]
    report.already_stored = len(items) - len(todo)
    batch_records = batch_records or store.chunk_records
    batch: list[tuple[int, Record, tuple, np.ndarray]] = []  # (position, record, converted, int16)
    bad: list[tuple[str, str, str]] = []  # (record id, level, reason)

    def store_batch():
        if not batch:
            return
        pos = [b[0] for b in batch]
        store.append(
            np.stack([b[3] for b in batch]),
            lengths=[b[2][1] for b in batch],
            record_ids=[f"{source_name}/{b[1].item}" for b in batch],
            patient_keys=[keys[p] or b[1].patient_key or f"{source_name}/{b[1].item}" for p, b in zip(pos, batch)],
            age=[b[1].age for b in batch],
            sex=[b[1].sex for b in batch],
            fs_original=[b[1].fs for b in batch],
            lead_valid=np.stack([b[2][2] for b in batch]),
            labels={name: values[pos] for name, values in label_values.items()},
            raw=True,
        )
        report.stored += len(batch)
        batch.clear()

    with store:
        for pos in tqdm(todo, desc=f"ingest {source_name}", unit="rec", disable=not progress):
            item = items[pos]
            rid = f"{source_name}/{item}"
            try:
                record = reader.read(item)
                converted = convert(record, lead_names, fs, n_samples)
                quantized = store.quantize(converted[0][None], [rid])[0]
            except SkipRecord as err:
                bad.append((rid, "skip", f"{err.reason} {err.detail}".rstrip()))
                report.skipped[err.reason] += 1
                continue
            except ValueError as err:  # quantization: outside the int16 range at this gain
                bad.append((rid, "skip", f"out_of_range {err}"))
                report.skipped["out_of_range"] += 1
                continue
            for reason, detail in converted[3]:
                bad.append((rid, "warn", f"{reason} {detail}"))
                report.warned[reason] += 1
            batch.append((pos, record, converted, quantized))
            if len(batch) >= batch_records:
                store_batch()
        store_batch()
        if bad:
            store.add_report(*zip(*bad))
        store.add_source({"source": str(src), "source_name": source_name, "format": format, "gain_uv": gain_uv,
                          "labels": str(labels) if labels else None, "patients": str(patients) if patients else None,
                          "stored": report.stored})
    report.seconds = time.perf_counter() - started
    report.store_summary = ECGStore.open(dest).summary()
    return report


def _open_or_create(ECGStore, dest, lead_names, fs, n_samples, gain_uv):
    """Append to the store at ``dest`` if its rate, duration, leads and gain match; create it when absent."""
    try:
        store = ECGStore.open(dest, mode="r+")
    except (ValueError, FileNotFoundError):
        return ECGStore.create(dest, lead_names, fs, n_samples, gain_uv=gain_uv)
    found = (store.lead_names, store.fs, store.n_samples, store.gain_uv)
    if found != (tuple(lead_names), float(fs), n_samples, float(gain_uv)):
        store.close()
        raise ValueError(f"store {dest} holds leads {found[0]} at {found[1]:g} Hz, {found[2]} samples, {found[3]:g} uV "
                         f"per unit; this ingest asks for {tuple(lead_names)} at {fs:g} Hz, {n_samples} samples, "
                         f"{gain_uv:g} uV per unit")
    return store
