"""ECGStore: a Zarr v3 group of int16 ECGs with their patient ids, labels and ingest report.

The schema (documented in the README) is a plain Zarr v3 group that ``zarr.open_group`` reads without ecgfast:
``signals`` int16 (N, L, T) sharded along records, one inner chunk per record, Blosc zstd + byte shuffle; beside it
one 1-D array per record field, ``labels/<name>`` and the ``ingest_report`` group.

Reads bypass zarr-python's per-chunk machinery, which costs milliseconds per record (zarr-python #3829): they
fetch the byte ranges of the needed inner chunks through the Zarr store, read each shard's index themselves and
decode with numcodecs in a thread pool. When the array's layout is not the one written here, zarr's own path
serves instead.

This is the only module of ecgfast that touches Zarr; zarr, numcodecs and fsspec are imported lazily.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ecgfast.leads import canonical_lead, select_leads

SCHEMA_VERSION = 1
INT16 = np.iinfo(np.int16)
_MISSING = np.uint64(2**64 - 1)  # offset and size of an absent inner chunk in a shard index
_META_CHUNK = 16384  # records per chunk of the 1-D per-record arrays

# Per-record fields: name -> (dtype, fill value). ``lead_valid`` is (N, L); the rest are (N,).
FIELDS: dict[str, tuple[str, object]] = {
    "length": ("int32", 0),
    "lead_valid": ("bool", False),
    "record_id": ("str", ""),
    "patient_id": ("int64", -1),
    "patient_key": ("str", ""),
    "age": ("float32", float("nan")),
    "sex": ("int8", -1),
    "fs_original": ("float32", float("nan")),
}
REPORT_FIELDS = ("record_id", "level", "reason")


def quantize(signals: np.ndarray, gain_uv: float, record_ids) -> np.ndarray:
    """float millivolts (B, L, T) -> int16 units of ``gain_uv`` microvolts, rounded to nearest.

    Raises a ValueError naming the first record with a value outside the int16 range (or not finite): a value
    never wraps around. Works in float64, 32 records at a time: a float32 product could move a value across a
    rounding tie.
    """
    signals = np.asarray(signals)
    q = np.empty(signals.shape, np.int16)
    for a in range(0, len(signals), 32):
        v = np.multiply(signals[a : a + 32], 1000.0 / gain_uv, dtype=np.float64)
        np.rint(v, out=v)
        flat = v.reshape(len(v), -1)
        # NaN fails both comparisons, inf the range: either way the record is refused.
        ok = (flat.min(axis=1, initial=0) >= INT16.min) & (flat.max(axis=1, initial=0) <= INT16.max)
        if not ok.all():
            rid = record_ids[a + int(np.flatnonzero(~ok)[0])]
            raise ValueError(f"record {rid}: values outside the int16 range at {gain_uv:g} uV per unit "
                             f"(or not finite); store it with a larger gain_uv")
        q[a : a + 32] = v
    return q


def _crc32c(data: bytes) -> int:
    """CRC-32C of ``data``, as the shard index's ``crc32c`` codec computes it, with the package zarr depends on."""
    try:
        import google_crc32c  # zarr 3.1

        return google_crc32c.value(data)
    except ImportError:
        import crc32c  # other zarr 3 releases

        return crc32c.crc32c(data)


def _as_str(values) -> np.ndarray:
    """A fixed-width unicode array, whatever string dtype zarr returned (object or NumPy's StringDType)."""
    return np.array(list(values), dtype=str)


def _zarr_store(path_or_url, read_only: bool):
    """The Zarr store behind a local path, ``file://`` URL or any other fsspec URL (``memory://``, ``s3://``)."""
    import zarr.storage

    url = os.fspath(path_or_url)
    if "://" not in url or url.startswith("file://"):
        return zarr.storage.LocalStore(url.removeprefix("file://"), read_only=read_only)
    try:
        return zarr.storage.FsspecStore.from_url(url, read_only=read_only)
    except ImportError as err:  # e.g. s3:// without s3fs
        raise ValueError(f"cannot open store {url!r}: {err}") from err


