"""Conversion of source records onto the store's grid, and the worker processes that do it.

Workers read, convert, quantize and encode records; they never write. ``run_tasks`` hands them tasks a few ahead
and gives the results back in order; the parent (``ecgfast.ingest.driver``) alone writes.
"""

from __future__ import annotations

import math
import signal
from collections import deque
from fractions import Fraction

import numpy as np

from ecgfast.ingest.formats import make_reader
from ecgfast.ingest.record import Record, SkipRecord
from ecgfast.leads import canonical_lead, lead_source, select_leads


def convert(record: Record, leads: tuple[str, ...], fs: float, n_samples: int):
    """A source record on the store's grid: (signal float32 (L, T) mV, length, lead_valid (L,), warnings).

    Resampled with ``scipy.signal.resample_poly``, cropped (a ``cropped`` warning says how much) or zero-padded
    to ``n_samples``; leads matched by name, III, aVR, aVL and aVF derived from I and II where the source lacks
    them; missing, all-NaN and flat leads zeroed and marked invalid. Raises :class:`SkipRecord` when nothing
    usable remains.
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
    if x.shape[1] > n_samples + 1:  # one sample over is resampling's rounding, not a longer record
        warnings.append(("cropped", f"{(x.shape[1] - n_samples) / fs:.3g} s of {x.shape[1] / fs:.3g} s discarded "
                                    f"(--split keeps them as windows)"))
    present = [ld for ld in leads if lead_source(ld, names) is not None]
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
    window shorter than half the duration is dropped (a ``cropped`` warning on the last window kept)."""
    width = int(round(n_samples * record.fs / fs))
    total = np.shape(record.signal)[1]
    if total <= width:
        return [record]
    starts = [s for s in range(0, total, width) if total - s >= width / 2]
    dropped = total - (starts[-1] + width)
    out = [Record(item=f"{record.item}/{k}", signal=record.signal[:, s : s + width], lead_names=record.lead_names,
                  fs=record.fs, age=record.age, sex=record.sex, patient_key=record.patient_key,
                  warnings=list(record.warnings)) for k, s in enumerate(starts)]
    if dropped > 0:
        out[-1].warnings.append(("cropped", f"the last {dropped / record.fs:.3g} s of {total / record.fs:.3g} s, "
                                            f"shorter than half a window, discarded"))
    return out


# ---- the workers' side ---------------------------------------------------------------------------------------
_READERS: dict = {}  # one reader per process and source, kept between tasks (open files, parsed tables)


def convert_task(job):
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
                signal_, length, valid, warnings = convert(part, leads, fs, n_samples)
                try:
                    q = quantize(signal_[None], gain_uv, [rid])[0]
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


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, stopping the pool in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _submit(pool, job):
    # The pool starts its worker processes inside submit(), and a worker's initializer runs only after its imports:
    # Ctrl-C in between would print the worker's KeyboardInterrupt traceback. A process started with SIGINT blocked
    # keeps it blocked through exec and start-up (multiprocessing shields its resource tracker the same way); the
    # parent's own Ctrl-C merely waits for the end of this call.
    if not hasattr(signal, "pthread_sigmask"):
        return pool.submit(convert_task, job)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(convert_task, job)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_tasks(jobs, workers: int):
    """The tasks' results in order: in this process, or in ``workers`` spawned processes, a few tasks ahead.

    However the consumer stops (Ctrl-C, an error, a ``--strict`` skip), the pending tasks are cancelled and every
    worker process has exited before this generator does: no orphaned workers.
    """
    if workers <= 1:
        for job in jobs:
            yield convert_task(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    try:
        ahead: deque = deque()
        for job in jobs:
            ahead.append(_submit(pool, job))
            if len(ahead) >= 3 * workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
