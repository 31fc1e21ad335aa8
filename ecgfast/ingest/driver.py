"""The ingest driver: plan a source's records, convert and encode them in parallel, write whole shards, resumably.

Format-independent: a reader (one module per format) lists a source's items, may scan its metadata (patient ids,
labels) and reads one item into a :class:`~ecgfast.ingest.record.Record`; everything after that happens here.

Exactly once, whenever the run dies: worker processes read, convert, quantize and compress records; the parent
alone writes. It fills shards in the planned order, writes each full shard as one atomic object beyond the store's
visible end, then a done marker holding its records' fields (``ingest_state/done_<n>``). Only when every record is
written does it append the fields, grow ``signals`` and remove ``ingest_state``. The same command run again finds
the markers and goes on after the last one; anything after it is redone.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import math
import os
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ecgfast.ingest.record import Record, SkipRecord
from ecgfast.leads import DERIVED_FROM_I_II, LEADS8, LEADS12, canonical_lead, select_leads

READERS = {
    "wfdb": "ecgfast.ingest.wfdb:WFDBReader",
    "code15": "ecgfast.ingest.code15:Code15Reader",
    "numpy": "ecgfast.ingest.npy:NumpyReader",
    "muse": "ecgfast.ingest.muse:MuseReader",
    "dicom": "ecgfast.ingest.dicom:DicomReader",
    "cpsc2018": "ecgfast.ingest.cpsc2018:CPSC2018Reader",
}
ALIASES = {"hdf5": "code15", "npy": "numpy", "npz": "numpy"}
# File suffix -> format, for --format auto. A .mat beside a .hea of the same name is a WFDB signal file.
_SUFFIXES = {".hea": "wfdb", ".h5": "code15", ".hdf5": "code15", ".npy": "numpy", ".npz": "numpy", ".xml": "muse",
             ".dcm": "dicom", ".mat": "cpsc2018"}
_TASK_ITEMS = 16  # items per worker task: small enough to keep the workers busy to the end


@dataclass
class IngestReport:
    """What an ingest did; ``str()`` gives the summary the ``ecgfast ingest`` command prints."""

    source: str
    dest: str
    format: str
    stored: int = 0
    already_stored: int = 0  # items of this source that the store held (or had skipped) before this run
    resumed: int = 0  # records written by an interrupted earlier try of this run
    skipped: Counter = field(default_factory=Counter)  # reason code -> records
    warned: Counter = field(default_factory=Counter)  # reason code -> records
    seconds: float = 0.0
    store_summary: str = ""

    def __str__(self) -> str:
        rate = self.stored / self.seconds if self.seconds else math.inf

        def counts(c: Counter) -> str:
            return f" ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})" if c else ""

        resumed = f"; resumed an interrupted run that had written {self.resumed:,}" if self.resumed else ""
        return "\n".join([
            f"ingested {self.stored:,} records from {self.source} ({self.format}) into {self.dest} "
            f"in {self.seconds:.1f} s ({rate:,.0f} records/s){resumed}",
            f"already stored {self.already_stored:,}; skipped {sum(self.skipped.values()):,}{counts(self.skipped)}; "
            f"warned {sum(self.warned.values()):,}{counts(self.warned)}",
            self.store_summary,
        ]).rstrip()


def detect_format(src) -> str:
    """The format of a source folder (or file) from its files' suffixes; a ValueError when it is not clear."""
    src = Path(src)
    if not src.exists():
        raise ValueError(f"source {src} does not exist")
    files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
    found = Counter()
    for p in files:
        fmt = _SUFFIXES.get(p.suffix.lower())
        if fmt == "cpsc2018" and p.with_suffix(".hea").exists():
            continue
        if fmt:
            found[fmt] += 1
    if len(found) != 1:
        what = ", ".join(f"{n} {fmt}" for fmt, n in found.most_common()) or "no ECG files"
        raise ValueError(f"cannot tell the format of source {src} ({what}); pass --format")
    return next(iter(found))