class _ShardReader:
    """Fetches and decodes inner chunks of ``signals`` straight from its shards (one inner chunk per record)."""

    def __init__(self, array, records_per_shard: int, threads: int):
        from numcodecs import Blosc
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        self._store, self._prefix = array.store, array.path
        self._proto, self._sync = default_buffer_prototype(), sync
        self._range, self._suffix = RangeByteRequest, SuffixByteRequest
        self._blosc = Blosc()  # the Blosc frame header says how it was compressed
        self._S = records_per_shard
        self._index_bytes = 16 * records_per_shard + 4  # (offset, nbytes) uint64 pairs + crc32c
        self._indexes: dict[int, np.ndarray | None] = {}
        self._root = getattr(self._store, "root", None)  # LocalStore: read files directly with pread
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self._threads = threads

    @classmethod
    def for_array(cls, array, records_per_shard: int, threads: int) -> _ShardReader | None:
        """A reader for ``array``, or None when its layout (or this zarr-python's internals) is not the expected one."""
        try:
            return cls(array, records_per_shard, threads) if cls.supports(array) else None
        except (ImportError, AttributeError, KeyError, TypeError):
            return None

    @staticmethod
    def supports(array) -> bool:
        """Whether ``array`` has the layout written by ECGStore, which this reader decodes itself."""
        codecs = array.metadata.to_dict()["codecs"]
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return False
        cfg = codecs[0]["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        return (
            tuple(cfg["chunk_shape"]) == (1, *array.shape[1:])
            and inner == ["bytes", "blosc"]
            and cfg["codecs"][0]["configuration"]["endian"] == "little"
            and [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
            and cfg.get("index_location", "end") == "end"
            and array.metadata.to_dict()["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
        )

    def _key(self, shard: int) -> str:
        return f"{self._prefix}/c/{shard}/0/0"

    def chunks(self, shard: int, count: int) -> list[bytes | None]:
        """The encoded inner chunks of the first ``count`` records of a shard, None for an absent (all-zero) one."""
        index = self._index(shard)
        if index is None:
            return [None] * count
        present = np.flatnonzero(index[:count, 0] != _MISSING)
        starts, sizes = index[present, 0].astype(np.int64), index[present, 1].astype(np.int64)
        out = [None] * count
        if len(present):
            for i, b in zip(present, self._fetch(shard, list(zip(starts.tolist(), (starts + sizes).tolist())))):
                out[i] = bytes(b)
        return out

    def write(self, shard: int, chunks: list[bytes]) -> None:
        """Write a whole shard object from encoded inner chunks (one per record, in order), its index at the end.

        One object write, atomic on a local store (zarr writes a temporary file and renames it): a shard is
        either the old one or the new one, whenever the process dies.
        """
        if len(chunks) > self._S:
            raise ValueError(f"a shard holds at most {self._S} records, got {len(chunks)}")
        index = np.full((self._S, 2), _MISSING, "<u8")
        sizes = np.array([len(c) for c in chunks], np.uint64)
        index[: len(chunks), 1] = sizes
        index[: len(chunks), 0] = np.cumsum(sizes) - sizes
        raw = index.tobytes()
        data = b"".join([*chunks, raw, np.uint32(_crc32c(raw)).astype("<u4").tobytes()])
        self._sync(self._store.set(self._key(shard), self._proto.buffer.from_bytes(data)))
        self.forget(shard)

    def forget(self, shard: int) -> None:
        """Drop the cached index of a shard that was just rewritten."""
        self._indexes.pop(shard, None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _fetch(self, shard: int, ranges: list[tuple[int, int]] | None):
        """Bytes of ``ranges`` of a shard's file (None: its index), or None when the shard does not exist."""
        key = self._key(shard)
        if self._root is not None:
            try:
                fd = os.open(Path(self._root) / key, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                if ranges is None:
                    size = os.fstat(fd).st_size
                    return os.pread(fd, self._index_bytes, size - self._index_bytes)
                return [os.pread(fd, b - a, a) for a, b in ranges]
            finally:
                os.close(fd)
        async def get_all(requests):
            return await asyncio.gather(*(self._store.get(key, self._proto, r) for r in requests))

        requests = [self._suffix(self._index_bytes)] if ranges is None else [self._range(a, b) for a, b in ranges]
        bufs = self._sync(get_all(requests))
        if bufs[0] is None:
            return None
        bufs = [b.to_bytes() for b in bufs]
        return bufs[0] if ranges is None else bufs

    def _index(self, shard: int) -> np.ndarray | None:
        # The index's crc32c is not checked: a corrupt entry points Blosc at bytes whose frame header it rejects.
        if shard not in self._indexes:
            raw = self._fetch(shard, None)
            self._indexes[shard] = None if raw is None else np.frombuffer(raw, "<u8", 2 * self._S).reshape(self._S, 2)
        return self._indexes[shard]

    def read_into(self, records: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """Decode ``records`` (sorted, unique) into ``out[rows]`` (int16, zeroed where a chunk is absent)."""
        jobs = []  # (buffer, row)
        shards = records // self._S
        for shard in np.unique(shards):
            sel = np.flatnonzero(shards == shard)
            index = self._index(int(shard))
            local = records[sel] - shard * self._S
            present = np.zeros(len(sel), bool) if index is None else index[local, 0] != _MISSING
            out[rows[sel[~present]]] = 0
            if not present.any():
                continue
            sel, local = sel[present], local[present]
            starts, sizes = index[local, 0].astype(np.int64), index[local, 1].astype(np.int64)
            lo, hi = int(starts.min()), int((starts + sizes).max())
            if 2 * sizes.sum() >= hi - lo:  # dense (a block): one read of the span
                (span,) = self._fetch(int(shard), [(lo, hi)])
                view = memoryview(span)
                jobs += [(view[s - lo : s - lo + n], rows[i]) for s, n, i in zip(starts, sizes, sel)]
            else:
                bufs = self._fetch(int(shard), list(zip(starts.tolist(), (starts + sizes).tolist())))
                jobs += [(b, rows[i]) for b, i in zip(bufs, sel)]

        def decode(part):
            for buf, row in part:
                self._blosc.decode(buf, out=out[row])

        self._map(decode, [jobs[k :: self._threads] for k in range(self._threads)])

    def _map(self, fn, parts) -> None:
        if self._pool is None:
            for p in parts:
                fn(p)
        else:
            list(self._pool.map(fn, parts))


class ECGStore:
    """A Zarr v3 store of ECGs: int16 signals (N, L, T) with a gain, per-record fields, labels and an ingest report.

    Make one with :meth:`create` or open one with :meth:`open`; use it as a context manager so that buffered
    appends are flushed. Everything a read returns is float32 millivolts (B, L, T), except ``raw=True`` blocks.
    """

    def __init__(self, group, writable: bool, location: str, threads: int | None = None):
        self._group = group
        self.location = location
        self._writable = writable
        attrs = group.attrs.asdict()
        if attrs.get("schema_version") != SCHEMA_VERSION or "signals" not in group:
            raise ValueError(f"{location} is not an ecgfast store of schema version {SCHEMA_VERSION}")
        self._signals = group["signals"]
        self._lead_names = tuple(attrs["lead_names"])
        self._fs = float(attrs["fs"])
        self._gain_uv = float(attrs["gain_uv"])
        self._S = int(self._signals.shards[0]) if self._signals.shards else int(self._signals.chunks[0])
        self._n = int(self._signals.shape[0])
        threads = threads or min(8, os.cpu_count() or 1)
        self._reader = _ShardReader.for_array(self._signals, self._S, threads)
        self._arrays = {"signals": self._signals}  # zarr handles: opening one reads its metadata
        self._columns: dict[str, np.ndarray] = {}  # the per-record fields and labels/<name>, loaded on first use
        self._written: dict[str, int] = {}  # records of each column already in Zarr
        self._pending: list[np.ndarray] = []  # int16 records from the last shard boundary on, not all written yet
        self._pending_start = self._n  # index of the first pending record (a shard boundary once loaded)
        self._label_names: set[str] | None = None
        self._patients: dict[str, int] | None = None
        self._ids: set[str] | None = None
        self._state = None  # the ingest_state group, once opened

    # ---- opening -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path,
        lead_names: Iterable[str],
        fs: float,
        n_samples: int,
        *,
        gain_uv: float = 1.0,
        chunk_records: int = 256,
        compression_level: int = 3,
        provenance: Mapping | None = None,
        overwrite: bool = False,
        threads: int | None = None,
    ) -> ECGStore:
        """Create an empty, writable store.

        Args:
            path: a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``...).
            lead_names: the stored leads in order, standard names (``ecgfast.leads.LEADS12`` or ``LEADS8``).
            fs: sampling rate in Hz. n_samples: samples per record (T).
            gain_uv: microvolts per stored integer unit; signals are rounded to the nearest unit.
            chunk_records: records per shard, the block a loader reads at once.
            compression_level: Blosc zstd level (3: 2.55x on the CinC records at ~80 MB/s per core; 5: 2.59x
                at ~40 MB/s).
            provenance: stored in the ``provenance`` attribute (sources, options).
            overwrite: replace whatever is at ``path``; ``"incomplete"``: replace only a store whose creation was
                interrupted (it lacks the attributes, written last); otherwise an existing store is an error.
            threads: decoding threads for reads (default: the CPU count, at most 8).
        """
        import zarr
        from zarr.codecs import BloscCodec

        lead_names = tuple(lead_names)
        bad = [n for n in lead_names if canonical_lead(n) != n]
        if not lead_names or bad or len(set(lead_names)) != len(lead_names):
            raise ValueError(f"lead_names must be distinct standard lead names, got {lead_names}")
        for name, value in (("fs", fs), ("n_samples", n_samples), ("gain_uv", gain_uv), ("chunk_records", chunk_records)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        mode = "w" if overwrite is True else "w-"
        if overwrite == "incomplete":
            try:
                existing = zarr.open_group(_zarr_store(path, read_only=True), mode="r")
                mode = "w" if "schema_version" not in existing.attrs else mode
            except (FileNotFoundError, zarr.errors.GroupNotFoundError):
                pass
        try:
            group = zarr.open_group(_zarr_store(path, read_only=False), mode=mode)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as err:
            raise ValueError(f"{path} already holds a store (pass overwrite=True to replace it)") from err
        from ecgfast import __version__

        L, T = len(lead_names), int(n_samples)
        group.create_array(
            "signals", shape=(0, L, T), dtype="int16", chunks=(1, L, T), shards=(int(chunk_records), L, T),
            compressors=BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle"), fill_value=0,
        )
        for name, (dtype, fill) in FIELDS.items():
            shape, chunks = ((0, L), (_META_CHUNK, L)) if name == "lead_valid" else ((0,), (_META_CHUNK,))
            group.create_array(name, shape=shape, dtype=str if dtype == "str" else dtype, chunks=chunks, fill_value=fill)
        report = group.create_group("ingest_report")
        for name in REPORT_FIELDS:
            report.create_array(name, shape=(0,), dtype=str, chunks=(_META_CHUNK,), fill_value="")
        group.create_group("labels")
        # Last: a creation that dies before this leaves a group that open() refuses and "incomplete" replaces.
        group.attrs.update(
            schema_version=SCHEMA_VERSION,
            lead_names=list(lead_names),
            fs=float(fs),
            gain_uv=float(gain_uv),
            provenance={"ecgfast_version": __version__, "sources": [], **dict(provenance or {})},
        )
        return cls(group, writable=True, location=os.fspath(path), threads=threads)

    @classmethod
    def open(cls, path_or_url, mode: str = "r", *, threads: int | None = None) -> ECGStore:
        """Open a store: ``mode="r"`` read-only, ``"r+"`` to append."""
        import zarr

        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        try:
            group = zarr.open_group(_zarr_store(path_or_url, read_only=mode == "r"), mode=mode)
        except FileNotFoundError as err:
            raise ValueError(f"no store at {path_or_url}") from err
        return cls(group, writable=mode == "r+", location=os.fspath(path_or_url), threads=threads)

    def __enter__(self) -> ECGStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Flush buffered appends and release the decoding threads."""
        if self._writable:
            self.flush()
        if self._reader is not None:
            self._reader.close()

    # ---- description ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def lead_names(self) -> tuple[str, ...]:
        return self._lead_names

    @property
    def fs(self) -> float:
        return self._fs

    @property
    def gain_uv(self) -> float:
        return self._gain_uv

    @property
    def n_samples(self) -> int:
        return int(self._signals.shape[2])

    @property
    def chunk_records(self) -> int:
        """Records per shard: the blocks a loader should plan its reads over."""
        return self._S

    @property
    def attrs(self) -> dict:
        return self._group.attrs.asdict()

    def _array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def _column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            values = self._array(name)[: self._n]
            if FIELDS.get(name, ("",))[0] == "str":
                values = _as_str(values)
            self._columns[name] = values
            self._written.setdefault(name, len(values))
        view = self._columns[name][: self._n].view()
        view.flags.writeable = False
        return view

    def _extend(self, name: str, values: np.ndarray) -> None:
        """Put ``values`` after the first ``len(self)`` entries of a column, growing its buffer geometrically."""
        buf, n = self._columns[name], self._n
        if len(buf) < n + len(values) or buf.dtype.itemsize < values.dtype.itemsize:
            grown = np.empty((max(2 * n, n + len(values)), *buf.shape[1:]), np.promote_types(buf.dtype, values.dtype))
            grown[:n] = buf[:n]
            self._columns[name] = buf = grown
        buf[n : n + len(values)] = values

    record_ids = property(lambda self: self._column("record_id"), doc="str (N,): unique record ids")
    patient_ids = property(lambda self: self._column("patient_id"), doc="int64 (N,): dense patient ids")
    patient_keys = property(lambda self: self._column("patient_key"), doc="str (N,): patient ids as the source gave them")
    lengths = property(lambda self: self._column("length"), doc="int32 (N,): valid samples per record")
    lead_valid = property(lambda self: self._column("lead_valid"), doc="bool (N, L): False where a lead is missing or flat")
    age = property(lambda self: self._column("age"), doc="float32 (N,): years, NaN unknown")
    sex = property(lambda self: self._column("sex"), doc="int8 (N,): 0 female, 1 male, -1 unknown")
    fs_original = property(lambda self: self._column("fs_original"), doc="float32 (N,): the source's sampling rate")

    @property
    def label_names(self) -> list[str]:
        if self._label_names is None:  # listed once: appends ask for it on every batch
            self._label_names = set(self._group["labels"].array_keys())
        return sorted(self._label_names)

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """Label name -> float32 (N,), NaN where unknown."""
        return {name: self._column(f"labels/{name}") for name in self.label_names}

    @property
    def report(self) -> dict[str, np.ndarray]:
        """The ingest report: ``record_id``, ``level`` (skip or warn) and ``reason`` arrays of equal length."""
        group = self._group["ingest_report"]
        return {name: _as_str(group[name][:]) for name in REPORT_FIELDS}

    def nbytes_stored(self) -> int | None:
        """Bytes the store takes on disk (None where the store cannot say, e.g. remote URLs)."""
        root = getattr(self._group.store, "root", None)
        if root is None:
            return None
        return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())

    def summary(self) -> str:
        """A human-readable description: records, patients, leads, rate, duration, labels, report, size."""
        n, T = len(self), self.n_samples
        lines = [
            f"ECG store {self.location}",
            f"  records   {n:,}   patients {len(np.unique(self.patient_ids)):,}",
            f"  leads     {len(self.lead_names)}: {' '.join(self.lead_names)}",
            f"  sampling  {self.fs:g} Hz, {T} samples ({T / self.fs:g} s), {self.gain_uv:g} uV per unit",
        ]
        if n:
            lines.append(f"  duration  mean valid {self.lengths.mean() / self.fs:.2f} s; "
                         f"{int((~self.lead_valid).sum()):,} missing or flat leads")
        for name, values in self.labels.items():
            known = values[~np.isnan(values)]
            lines.append(f"  label     {name}: {known.size:,} known, prevalence {known.mean() if known.size else float('nan'):.3f}")
        report = self.report
        counts = Counter(zip(report["level"], (r.split()[0] if r else "" for r in report["reason"])))
        lines += [f"  report    {level} {reason}: {c}" for (level, reason), c in sorted(counts.items())]
        state = self.ingest_state
        if state is not None:
            key = state.get("key", {})
            lines.append(f"  ingest    unfinished run of {key.get('source')} ({key.get('format')}): "
                         f"{len(self.ingest_markers())} shards marked done; run the same command again to finish it")
        size = self.nbytes_stored()
        if size is not None:
            ratio = f", {n * len(self.lead_names) * T * 2 / size:.2f}x compression" if size and n else ""
            lines.append(f"  on disk   {size / 1e6:,.1f} MB{ratio}")
        return "\n".join(lines)

    # ---- reading -------------------------------------------------------------------------------------------
    def _check_range(self, name: str, idx: np.ndarray) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(f"{name} must lie in [0, {len(self)}), got values from {idx.min()} to {idx.max()}")

    def _decode(self, records: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        if self._pending:
            self.flush()
        if self._reader is not None:
            self._reader.read_into(records, out, rows)
        elif len(records) and records[-1] - records[0] + 1 == len(records):
            out[rows] = self._signals[int(records[0]) : int(records[-1]) + 1]
        else:
            out[rows] = self._signals.oindex[records]

    def _finish(self, raw16: np.ndarray, raw: bool, leads) -> np.ndarray:
        if raw:
            if leads is None:
                return raw16
            missing = [ld for ld in leads if ld not in self._lead_names]
            if missing:
                raise ValueError(f"raw reads give stored leads only; {missing} are not among {self._lead_names}")
            return raw16[:, [self._lead_names.index(ld) for ld in leads]]
        out = np.multiply(raw16, np.float32(self._gain_uv / 1000.0), dtype=np.float32)
        return out if leads is None else select_leads(out, self._lead_names, list(leads))

    def read(self, indices, leads: Iterable[str] | None = None, *, raw: bool = False) -> np.ndarray:
        """Records ``indices`` (any order, repeats allowed) as float32 millivolts (B, L, T).

        Args:
            indices: record indices.
            leads: lead names to return (default the stored leads); III, aVR, aVL and aVF are derived from I and
                II when the store does not hold them.
            raw: return the stored int16 samples instead, as :meth:`read_block` does (stored leads only).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        self._check_range("indices", idx)
        records, first, inverse = np.unique(idx, return_index=True, return_inverse=True)
        out = np.empty((len(idx), len(self._lead_names), self.n_samples), np.int16)
        self._decode(records, out, first)
        repeats = np.flatnonzero(first[inverse] != np.arange(len(idx)))
        out[repeats] = out[first[inverse[repeats]]]
        return self._finish(out, raw, leads)

    def read_block(self, start: int, stop: int, raw: bool = False, leads: Iterable[str] | None = None) -> np.ndarray:
        """Records ``start:stop`` as float32 millivolts (B, L, T), or with ``raw=True`` the stored int16 samples
        (microvolts = value x ``gain_uv``; stored leads only)."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"block {start}:{stop} is not within the store's {len(self)} records")
        out = np.empty((stop - start, len(self._lead_names), self.n_samples), np.int16)
        self._decode(np.arange(start, stop), out, np.arange(stop - start))
        return self._finish(out, raw, leads)

    # ---- writing -------------------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self._writable:
            raise ValueError("the store is open read-only; open it with mode='r+' to append")

    def _id_maps(self) -> None:
        if self._patients is None:
            keys, ids = self._column("patient_key"), self._column("patient_id")
            self._patients = dict(zip(keys.tolist(), ids.tolist()))
            self._ids = set(self._column("record_id").tolist())

    def quantize(self, signals: np.ndarray, record_ids) -> np.ndarray:
        """float millivolts (B, L, T) -> int16 units of this store's ``gain_uv``: see :func:`quantize`."""
        return quantize(signals, self._gain_uv, record_ids)

    def append(
        self,
        signals: np.ndarray,
        *,
        lengths,
        record_ids,
        patient_keys,
        age=None,
        sex=None,
        fs_original=None,
        lead_valid=None,
        labels: Mapping[str, np.ndarray] | None = None,
        raw: bool = False,
    ) -> range:
        """Append a batch of records and return their indices.

        Args:
            signals: float32 millivolts (B, L, T) in the store's lead order, zeros after each record's length;
                with ``raw=True`` int16 units of ``gain_uv`` as :meth:`quantize` gives them.
            lengths: valid samples per record (B,).
            record_ids: unique ids (B,), ``<source name>/<relative path>``.
            patient_keys: the source's patient identifiers (B,); records of one key share a ``patient_id``.
            age, sex, fs_original: (B,) each; unknown by default (NaN, -1, NaN).
            lead_valid: bool (B, L); default: the lead is not flat over the record's length.
            labels: label name -> float (B,), NaN unknown; a label new to the store is NaN for earlier records.

        Records are buffered and written a whole shard at a time; :meth:`flush` (or closing) writes the rest.
        """
        self._require_writable()
        signals = np.asarray(signals)
        B, L, T = len(signals), len(self._lead_names), self.n_samples
        if signals.shape != (B, L, T):
            raise ValueError(f"signals must have shape (B, {L}, {T}) in the store's lead order, got {signals.shape}")
        if raw and signals.dtype != np.int16:
            raise ValueError(f"raw signals must be int16, got {signals.dtype}")
        q = signals if raw else self.quantize(signals, [str(r) for r in record_ids])
        if lead_valid is None:
            n = np.asarray(lengths, np.int64).reshape(-1)
            if n.shape != (B,):
                raise ValueError(f"lengths must have shape ({B},), got {n.shape}")
            lead_valid = np.array([np.ptp(r[:, :k], axis=1) > 0 if k > 0 else np.zeros(L, bool)
                                   for r, k in zip(q, n)]).reshape(B, L)
        out = self.append_columns(lengths=lengths, record_ids=record_ids, patient_keys=patient_keys, age=age, sex=sex,
                                  fs_original=fs_original, lead_valid=lead_valid, labels=labels)
        self._queue(q)
        return out

    def append_columns(
        self,
        *,
        lengths,
        record_ids,
        patient_keys,
        lead_valid,
        age=None,
        sex=None,
        fs_original=None,
        labels: Mapping[str, np.ndarray] | None = None,
    ) -> range:
        """Append the per-record fields of records whose signals are already written (see :meth:`write_shard`).

        The arguments are those of :meth:`append` (``lead_valid`` required). Ingest writes encoded shards
        itself and then the fields of their records through this method.
        """
        self._require_writable()
        record_ids = [str(r) for r in record_ids]
        B, L, T = len(record_ids), len(self._lead_names), self.n_samples
        columns = {
            "length": np.asarray(lengths, np.int32).reshape(-1),
            "record_id": np.asarray(record_ids, dtype=str).reshape(-1),
            "patient_key": np.asarray([str(k) for k in patient_keys], dtype=str).reshape(-1),
            "age": np.full(B, np.nan, np.float32) if age is None else np.asarray(age, np.float32),
            "sex": np.full(B, -1, np.int8) if sex is None else np.asarray(sex, np.int8),
            "fs_original": np.full(B, self._fs, np.float32) if fs_original is None else np.asarray(fs_original, np.float32),
        }
        for name, col in columns.items():
            if col.shape != (B,):
                raise ValueError(f"{name} must have shape ({B},), got {col.shape}")
        if ((columns["length"] < 0) | (columns["length"] > T)).any():
            raise ValueError(f"lengths must lie in [0, {T}]")
        columns["lead_valid"] = np.asarray(lead_valid, bool)
        if columns["lead_valid"].shape != (B, L):
            raise ValueError(f"lead_valid must have shape ({B}, {L}), got {columns['lead_valid'].shape}")
        self._id_maps()
        seen = set()
        for rid in record_ids:
            if rid in self._ids or rid in seen:
                raise ValueError(f"record id {rid!r} is already in the store")
            seen.add(rid)
        for name, values in (labels or {}).items():
            values = np.asarray(values, np.float32)
            if values.shape != (B,):
                raise ValueError(f"label {name!r} must have shape ({B},), got {values.shape}")
            columns[f"labels/{name}"] = values
        for name in self.label_names:
            columns.setdefault(f"labels/{name}", np.full(B, np.nan, np.float32))
        # Last, after every check: ids are handed out only to records that are stored, so they stay dense.
        ids = []
        for key in columns["patient_key"].tolist():
            if key not in self._patients:
                self._patients[key] = len(self._patients)
            ids.append(self._patients[key])
        columns["patient_id"] = np.asarray(ids, np.int64)

        start, known = self._n, set(self.label_names)
        for name, values in columns.items():
            if name in FIELDS or name[7:] in known:
                self._column(name)
            else:  # a new label: unknown for the records before
                self._columns[name], self._written[name] = np.full(self._n, np.nan, np.float32), 0
                self._label_names.add(name[7:])
            self._extend(name, values)
        self._ids.update(record_ids)
        self._n += B
        return range(start, self._n)

    def _queue(self, q: np.ndarray) -> None:
        if not self._pending and self._pending_start % self._S:
            # The last shard was written partially: reload it so that it is rewritten whole.
            k0 = self._pending_start - self._pending_start % self._S
            self._pending = [self.read_block(k0, self._pending_start, raw=True)]
            self._pending_start = k0
        self._pending.append(q)
        held = sum(len(p) for p in self._pending)
        if held >= self._S:
            block = np.concatenate(self._pending)
            whole = held - held % self._S
            for off in range(0, whole, self._S):
                self.write_shard((self._pending_start + off) // self._S, block[off : off + self._S])
            self._pending = [block[whole:]] if whole < held else []
            self._pending_start += whole
            self._write_columns(final=False)

    def write_shard(self, k: int, raw: np.ndarray) -> None:
        """Write the int16 records of shard ``k`` (records ``k*chunk_records`` on), growing ``signals`` as needed.

        The primitive under :meth:`append`: each call writes one shard object and nothing else, so writers of
        different shards never touch the same object.
        """
        self._require_writable()
        start = k * self._S
        if len(raw) > self._S:
            raise ValueError(f"a shard holds at most {self._S} records, got {len(raw)}")
        if self._signals.shape[0] < start + len(raw):
            self._signals.resize((start + len(raw), *self._signals.shape[1:]))
        self._signals[start : start + len(raw)] = raw
        if self._reader is not None:
            self._reader.forget(k)

    def _write_columns(self, final: bool) -> None:
        """Write the per-record columns in whole chunks of ``_META_CHUNK`` records (all of them when final)."""
        for name in list(self._columns):
            values, done = self._columns[name], self._written.get(name, 0)
            upto = self._n if final else self._n - self._n % _META_CHUNK
            if upto <= done:
                continue
            if name not in self._arrays and name not in self._group:
                self._arrays[name] = self._group["labels"].create_array(
                    name[7:], shape=(0,), dtype="float32", chunks=(_META_CHUNK,), fill_value=float("nan"))
            array = self._array(name)
            if array.shape[0] < upto:
                array.resize((upto, *array.shape[1:]))
            lo = done - done % _META_CHUNK  # rewrite a partly written chunk whole
            array[lo:upto] = values[lo:upto]
            self._written[name] = upto

    def flush(self) -> None:
        """Write every buffered record (a last, partial shard too) and the per-record columns."""
        self._require_writable()
        if self._pending:
            block = np.concatenate(self._pending)
            self.write_shard(self._pending_start // self._S, block)
            self._pending_start += len(block)
            self._pending = []
        self._write_columns(final=True)
        if self._signals.shape[0] < self._n:  # records whose shards ingest wrote itself (write_encoded_shard)
            self._signals.resize((self._n, *self._signals.shape[1:]))

    def add_report(self, record_ids, levels, reasons, *, at: int | None = None) -> None:
        """Append rows to ``ingest_report``: level ``skip`` or ``warn``, reason a code then details.

        ``at``: write the rows from row ``at`` on, dropping any after it (a resumed ingest rewrites its rows).
        """
        self._require_writable()
        rows = [np.asarray(list(v), dtype=str) for v in (record_ids, levels, reasons)]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("record_ids, levels and reasons must have the same length")
        if not set(rows[1].tolist()) <= {"skip", "warn"}:
            raise ValueError(f"levels must be 'skip' or 'warn', got {sorted(set(rows[1].tolist()))}")
        for name, values in zip(REPORT_FIELDS, rows):
            array = self._array(f"ingest_report/{name}")
            n = array.shape[0] if at is None else at
            array.resize((n + len(values),))
            if len(values):
                array[n:] = values

    def add_source(self, entry: Mapping) -> None:
        """Record an ingested source (its path, options...) in the ``provenance`` attribute."""
        self._require_writable()
        provenance = dict(self._group.attrs.get("provenance", {}))
        provenance["sources"] = [*provenance.get("sources", []), dict(entry)]
        self._group.attrs.update(provenance=provenance)

    # ---- ingest: encoded shards and the state of an unfinished run --------------------------------------------
    def record_codec(self):
        """The numcodecs codec that encodes one int16 record (L, T) as an inner chunk of ``signals``, or None when
        the layout is not the one :meth:`write_encoded_shard` writes. Picklable: ingest workers encode with it."""
        if self._reader is None:
            return None
        from numcodecs import Blosc

        cfg = self._signals.metadata.to_dict()["codecs"][0]["configuration"]["codecs"][1]["configuration"]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[cfg["shuffle"]]
        return Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=shuffle, blocksize=cfg.get("blocksize", 0))

    def encoded_chunks(self, k: int, count: int) -> list[bytes]:
        """The encoded records ``0:count`` of shard ``k`` as stored (to rewrite a partial shard whole); zarr leaves
        out an all-zero record's chunk, which comes back encoded here."""
        zeros = self.record_codec().encode(np.zeros(self._signals.shape[1:], np.int16))
        return [zeros if c is None else c for c in self._reader.chunks(k, count)]

    def write_encoded_shard(self, k: int, chunks: list[bytes]) -> None:
        """Write shard ``k`` from records encoded with :meth:`record_codec`, in one atomic object write.

        The shard lies beyond ``len(store)`` until :meth:`append_columns` and :meth:`flush` take its records in,
        so that a run killed in between leaves the store as it was (the shard is rewritten on resuming).
        """
        self._require_writable()
        self._reader.write(k, chunks)

    @property
    def ingest_state(self) -> dict | None:
        """The attributes of an unfinished ingest run (``ingest_state`` group), None when there is none."""
        if "ingest_state" not in self._group:
            return None
        return self._group["ingest_state"].attrs.asdict()

    def begin_ingest(self, attrs: Mapping) -> None:
        """Record the start of an ingest run: ``attrs`` say what it is and where the store stood."""
        self._require_writable()
        # One object write: a run killed at any moment has either no state or the whole of it.
        self._state = self._group.create_group("ingest_state", overwrite=True, attributes=dict(attrs))

    def ingest_markers(self) -> list[dict]:
        """The done markers of the unfinished run's shards, in shard order."""
        if "ingest_state" not in self._group:
            return []
        state = self._group["ingest_state"]
        names = sorted(state.group_keys(), key=lambda name: int(name.removeprefix("done_")))
        return [state[name].attrs.asdict() for name in names]

    def put_ingest_marker(self, n: int, attrs: Mapping) -> None:
        """The run's ``n``-th done marker (``ingest_state/done_<n>``): one object, written after the shard it marks,
        holding that shard's new records' fields and the report rows up to it."""
        self._require_writable()
        if self._state is None:
            self._state = self._group["ingest_state"]
        self._state.create_group(f"done_{n}", overwrite=True, attributes=dict(attrs))

    def end_ingest(self) -> None:
        """Remove the run's state and markers: the last step of a finished run."""
        self._require_writable()
        if "ingest_state" in self._group:
            del self._group["ingest_state"]
        self._state = None
