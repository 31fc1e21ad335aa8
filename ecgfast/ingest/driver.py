"""The ingest driver: ``ingest()`` in steps: plan the source, find the resume point, write the shards, finish.

Format-independent: a reader (one module per format, listed in ``ecgfast.ingest.formats``) lists a source's items,
may scan their metadata (patient ids, labels) and reads one item into a :class:`~ecgfast.ingest.record.Record`;
worker processes convert and encode records (``ecgfast.ingest.convert``); this process alone writes, by the resume
protocol of ``ecgfast.ingest.resume``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgfast.ingest.convert import run_tasks
from ecgfast.ingest.faults import fault
from ecgfast.ingest.formats import READERS, canonical_format, describe_files, detect_format, format_options, make_reader
from ecgfast.ingest.record import Reader, SkipRecord
from ecgfast.ingest.resume import Run
from ecgfast.leads import LEADS8, LEADS12

_TASK_ITEMS = 16  # items per worker task: small enough to keep the workers busy to the end
_LISTED = 10  # unmatched CSV rows named in the report


class NothingStored(ValueError):
    """An ingest that stored no record although the source had records to store (every one was skipped): the
    run is undone (nothing is written; a store it created is removed) and ``report`` says why."""

    def __init__(self, report: IngestReport):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()))
        super().__init__(f"stored none of the {sum(report.skipped.values()):,} records of {report.source} "
                         f"({report.format}): every one was skipped ({reasons}); first: {report.first_skip}. "
                         f"Check --format (the source holds {describe_files(report.source)})")
        self.report = report


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
    unmatched: dict[str, list[str]] = field(default_factory=dict)  # "labels"/"patients" -> CSV ids of no record
    notes: list[str] = field(default_factory=list)  # options this run could not apply
    first_skip: str = ""  # the first skipped record and its reason
    seconds: float = 0.0
    store_summary: str = ""

    def __str__(self) -> str:
        rate = self.stored / self.seconds if self.seconds else math.inf

        def counts(c: Counter) -> str:
            return f" ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})" if c else ""

        resumed = f"; resumed an interrupted run that had written {self.resumed:,}" if self.resumed else ""
        lines = [
            f"ingested {self.stored:,} records from {self.source} ({self.format}) into {self.dest} "
            f"in {self.seconds:.1f} s ({rate:,.0f} records/s){resumed}",
            f"already stored {self.already_stored:,}; skipped {sum(self.skipped.values()):,}{counts(self.skipped)}; "
            f"warned {sum(self.warned.values()):,}{counts(self.warned)}",
        ]
        for kind, ids in self.unmatched.items():
            more = f" and {len(ids) - _LISTED:,} more" if len(ids) > _LISTED else ""
            lines.append(f"--{kind}: {len(ids):,} rows match no record of the source: {', '.join(ids[:_LISTED])}{more} "
                         f"(record_id is the record's path inside the source, without extension)")
        lines += [f"warning: {note}" for note in self.notes]
        return "\n".join([*lines, self.store_summary]).rstrip()


def plan(items: list[str], patient_keys: list[str]) -> list[int]:
    """The storing order: the items grouped by patient, patients in order of first appearance (stable)."""
    first: dict[str, int] = {}
    for key in patient_keys:
        first.setdefault(key, len(first))
    return sorted(range(len(items)), key=lambda i: first[patient_keys[i]])


# ---- step 1: the plan ------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    format: str
    reader: Reader
    options: dict  # the format-specific options that are set
    source_name: str
    items: list[str]
    keys: list[str | None]  # patient key per item, None when the source has none
    labels: dict[str, np.ndarray]  # label name -> float32 per item
    label_groups: dict[str, list[str]]  # group name -> label names (PTB-XL's tasks)
    folds: np.ndarray | None  # the source's fold per item (int8, -1 none), None when it has none
    order: list[int]  # item indices in storing order
    unmatched: dict[str, list[str]]


def _read_csv(path, kind: str) -> dict[str, dict[str, str]]:
    """Rows of a CSV keyed by its ``record_id`` column; ``kind`` names the option in errors."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ValueError(f"--{kind} {path}: {err.strerror or err}") from err
    if not rows or "record_id" not in rows[0]:
        raise ValueError(f"--{kind} {path}: the CSV needs a record_id column and at least one row")
    return {row.pop("record_id"): row for row in rows}