def make_reader(format: str, src, options: dict | None = None):
    """The reader of ``format`` (``auto`` detects it) for ``src``, with its format-specific ``options``."""
    format = ALIASES.get(format, format)
    if format == "auto":
        format = detect_format(src)
    if format not in READERS:
        raise ValueError(f"format must be one of {sorted([*READERS, *ALIASES, 'auto'])}, got {format!r}")
    module, name = READERS[format].split(":")
    cls = getattr(importlib.import_module(module), name)
    options = {k: v for k, v in (options or {}).items() if v not in (None, False)}
    wrong = sorted(set(options) - set(cls.OPTIONS))
    if wrong:
        raise ValueError(f"options {wrong} do not apply to format {format} (it takes {list(cls.OPTIONS) or 'none'})")
    return cls(src, **options)


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
    if x.ndim != 2 or x.shape[1] == 0:
        raise SkipRecord(record.item, "truncated", f"no samples (signal shape {np.shape(record.signal)})")
    warnings = list(record.warnings)
    all_nan = np.isnan(x).all(axis=1)
    if not np.isfinite(x[~all_nan]).all():
        raise SkipRecord(record.item, "nan", "NaN or inf samples inside a lead")
    nan_leads = [ld for ld, n in zip(names, all_nan) if n]
    if nan_leads:
        warnings.append(("nan", " ".join(nan_leads)))
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
    flat = [ld for ld, v in zip(leads, valid) if not v and ld in present and ld not in nan_leads]
    if flat:
        warnings.append(("flat_lead", " ".join(flat)))
    return out, length, valid, warnings


def windows(record: Record, fs: float, n_samples: int) -> list[Record]:
    """A record longer than the store's duration as consecutive windows ``<item>/0``, ``<item>/1``...; a last
    window shorter than half the duration is dropped."""
    width = int(round(n_samples * record.fs / fs))
    total = np.shape(record.signal)[1]
    if total <= width:
        return [record]
    starts = [s for s in range(0, total, width) if total - s >= width / 2]
    return [Record(item=f"{record.item}/{k}", signal=record.signal[:, s : s + width], lead_names=record.lead_names,
                   fs=record.fs, age=record.age, sex=record.sex, patient_key=record.patient_key,
                   warnings=record.warnings) for k, s in enumerate(starts)]


# ---- the workers' side ---------------------------------------------------------------------------------------
_READERS: dict = {}  # one reader per process and source, kept between tasks (open files, parsed tables)


def _convert_task(job):
    """Read, convert, quantize and encode the items of one task; returns per item (position, records, rows)."""
    from ecgfast.store import quantize

    (format, src, options), (leads, fs, n_samples, gain_uv, split, codec, source_name), work = job
    key = repr((format, src, sorted(options.items())))
    if key not in _READERS:
        _READERS[key] = make_reader(format, src, options)
    reader = _READERS[key]
    results = []
    for pos, item in work:
        base = f"{source_name}/{item}"
        out, rows = [], []
        try:
            record = reader.read(item)
            for part in windows(record, fs, n_samples) if split else [record]:
                rid = f"{source_name}/{part.item}"
                signal, length, valid, warnings = convert(part, leads, fs, n_samples)
                try:
                    q = quantize(signal[None], gain_uv, [rid])[0]
                except ValueError as err:
                    raise SkipRecord(part.item, "out_of_range", str(err).split(": ", 1)[1]) from err
                key = f"{source_name}/{part.patient_key}" if part.patient_key else base
                out.append({"rid": rid, "key": key, "length": int(length),
                            "age": None if math.isnan(part.age) else float(part.age), "sex": int(part.sex),
                            "fs": float(part.fs), "valid": "".join("1" if v else "0" for v in valid),
                            "chunk": codec.encode(q)})
                rows += [(rid, "warn", f"{reason} {detail}".rstrip()) for reason, detail in warnings]
        except SkipRecord as err:
            out, rows = [], [(base, "skip", f"{err.reason} {err.detail}".rstrip())]
        except Exception as err:  # noqa: BLE001 - a parser's surprise is this record's problem, not the run's
            out, rows = [], [(base, "skip", f"unreadable {type(err).__name__}: {err}")]
        results.append((pos, out, rows))
    return results