def _label_columns(table: dict[str, dict[str, str]], items: list[str], path) -> dict[str, np.ndarray]:
    names = list(next(iter(table.values())))
    out = {name: np.full(len(items), np.nan, np.float32) for name in names}
    for i, item in enumerate(items):
        for name, value in table.get(item, {}).items():
            try:
                out[name][i] = float(value) if value.strip() else np.nan
            except ValueError as err:
                raise ValueError(f"--labels {path}: record {item}, label {name}: {value!r} is not a number") from err
    return out


def _plan(src, format: str, reader_options: dict, source_name, labels, patients) -> _Plan:
    """List the source's items, read the CSVs and the reader's metadata, and order the items by patient."""
    if format == "auto":
        format = detect_format(src)
    reader = make_reader(format, src, reader_options)
    items = reader.items()
    meta = reader.metadata(items) if hasattr(reader, "metadata") else {}
    known, unmatched = set(items), {}
    patient_table = _read_csv(patients, "patients") if patients else {}
    if patient_table and "patient_key" not in next(iter(patient_table.values())):
        raise ValueError(f"--patients {patients}: the CSV needs a patient_key column")
    keys = [patient_table.get(it, {}).get("patient_key") or None for it in items]
    if meta.get("patient_keys"):
        keys = [k or m for k, m in zip(keys, meta["patient_keys"])]
    label_values = dict(meta.get("labels", {}))
    if labels:
        table = _read_csv(labels, "labels")
        label_values.update(_label_columns(table, items, labels))
        unmatched["labels"] = [rid for rid in table if rid not in known]
    unmatched["patients"] = [rid for rid in patient_table if rid not in known]
    order = plan(items, [k or it for k, it in zip(keys, items)])
    options_set = {k: v for k, v in reader_options.items() if v not in (None, False)}
    name = source_name or Path(src).resolve().with_suffix("").name
    return _Plan(format, reader, options_set, name, items, keys, label_values, meta.get("label_groups", {}),
                 meta.get("fold"), order, {k: v for k, v in unmatched.items() if v})


# ---- step 2: the store and the resume point ------------------------------------------------------------------
def _open_or_create(dest, lead_names, fs, n_samples, gain_uv, layout: dict, storage_options):
    """The store at ``dest`` if its rate, duration, leads and gain match, else a new one: (store, created)."""
    from ecgfast.store import DEFAULT_CODEC, ECGStore, check_codec

    codec, level = layout.pop("codec"), layout.pop("compression_level")
    try:
        store = ECGStore.open(dest, mode="r+", storage_options=storage_options)
    except (ValueError, FileNotFoundError):
        store = ECGStore.create(dest, lead_names, fs, n_samples, gain_uv=gain_uv, codec=codec or DEFAULT_CODEC,
                                compression_level=level, **layout, threads=min(4, os.cpu_count() or 1),
                                overwrite="incomplete", storage_options=storage_options)
        return store, True
    found = (store.lead_names, store.fs, store.n_samples, store.gain_uv)
    if found != (tuple(lead_names), float(fs), n_samples, float(gain_uv)):
        store.close()
        raise ValueError(f"store {dest} holds leads {found[0]} at {found[1]:g} Hz, {found[2]} samples, {found[3]:g} uV "
                         f"per unit; this ingest asks for {tuple(lead_names)} at {fs:g} Hz, {n_samples} samples, "
                         f"{gain_uv:g} uV per unit (--leads, --fs, --seconds, --gain-uv)")
    if (codec is not None or level is not None) and store.codec is not None:
        asked = (codec or store.codec[0], check_codec(codec or store.codec[0], level))
        if asked != store.codec:
            store.close()
            raise ValueError(f"store {dest} holds records compressed with {store.codec[0]} level {store.codec[1]}; "
                             f"this ingest asks for {asked[0]} level {asked[1]} (--codec, --compression-level): a "
                             f"store keeps the codec it was created with")
    return store, False