def _run_tasks(jobs, workers: int):
    """The tasks' results in order: in this process, or in ``workers`` spawned processes, a few tasks ahead."""
    if workers <= 1:
        for job in jobs:
            yield _convert_task(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        ahead: deque = deque()
        jobs = iter(jobs)
        for job in jobs:
            ahead.append(pool.submit(_convert_task, job))
            if len(ahead) >= 3 * workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


# ---- the writer's side ---------------------------------------------------------------------------------------
class _ShardWriter:
    """Fills shards in order from encoded records, writing each full one and then its done marker."""

    def __init__(self, store, next_index: int, markers_before: int, strict: bool):
        self.store, self.S, self.strict = store, store.chunk_records, strict
        self.next = next_index  # store index of the next record
        start = next_index - next_index % self.S
        self.chunks = store.encoded_chunks(start // self.S, next_index - start) if next_index % self.S else []
        self.records: list[dict] = []  # the open shard's new records (fields, without the chunk)
        self.rows: list[tuple[str, str, str]] = []
        self.markers = markers_before  # done markers of the run so far
        self.written: list[dict] = []  # those written by this process

    def add(self, pos: int, records: list[dict], rows: list, resume_from: int) -> None:
        """Take an item's records in (all but the first ``resume_from``, which an earlier try wrote)."""
        if self.strict:
            for rid, level, reason in rows:
                if level == "skip":
                    code, _, detail = reason.partition(" ")
                    raise SkipRecord(rid, code, f"{detail} (--strict: the first skipped record stops the run)")
        if resume_from == 0:
            self.rows += rows
        for j, rec in enumerate(records[resume_from:], start=resume_from):
            self.chunks.append(rec.pop("chunk"))
            self.records.append({**rec, "pos": pos})
            self.next += 1
            if len(self.chunks) == self.S:
                done_with_item = j == len(records) - 1
                self.write(pos + 1 if done_with_item else pos, 0 if done_with_item else j + 1)

    def write(self, next_pos: int, partial: int) -> None:
        """Write the open shard (if it has new records) and a marker: pending items before ``next_pos`` are done,
        and the first ``partial`` records of the item at ``next_pos``."""
        if not self.records and not self.rows:
            return
        k = (self.next - 1) // self.S if self.records else self.next // self.S
        if self.records:
            self.store.write_encoded_shard(k, self.chunks)
        marker = {"shard": k, "records": self.records, "rows": [list(r) for r in self.rows], "next": next_pos,
                  "partial": partial}
        self.store.put_ingest_marker(self.markers, marker)
        self.written.append(marker)
        self.markers += 1
        if len(self.chunks) == self.S:
            self.chunks = []
        self.records, self.rows = [], []


def _run_key(format, src, source_name, options, labels, patients, split) -> dict:
    """What makes two ingest commands the same run (rate, duration, leads and gain are the store's own)."""
    return {"format": format, "source": str(Path(src).resolve()), "source_name": source_name,
            "options": {k: v for k, v in sorted(options.items()) if v not in (None, False)},
            "labels": str(Path(labels).resolve()) if labels else None,
            "patients": str(Path(patients).resolve()) if patients else None, "split": bool(split)}


def ingest(
    src,
    dest,
    *,
    format: str = "auto",
    fs: float = 500,
    seconds: float = 10,
    leads: int = 12,
    gain_uv: float = 1.0,
    source_name: str | None = None,
    labels=None,
    patients=None,
    labels_from_dx: bool = False,
    source_unit_uv: float | None = None,
    lead_names: list[str] | None = None,
    source_fs: float | None = None,
    split: bool = False,
    strict: bool = False,
    workers: int = 1,
    chunk_records: int = 256,
    compression_level: int = 3,
    progress: bool = True,
) -> IngestReport:
    """Ingest the source ``src`` into the store ``dest`` (created when absent, appended to otherwise).

    Interrupted (Ctrl-C, kill -9) and run again with the same arguments, it finishes the run: every good record
    stored exactly once, the report complete. Items of this source that the store already holds, or skipped
    before, are not read again.

    Args:
        src: the source folder (or file). dest: store path or fsspec URL.
        format: ``auto`` (by the files' suffixes), ``wfdb``, ``code15`` (alias ``hdf5``), ``numpy``, ``muse``,
            ``dicom`` or ``cpsc2018``.
        fs, seconds: the store's rate (Hz) and duration (s); records are resampled and cropped or zero-padded.
        leads: 12 keeps the standard leads; 8 keeps I, II, V1-V6 (reads derive the other four).
        gain_uv: microvolts per stored integer unit.
        source_name: prefix of the record ids (default: the source folder's name).
        labels: CSV with ``record_id`` (the record's item: its path inside the source, without extension) and one
            column per label (numbers; empty for unknown).
        patients: CSV with ``record_id`` and ``patient_key``; a patient's records are stored next to each other.
        labels_from_dx: (wfdb) one label ``dx_<code>`` per SNOMED-CT code of the headers' ``# Dx:`` lines.
        source_unit_uv: (code15) microvolts per unit of the source's samples, overriding the documented unit.
        lead_names, source_fs: (numpy) the arrays' leads and sampling rate.
        split: cut records longer than ``seconds`` into consecutive windows ``<item>/<k>`` instead of cropping.
        strict: the first skipped record stops the run with a :class:`SkipRecord` (a ValueError).
        workers: processes that read, convert and compress (1: all in this process). Only this process writes,
            so every store (``memory://`` too) takes any number of workers.
        chunk_records, compression_level: records per shard and Blosc zstd level of a store created here (level
            1 encodes about 3x faster than the default 3 for 2.30x instead of 2.55x compression on CinC records).
        progress: show a progress bar (records/s and ETA).
    """
    from tqdm import tqdm

    from ecgfast.store import ECGStore

    if leads not in (8, 12):
        raise ValueError(f"leads must be 8 or 12, got {leads}")
    store_leads = LEADS12 if leads == 12 else LEADS8
    n_samples = int(round(fs * seconds))
    started = time.perf_counter()
    format = ALIASES.get(format, format)
    if format == "auto":
        format = detect_format(src)
    options = {"labels_from_dx": labels_from_dx, "source_unit_uv": source_unit_uv,
               "lead_names": list(lead_names) if lead_names else None, "fs": source_fs}
    reader = make_reader(format, src, options)
    options = {k: v for k, v in options.items() if v not in (None, False)}
    source_name = source_name or Path(src).resolve().with_suffix("").name
    items = reader.items()
    meta = reader.metadata(items) if hasattr(reader, "metadata") else {}
    patient_table = _read_csv(patients, "patients") if patients else {}
    keys = [patient_table.get(it, {}).get("patient_key") or None for it in items]
    if meta.get("patient_keys"):
        keys = [k or m for k, m in zip(keys, meta["patient_keys"])]
    label_values = dict(meta.get("labels", {}))
    if labels:
        label_values.update(_labels(_read_csv(labels, "labels"), items, labels))
    order = plan(items, [k or it for k, it in zip(keys, items)])

    store = _open_or_create(ECGStore, dest, store_leads, fs, n_samples, gain_uv,
                            dict(chunk_records=chunk_records, compression_level=compression_level))
    codec = store.record_codec()
    if codec is None:
        raise ValueError(f"store {dest}: its signals layout is not one that ingest writes")
    key = _run_key(format, src, source_name, options, labels, patients, split)
    state = store.ingest_state
    if state is not None and state["key"] != key:
        raise ValueError(f"store {dest} holds an unfinished ingest of {state['key']['source']} "
                         f"({state['key']['format']}); run that command again to finish it first")
    base, report_base = (state["base"], state["report_base"]) if state else (len(store), len(store.report["level"]))
    report = store.report
    done_before = set(store.record_ids[:base].tolist())
    done_before |= {rid for rid, level in zip(report["record_id"][:report_base], report["level"][:report_base])
                    if level == "skip"}
    pending = [p for p in order
               if f"{source_name}/{items[p]}" not in done_before and f"{source_name}/{items[p]}/0" not in done_before]
    digest = hashlib.sha256("\n".join(items[p] for p in pending).encode()).hexdigest()
    if state is None:
        store.begin_ingest({"key": key, "base": base, "report_base": report_base, "run": uuid.uuid4().hex,
                            "pending": len(pending), "digest": digest})
        state, markers = store.ingest_state, []
    else:
        if state["digest"] != digest:
            raise ValueError(f"source {src} changed since the interrupted ingest into {dest} began "
                             f"({len(pending)} items to ingest now, {state['pending']} then)")
        markers = store.ingest_markers()
    result = IngestReport(source=str(src), dest=str(dest), format=format, already_stored=len(items) - len(pending))
    result.resumed = sum(len(m["records"]) for m in markers)
    next_pos, partial = (markers[-1]["next"], markers[-1]["partial"]) if markers else (0, 0)

    with store:
        if len(store) == base:  # else a try before this one had finished all but removing ingest_state
            writer = _ShardWriter(store, base + result.resumed, len(markers), strict)
            grid = (store_leads, float(fs), n_samples, float(gain_uv), bool(split), codec, source_name)
            spec = (format, str(src), options)
            todo = pending[next_pos:]
            jobs = ((spec, grid, [(next_pos + j + i, items[p]) for i, p in enumerate(todo[j : j + _TASK_ITEMS])])
                    for j in range(0, len(todo), _TASK_ITEMS))
            workers = max(1, min(workers, -(-len(todo) // _TASK_ITEMS)))
            bar = tqdm(total=len(pending), initial=next_pos, desc=f"ingest {source_name}", unit="rec",
                       disable=not progress, smoothing=0.05)
            with bar:
                for results in _run_tasks(jobs, workers):
                    for pos, records, rows in results:
                        writer.add(pos, records, rows, partial if pos == next_pos else 0)
                    bar.update(len(results))
            writer.write(len(pending), 0)
            markers += writer.written
            records = [r for m in markers for r in m["records"]]
            positions = np.array([pending[r["pos"]] for r in records], np.int64)
            store.append_columns(
                lengths=[r["length"] for r in records],
                record_ids=[r["rid"] for r in records],
                patient_keys=[f"{source_name}/{keys[p]}" if keys[p] else r["key"] for p, r in zip(positions, records)],
                lead_valid=np.array([[c == "1" for c in r["valid"]] for r in records], bool)
                .reshape(-1, len(store_leads)),
                age=[np.nan if r["age"] is None else r["age"] for r in records],
                sex=[r["sex"] for r in records],
                fs_original=[r["fs"] for r in records],
                labels={name: values[positions] for name, values in label_values.items()},
            )
        rows = [tuple(row) for m in markers for row in m["rows"]]
        store.add_report(*zip(*rows) if rows else ([], [], []), at=report_base)
        if not any(s.get("run") == state["run"] for s in store.attrs["provenance"]["sources"]):
            store.add_source({"source": str(src), "source_name": source_name, "format": format, "run": state["run"],
                              "gain_uv": gain_uv, "options": options, "split": bool(split),
                              "labels": str(labels) if labels else None,
                              "patients": str(patients) if patients else None,
                              "stored": sum(len(m["records"]) for m in markers)})
        store.flush()
        store.end_ingest()
    result.stored = sum(len(m["records"]) for m in markers)
    for _, level, reason in rows:
        (result.skipped if level == "skip" else result.warned)[reason.split(" ", 1)[0]] += 1
    result.seconds = time.perf_counter() - started
    result.store_summary = ECGStore.open(dest).summary()
    return result


def _open_or_create(ECGStore, dest, lead_names, fs, n_samples, gain_uv, layout: dict):
    """Append to the store at ``dest`` if its rate, duration, leads and gain match; create it when absent."""
    try:
        store = ECGStore.open(dest, mode="r+")
    except (ValueError, FileNotFoundError):
        return ECGStore.create(dest, lead_names, fs, n_samples, gain_uv=gain_uv, **layout,
                               threads=min(4, os.cpu_count() or 1), overwrite="incomplete")
    found = (store.lead_names, store.fs, store.n_samples, store.gain_uv)
    if found != (tuple(lead_names), float(fs), n_samples, float(gain_uv)):
        store.close()
        raise ValueError(f"store {dest} holds leads {found[0]} at {found[1]:g} Hz, {found[2]} samples, {found[3]:g} uV "
                         f"per unit; this ingest asks for {tuple(lead_names)} at {fs:g} Hz, {n_samples} samples, "
                         f"{gain_uv:g} uV per unit")
    return store