def _run_key(src, p: _Plan, labels, patients, split) -> dict:
    """What makes two ingest commands the same run (rate, duration, leads and gain are the store's own)."""
    return {"format": p.format, "source": str(Path(src).resolve()), "source_name": p.source_name,
            "options": dict(sorted(p.options.items())),
            "labels": str(Path(labels).resolve()) if labels else None,
            "patients": str(Path(patients).resolve()) if patients else None, "split": bool(split)}


def _stale_options(store, key: dict, already: int, dest) -> list[str]:
    """Options of this run that differ from those the already stored records of its source were stored with:
    ingest stores a record once, so they do not reach those records."""
    earlier = [s for s in store.attrs.get("provenance", {}).get("sources", [])
               if s.get("source_name") == key["source_name"]]
    if not already or not earlier:
        return []
    flags = []
    if not any(bool(s.get("split")) == key["split"] for s in earlier):
        flags.append("--split" if key["split"] else "cropping (no --split)")
    for name, value in key["options"].items():
        if not any(s.get("options", {}).get(name) == value for s in earlier):
            flags.append(format_options()[name][0].flag)
    for kind in ("labels", "patients"):
        if key[kind] and not any(s.get(kind) and str(Path(s[kind]).resolve()) == key[kind] for s in earlier):
            flags.append(f"--{kind}")
    return [f"{flag} does not apply to the {already:,} records of {key['source_name']} already in {dest}, stored "
            f"without it (ingest stores a record once); to apply it, ingest into a new store (or delete {dest}) "
            f"with the same command" for flag in flags]


def _resume_point(store, key: dict, p: _Plan, src, dest) -> tuple[Run | None, list[int]]:
    """The run to go on with (this command's unfinished one, else a new one; None when nothing is pending) and the
    pending items in storing order: not those the store held, or had skipped, before the run began."""
    state = Run.unfinished(store)
    report = store.report
    base, report_base = (state["base"], state["report_base"]) if state else (len(store), len(report["level"]))
    done_before = set(store.record_ids[:base].tolist())
    done_before |= {rid for rid, level in zip(report["record_id"][:report_base], report["level"][:report_base])
                    if level == "skip"}
    name = p.source_name
    pending = [q for q in p.order
               if f"{name}/{p.items[q]}" not in done_before and f"{name}/{p.items[q]}/0" not in done_before]
    digest = hashlib.sha256("\n".join(p.items[q] for q in pending).encode()).hexdigest()
    if state is None:
        return (Run.begin(store, key, base, report_base, len(pending), digest) if pending else None), pending
    if state["digest"] != digest:
        raise ValueError(f"source {src} changed since the interrupted ingest into {dest} began "
                         f"({len(pending)} items to ingest now, {state['pending']} then)")
    return Run.resume(store), pending


# ---- step 3: the shards ----------------------------------------------------------------------------------------
class _ShardWriter:
    """Fills shards in order from encoded records, writing each full one and then its done marker."""

    def __init__(self, store, run: Run, next_index: int, strict: bool):
        self.store, self.run, self.strict = store, run, strict
        self.records_per_shard = store.chunk_records
        self.next = next_index  # store index of the next record
        start = next_index - next_index % self.records_per_shard  # the open shard's first record
        self.chunks = store.encoded_chunks(start // self.records_per_shard, next_index - start) if next_index > start \
            else []
        self.records: list[dict] = []  # the open shard's new records (fields, without the chunk)
        self.rows: list[tuple[str, str, str]] = []

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
            if len(self.chunks) == self.records_per_shard:
                done_with_item = j == len(records) - 1
                self.write(pos + 1 if done_with_item else pos, 0 if done_with_item else j + 1)

    def write(self, next_pos: int, partial: int) -> None:
        """Write the open shard (if it has new records) and a marker: pending items before ``next_pos`` are done,
        and the first ``partial`` records of the item at ``next_pos``."""
        if not self.records and not self.rows:
            return
        k = (self.next - 1) // self.records_per_shard if self.records else self.next // self.records_per_shard
        if self.records:
            self.store.write_encoded_shard(k, self.chunks)
        self.run.mark({"shard": k, "records": self.records, "rows": [list(r) for r in self.rows], "next": next_pos,
                       "partial": partial})
        fault("ingest.marked")
        if len(self.chunks) == self.records_per_shard:
            self.chunks = []
        self.records, self.rows = [], []


def _write_shards(store, run: Run, p: _Plan, src, pending: list[int], grid: tuple, workers: int, strict: bool,
                  progress: bool) -> None:
    """Convert the pending items after the run's resume point in ``workers`` processes; write shards and markers."""
    from tqdm import tqdm

    next_pos, partial = run.position
    writer = _ShardWriter(store, run, run.attrs["base"] + run.resumed, strict)
    spec = (p.format, str(src), p.options)
    todo = pending[next_pos:]
    jobs = ((spec, grid, [(next_pos + j + i, p.items[q]) for i, q in enumerate(todo[j : j + _TASK_ITEMS])])
            for j in range(0, len(todo), _TASK_ITEMS))
    workers = max(1, min(workers, -(-len(todo) // _TASK_ITEMS)))
    with tqdm(total=len(pending), initial=next_pos, desc=f"ingest {p.source_name}", unit="rec",
              disable=not progress, smoothing=0.05) as bar:
        with closing(run_tasks(jobs, workers)) as results_in_order:  # stops the workers however this loop ends
            for results in results_in_order:
                for pos, records, rows in results:
                    writer.add(pos, records, rows, partial if pos == next_pos else 0)
                bar.update(len(results))
    writer.write(len(pending), 0)


# ---- step 4: the final write-out ------------------------------------------------------------------------------
def _finish(store, run: Run, p: _Plan, src, pending: list[int], split: bool, gain_uv: float, labels, patients):
    """Append the run's records' fields, the report rows and the provenance; grow the store; end the run."""
    records = [r for m in run.markers for r in m["records"]]
    rows = [tuple(row) for m in run.markers for row in m["rows"]]
    if len(store) == run.attrs["base"]:  # else an earlier try died after growing the store, before ending the run
        positions = np.array([pending[r["pos"]] for r in records], np.int64)
        keys = [f"{p.source_name}/{p.keys[q]}" if p.keys[q] else r["key"] for q, r in zip(positions, records)]
        valid = np.array([[c == "1" for c in r["valid"]] for r in records], bool)
        store.append_columns(
            lengths=[r["length"] for r in records],
            record_ids=[r["rid"] for r in records],
            patient_keys=keys,
            lead_valid=valid.reshape(-1, len(store.lead_names)),
            age=[np.nan if r["age"] is None else r["age"] for r in records],
            sex=[r["sex"] for r in records],
            fs_original=[r["fs"] for r in records],
            labels={name: values[positions] for name, values in p.labels.items()} if records else None,
            fold=p.folds[positions] if p.folds is not None and records else None,
        )
    store.add_report(*zip(*rows) if rows else ([], [], []), at=run.attrs["report_base"])
    if not any(s.get("run") == run.attrs["run"] for s in store.attrs["provenance"]["sources"]):
        store.add_source({"source": str(src), "source_name": p.source_name, "format": p.format, "run": run.attrs["run"],
                          "gain_uv": gain_uv, "options": p.options, "split": bool(split),
                          "labels": str(labels) if labels else None, "patients": str(patients) if patients else None,
                          "stored": len(records)})
    if p.label_groups and records:
        store.add_label_groups(p.label_groups)
    store.save_columns()
    fault("ingest.columns")
    store.flush()  # grows signals: the records become visible
    fault("ingest.grown")
    run.end()
    return records, rows


def _check(fs, seconds, leads, gain_uv, workers, chunk_records, codec, compression_level, labels, patients,
           reader_options):
    """Every argument, before any work: a ValueError naming the argument (and its command-line option)."""
    from ecgfast.store import DEFAULT_CODEC, check_codec

    check_codec(codec or DEFAULT_CODEC, compression_level)
    if leads not in (8, 12):
        raise ValueError(f"leads (--leads) must be 8 or 12, got {leads!r}")
    for name, value in (("fs", fs), ("seconds", seconds), ("gain_uv", gain_uv)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be a positive number, got {value!r}")
    for name, value in (("workers", workers), ("chunk_records", chunk_records)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an integer 1 or more, got {value!r}")
    if round(fs * seconds) < 1:
        raise ValueError(f"fs x seconds (--fs, --seconds) must give at least one sample, got {fs:g} Hz x {seconds:g} s")
    for kind, path in (("labels", labels), ("patients", patients)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{kind} (--{kind}) {path} is not a file")
    known = format_options()
    unknown = sorted(set(reader_options) - set(known))
    if unknown:
        raise ValueError(f"ingest() got unknown options {unknown}; the format options are {sorted(known)}")


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
    split: bool = False,
    strict: bool = False,
    workers: int = 1,
    chunk_records: int = 256,
    codec: str | None = None,
    compression_level: int | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
    **reader_options,
) -> IngestReport:
    """Ingest the source ``src`` into the store ``dest`` (created when absent, appended to otherwise).

    Interrupted (Ctrl-C, kill -9) and run again with the same arguments, it finishes the run: every good record
    stored exactly once, the report complete. Items of this source that the store already holds, or skipped
    before, are not read again. A source without records of the format is a ValueError before anything is
    written; one whose every record is skipped is a :class:`NothingStored` error, the store left as it was.

    Args:
        src: the source folder (or file). dest: store path or fsspec URL.
        format: ``auto`` (by the files' suffixes) or a name of ``ecgfast.ingest.formats.READERS``: ``wfdb``,
            ``code15`` (alias ``hdf5``), ``numpy``, ``muse``, ``dicom``, ``cpsc2018``.
        fs, seconds: the store's rate (Hz) and duration (s); records are resampled and cropped (a ``cropped``
            warning) or zero-padded.
        leads: 12 keeps the standard leads; 8 keeps I, II, V1-V6 (reads derive the other four).
        gain_uv: microvolts per stored integer unit.
        source_name: prefix of the record ids (default: the source folder's name).
        labels: CSV with ``record_id`` (the record's item: its path inside the source, without extension) and one
            column per label (numbers; empty for unknown). Rows that match no record are listed in the report.
        patients: CSV with ``record_id`` and ``patient_key``; a patient's records are stored next to each other.
        split: cut records longer than ``seconds`` into consecutive windows ``<item>/<k>`` instead of cropping.
        strict: the first skipped record stops the run with a :class:`SkipRecord` (a ValueError).
        workers: processes that read, convert and compress (1: all in this process). Only this process writes,
            so every store (``memory://`` too) takes any number of workers.
        chunk_records, codec, compression_level: records per shard, codec and its level of a store created here
            (``ECGStore.create``; default: ``ecgfast.store.DEFAULT_CODEC`` at its default level). A store that
            exists keeps its own codec: naming another one is a ValueError.
        storage_options: options of the fsspec filesystem behind ``dest`` (see ``ECGStore.create``).
        progress: show a progress bar (records/s and ETA).
        **reader_options: the format's own options (``ecgfast.ingest.formats.format_options()``): ``labels_from_dx``
            (wfdb), ``source_unit_uv`` (code15), ``lead_names`` and ``source_fs`` (numpy).
    """
    started = time.perf_counter()
    format = canonical_format(format)
    _check(fs, seconds, leads, gain_uv, workers, chunk_records, codec, compression_level, labels, patients,
           reader_options)
    if not Path(src).exists():
        raise ValueError(f"source {src} does not exist")
    store_leads = LEADS12 if leads == 12 else LEADS8
    n_samples = int(round(fs * seconds))
    if reader_options.get("lead_names"):
        reader_options["lead_names"] = list(reader_options["lead_names"])
    p = _plan(src, format, reader_options, source_name, labels, patients)
    key = _run_key(src, p, labels, patients, split)
    _refuse_another_run(dest, key, storage_options)
    if not p.items:
        _no_records(src, p.format)

    # Step 2: the store and the resume point.
    store, created = _open_or_create(dest, store_leads, fs, n_samples, gain_uv,
                                     dict(chunk_records=chunk_records, codec=codec, compression_level=compression_level),
                                     storage_options)
    if store.record_codec() is None:
        raise ValueError(f"store {dest}: its signals layout is not one that ingest writes")
    run, pending = _resume_point(store, key, p, src, dest)
    result = IngestReport(source=str(src), dest=str(dest), format=p.format, already_stored=len(p.items) - len(pending),
                          unmatched=p.unmatched, resumed=run.resumed if run else 0)
    result.notes = _stale_options(store, key, result.already_stored, dest)
    if run is None:  # nothing new: the store is left untouched
        store.close()
        return _summarized(result, dest, storage_options, started)
    base = run.attrs["base"]

    with store:
        if len(store) == base:  # step 3 (else an earlier try got as far as growing the store)
            grid = (store_leads, float(fs), n_samples, float(gain_uv), bool(split), store.record_codec(), p.source_name)
            _write_shards(store, run, p, src, pending, grid, workers, strict, progress)
        if pending and not run.resumed and len(store) == base:  # every pending record skipped: undo the run
            rows = [tuple(row) for m in run.markers for row in m["rows"]]
            _count(result, rows)
            run.end()
            if created:
                store.discard()
            raise NothingStored(result)
        records, rows = _finish(store, run, p, src, pending, split, gain_uv, labels, patients)  # step 4
    result.stored = len(records)
    _count(result, rows)
    return _summarized(result, dest, storage_options, started)


def _summarized(result: IngestReport, dest, storage_options, started: float) -> IngestReport:
    from ecgfast.store import ECGStore

    result.seconds = time.perf_counter() - started
    result.store_summary = ECGStore.open(dest, storage_options=storage_options).summary()
    return result


def _refuse_another_run(dest, key: dict, storage_options) -> None:
    """A store holding an unfinished run of another ingest command takes no other one until that one finishes."""
    from ecgfast.store import ECGStore

    try:
        state = Run.unfinished(ECGStore.open(dest, storage_options=storage_options))
    except ValueError:  # no store there yet
        return
    if state is not None and state["key"] != key:
        raise ValueError(f"store {dest} holds an unfinished ingest of {state['key']['source']} "
                         f"({state['key']['format']}); run that command again to finish it first")


def _no_records(src, format: str) -> None:
    suffixes = ", ".join(READERS[format].SUFFIXES) or "its files"
    try:
        guess = detect_format(src)
        hint = f"; it looks like --format {guess}" if guess != format else ""
    except ValueError:
        hint = ""
    raise ValueError(f"source {src} holds no {format} records ({suffixes} files): it holds {describe_files(src)}"
                     f"{hint}; nothing was stored")


def _count(result: IngestReport, rows) -> None:
    for rid, level, reason in rows:
        (result.skipped if level == "skip" else result.warned)[reason.split(" ", 1)[0]] += 1
        if level == "skip" and not result.first_skip:
            result.first_skip = f"{rid}: {reason}"
