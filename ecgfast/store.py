"""ECGStore: a Zarr v3 group of int16 ECGs with their patient ids, labels and ingest report.

The schema (documented in the README) is a plain Zarr v3 group that ``zarr.open_group`` reads without ecgfast:
``signals`` int16 (N, L, T) sharded along records, one inner chunk per record (by default Blosc lz4hc, then a
CRC-32C; :data:`CODECS` lists the choices); beside it one 1-D array per record field, ``labels/<name>``, the ``ingest_report`` group, and while a
writer's run is unfinished, its ``<name>_state`` group.

One job: the schema and its API. The shards' bytes are :mod:`ecgfast.shards`' job (when the layout is one it
handles; zarr-python's own path serves otherwise); ingest's resume protocol lives in :mod:`ecgfast.ingest.resume`,
on the generic primitives here (a shard written beyond the visible end, a state group for a run). This module and
:mod:`ecgfast.shards` are the only ones that touch Zarr; zarr, numcodecs and fsspec are imported lazily.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ecgfast.leads import canonical_lead, select_leads
from ecgfast.shards import ChunkCodec, ShardError, ShardIO, read_through_zarr

SCHEMA_VERSION = 1
INT16 = np.iinfo(np.int16)
STATE_SUFFIX = "_state"  # root groups named <writer>_state hold the state of a writer's unfinished run
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
    "fold": ("int8", -1),
}
# Fields added to schema version 1 after its first stores: a store written before lacks their arrays, reads their
# fill value for every record, and gets the array with its next append.
ADDED_FIELDS = ("fold",)
REPORT_FIELDS = ("record_id", "level", "reason")

# The codecs a new store's records can be compressed with: name -> (default level, highest level, what it is). Each
# record's compressed bytes then carry a CRC-32C, whatever the codec. The default and the trade-offs: the README's
# codec table (benchmarks/bench_store.py measures it).
CODECS: dict[str, tuple[int, int, str]] = {
    "blosc-lz4hc": (2, 9, "Blosc lz4hc + byte shuffle (Zarr v3 core codecs)"),
    "blosc-lz4": (5, 9, "Blosc lz4 + byte shuffle (Zarr v3 core codecs)"),
    "blosc-zstd": (3, 9, "Blosc zstd + byte shuffle (Zarr v3 core codecs)"),
    "pcodec": (8, 12, "pcodec (numcodecs.pcodec; needs the pcodec package)"),
}
DEFAULT_CODEC = "blosc-lz4hc"
# zarr warns each time it builds a numcodecs codec (pcodec), i.e. whenever it reads a store's metadata: the store
# chose it knowingly and the README says which readers open it. Only that warning of that zarr module is silenced.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification",
                        module=r"zarr\.codecs\.numcodecs")


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


def check_codec(codec: str, level: int | None) -> int:
    """The compression level of ``codec`` (its default for None); a ValueError naming the bad argument."""
    if codec not in CODECS:
        raise ValueError(f"codec (--codec) must be one of {', '.join(CODECS)}, got {codec!r}")
    default, top, _ = CODECS[codec]
    if level is None:
        return default
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= top:
        raise ValueError(f"compression_level (--compression-level) of {codec} must be an integer from 0 to {top}, "
                         f"got {level!r}")
    return int(level)


def _signal_codecs(codec: str, level: int) -> dict:
    """The Zarr v3 codecs of one record's inner chunk: the codec, then a CRC-32C (always)."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    if codec == "pcodec":
        from zarr.codecs.numcodecs import PCodec

        try:
            import pcodec  # noqa: F401 - numcodecs needs it to encode and decode
        except ImportError:
            raise ValueError("codec pcodec needs the pcodec package (pip install pcodec)") from None

        # First-order deltas of the samples in pcodec's classic mode: what its automatic search picks for ECGs
        # within 1.5% of the size, and 40% faster to encode (bench_store.py's codec table).
        serializer = PCodec(level=level, mode_spec="classic", delta_spec="try_consecutive", delta_encoding_order=1)
        return dict(serializer=serializer, compressors=(Crc32cCodec(),))
    cname = codec.removeprefix("blosc-")
    return dict(compressors=(BloscCodec(cname=cname, clevel=level, shuffle="shuffle"), Crc32cCodec()))


def codec_of(inner_codecs: list[dict]) -> tuple[str, int] | None:
    """(codec name, level) of a record's inner codecs as :data:`CODECS` names them, None for another chain."""
    names = [c["name"] for c in inner_codecs if c["name"] != "crc32c"]
    cfg = [dict(c.get("configuration") or {}) for c in inner_codecs if c["name"] != "crc32c"]
    if names == ["numcodecs.pcodec"]:
        return "pcodec", int(cfg[0].get("level", 8))
    if names == ["bytes", "blosc"] and cfg[1].get("shuffle") == "shuffle" and f"blosc-{cfg[1].get('cname')}" in CODECS:
        return f"blosc-{cfg[1]['cname']}", int(cfg[1].get("clevel", 5))
    return None


def _as_str(values) -> np.ndarray:
    """A fixed-width unicode array, whatever string dtype zarr returned (object or NumPy's StringDType)."""
    return np.array(list(values), dtype=str)


def _create_field(group, name: str, n_leads: int):
    """The empty array of the per-record field ``name`` in ``group``."""
    dtype, fill = FIELDS[name]
    shape, chunks = ((0, n_leads), (_META_CHUNK, n_leads)) if name == "lead_valid" else ((0,), (_META_CHUNK,))
    return group.create_array(name, shape=shape, dtype=str if dtype == "str" else dtype, chunks=chunks, fill_value=fill)


def _zarr_store(path_or_url, read_only: bool, storage_options: Mapping | None = None):
    """The Zarr store behind a local path, ``file://`` URL or any other fsspec URL (``memory://``, ``s3://``).

    ``storage_options`` go to the fsspec filesystem (``endpoint_url``, ``key``, ``secret``, ``anon``...); a local
    path takes none.
    """
    import zarr.storage

    url = os.fspath(path_or_url)
    if "://" not in url or url.startswith("file://"):
        if storage_options:
            raise ValueError(f"storage options {sorted(storage_options)} apply to fsspec URLs (s3://...), "
                             f"not to the local path {url}")
        return zarr.storage.LocalStore(url.removeprefix("file://"), read_only=read_only)
    try:
        options = {"storage_options": dict(storage_options)} if storage_options else {}
        return zarr.storage.FsspecStore.from_url(url, read_only=read_only, **options)
    except ImportError as err:  # e.g. s3:// without s3fs
        raise ValueError(f"cannot open store {url!r}: {err}") from err


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
        sharded = self._signals.shards
        self._records_per_shard = int(sharded[0]) if sharded else int(self._signals.chunks[0])
        self._n = int(self._signals.shape[0])
        threads = threads or min(8, os.cpu_count() or 1)
        self._reader = ShardIO.for_array(self._signals, location, threads)  # None: zarr-python reads and writes
        self._arrays = {"signals": self._signals}  # zarr handles: opening one reads its metadata
        self._columns: dict[str, np.ndarray] = {}  # the per-record fields and labels/<name>, loaded on first use
        self._written: dict[str, int] = {}  # records of each column already in Zarr
        self._pending: list[np.ndarray] = []  # int16 records from the last shard boundary on, not all written yet
        self._pending_start = self._n  # index of the first pending record (a shard boundary once loaded)
        self._label_names: set[str] | None = None
        self._patients: dict[str, int] | None = None
        self._ids: set[str] | None = None

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
        codec: str = DEFAULT_CODEC,
        compression_level: int | None = None,
        provenance: Mapping | None = None,
        overwrite: bool = False,
        threads: int | None = None,
        storage_options: Mapping | None = None,
    ) -> ECGStore:
        """Create an empty, writable store.

        Args:
            path: a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``...).
            lead_names: the stored leads in order, standard names (``ecgfast.leads.LEADS12`` or ``LEADS8``).
            fs: sampling rate in Hz. n_samples: samples per record (T).
            gain_uv: microvolts per stored integer unit; signals are rounded to the nearest unit.
            chunk_records: records per shard, the block a loader reads at once.
            codec: how each record is compressed, a name of :data:`CODECS`: ``"blosc-lz4hc"`` (default, level 2:
                2.1x on the CinC records, decoding ~2.3x faster than Blosc zstd 3), ``"blosc-lz4"``,
                ``"blosc-zstd"``, ``"pcodec"`` (3.3x, decoding as fast as Blosc zstd 3; needs the pcodec package);
                the README's codec table compares them. Recorded in the ``codec`` attribute; every read follows the
                array's own Zarr metadata. Each record's compressed bytes carry a CRC-32C that every read verifies,
                whatever the codec.
            compression_level: the codec's level (Blosc 0-9, default lz4hc 2, lz4 5, zstd 3; pcodec 0-12,
                default 8).
            provenance: stored in the ``provenance`` attribute (sources, options).
            overwrite: replace whatever is at ``path``; ``"incomplete"``: replace only a store whose creation was
                interrupted (it lacks the attributes, written last); otherwise an existing store is an error.
            threads: decoding threads for reads (default: the CPU count, at most 8).
            storage_options: options of the fsspec filesystem behind a URL (``endpoint_url``, ``key``, ``secret``,
                ``anon``...: see the README's object-store example).
        """
        import zarr

        lead_names = tuple(lead_names)
        bad = [n for n in lead_names if canonical_lead(n) != n]
        if not lead_names or bad or len(set(lead_names)) != len(lead_names):
            raise ValueError(f"lead_names must be distinct standard lead names, got {lead_names}")
        for name, value in (("fs", fs), ("n_samples", n_samples), ("gain_uv", gain_uv), ("chunk_records", chunk_records)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        level = check_codec(codec, compression_level)
        mode = "w" if overwrite is True else "w-"
        if overwrite == "incomplete":
            try:
                existing = zarr.open_group(_zarr_store(path, True, storage_options), mode="r")
                mode = "w" if "schema_version" not in existing.attrs else mode
            except (FileNotFoundError, zarr.errors.GroupNotFoundError):
                pass
        try:
            group = zarr.open_group(_zarr_store(path, False, storage_options), mode=mode)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as err:
            raise ValueError(f"{path} already holds a store (overwrite=True replaces it; --overwrite on the command "
                             f"line)") from err
        from ecgfast import __version__

        L, T = len(lead_names), int(n_samples)
        group.create_array("signals", shape=(0, L, T), dtype="int16", chunks=(1, L, T), shards=(int(chunk_records), L, T),
                           fill_value=0, **_signal_codecs(codec, level))
        for name in FIELDS:
            _create_field(group, name, L)
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
            codec={"name": codec, "level": level},
            provenance={"ecgfast_version": __version__, "sources": [], **dict(provenance or {})},
        )
        return cls(group, writable=True, location=os.fspath(path), threads=threads)

    @classmethod
    def open(cls, path_or_url, mode: str = "r", *, threads: int | None = None,
             storage_options: Mapping | None = None) -> ECGStore:
        """Open a store: ``mode="r"`` read-only, ``"r+"`` to append; ``threads`` and ``storage_options`` as for
        :meth:`create`."""
        import zarr

        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        try:
            group = zarr.open_group(_zarr_store(path_or_url, mode == "r", storage_options), mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
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
        """Records per shard: the blocks a loader should plan its reads over (the public name of records_per_shard)."""
        return self._records_per_shard

    @property
    def codec(self) -> tuple[str, int] | None:
        """(name, level) of the codec of the records as :data:`CODECS` names it, read from the array's Zarr
        metadata (stores made before the ``codec`` attribute too); None for a chain written by other tools."""
        meta = self._signals.metadata.to_dict()["codecs"]
        inner = meta[0]["configuration"]["codecs"] if meta[0]["name"] == "sharding_indexed" else meta
        return codec_of(list(inner))

    @property
    def attrs(self) -> dict:
        return self._group.attrs.asdict()

    def _array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def _column(self, name: str) -> np.ndarray:
        if name not in self._columns and name in ADDED_FIELDS and name not in self._group:
            dtype, fill = FIELDS[name]  # a store from before the field: unknown for every record
            self._columns[name], self._written[name] = np.full(self._n, fill, dtype), 0
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
    folds = property(lambda self: self._column("fold"),
                     doc="int8 (N,): the source's recommended fold (PTB-XL's strat_fold, 1-10), -1 none")

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
    def label_groups(self) -> dict[str, list[str]]:
        """Group name -> its label names (the ``label_groups`` attribute; PTB-XL ingest records ``all``, ``diag``,
        ``sub``, ``super``, ``form`` and ``rhythm``). A record whose labels of a group are NaN is outside that
        group's evaluation."""
        return {name: list(labels) for name, labels in self._group.attrs.get("label_groups", {}).items()}

    def label_group(self, name: str) -> list[str]:
        """The label names of the group ``name``; a ValueError naming the store's groups if it has no such group."""
        groups = self.label_groups
        if name not in groups:
            raise ValueError(f"store {self.location} has no label group {name!r} "
                             f"(its groups: {', '.join(sorted(groups)) or 'none'})")
        return groups[name]

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
        codec, checked = self.codec, self.record_codec()
        crc = ", a CRC-32C per record" if checked is not None and checked.checksum else ""
        lines.append(f"  codec     {f'{codec[0]} level {codec[1]}' if codec else 'other (written by another tool)'}{crc}")
        if n:
            lines.append(f"  duration  mean valid {self.lengths.mean() / self.fs:.2f} s; "
                         f"{int((~self.lead_valid).sum()):,} missing or flat leads")
        folds = Counter(self.folds.tolist())
        if set(folds) - {-1}:
            lines.append("  folds     " + "  ".join(f"{k}: {c:,}" for k, c in sorted(folds.items()) if k >= 0)
                         + (f"  (none: {folds[-1]:,})" if folds[-1] else ""))
        for name, labels in self.label_groups.items():
            lines.append(f"  group     {name}: {len(labels)} labels")
        for name, values in self.labels.items():
            known = values[~np.isnan(values)]
            lines.append(f"  label     {name}: {known.size:,} known, prevalence {known.mean() if known.size else float('nan'):.3f}")
        report = self.report
        counts = Counter(zip(report["level"], (r.split()[0] if r else "" for r in report["reason"])))
        lines += [f"  report    {level} {reason}: {c}" for (level, reason), c in sorted(counts.items())]
        for name in self.state_names():
            attrs = self.state(name) or {}
            label = name.removesuffix(STATE_SUFFIX)
            lines.append(f"  {label:<9} unfinished {attrs.get('note', 'run')}: {len(self.state_entries(name))} steps "
                         f"done; {attrs.get('hint', 'the writer left it unfinished')}")
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
        try:
            if self._reader is not None:
                self._reader.read_into(records, out, rows)
            elif len(records):
                read_through_zarr(self._signals, self.location, records, out, rows)
        except ShardError as err:
            raise self._named(err) from err

    def _named(self, err: ShardError) -> ShardError:
        """``err`` with its records cut to the store's extent and named by their ids as well."""
        span = range(err.records.start, max(err.records.start + 1, min(err.records.stop, len(self))))
        try:
            ids = self.record_ids
            named = f" [record ids {ids[span.start]}" + (f" ... {ids[span.stop - 1]}]" if len(span) > 1 else "]")
        except (IndexError, KeyError, ValueError):  # a damaged record_id array: the indices must do
            named = ""
        return ShardError(err.shard, span, err.problem + named)

    # ---- checking --------------------------------------------------------------------------------------------
    def verify(self, progress: bool = False) -> list[str]:
        """Everything wrong with the store, one line each; empty when all is well.

        Checks the schema (every array there, of its dtype, as long as ``signals``), the per-record values that
        reads rely on (lengths within the duration, unique record ids), every shard of ``signals`` (present, its
        index and its CRC-32C, every record's inner chunk: CRC-32C where the store has them, and decoding), and
        unfinished runs (a state group left by an interrupted ingest).
        """
        from tqdm import tqdm

        n, L, T = len(self), len(self._lead_names), self.n_samples
        problems = []
        arrays = {name: ((n, L) if name == "lead_valid" else (n,), dtype) for name, (dtype, _) in FIELDS.items()}
        arrays.update({f"labels/{name}": ((n,), "float32") for name in self.label_names})
        for name, (shape, dtype) in arrays.items():
            if name not in self._group and name in ADDED_FIELDS:
                continue  # a store from before the field
            if name not in self._group:
                problems.append(f"array {name} is missing")
                continue
            array = self._array(name)
            if array.shape != shape:
                problems.append(f"array {name} has shape {array.shape}, not {shape} (signals holds {n} records)")
            if dtype != "str" and array.dtype != np.dtype(dtype):
                problems.append(f"array {name} has dtype {array.dtype}, not {dtype}")
        report = {name: self._group["ingest_report"][name].shape for name in REPORT_FIELDS
                  if name in self._group["ingest_report"]}
        if len(report) != len(REPORT_FIELDS) or len(set(report.values())) != 1:
            problems.append(f"ingest_report arrays differ from the schema's {REPORT_FIELDS}: {report}")
        if not problems:
            lengths, ids = self.lengths, self.record_ids
            if n and ((lengths < 0) | (lengths > T)).any():
                problems.append(f"length: {int(((lengths < 0) | (lengths > T)).sum())} records outside [0, {T}]")
            if len(set(ids.tolist())) != n:
                problems.append(f"record_id: {n - len(set(ids.tolist()))} repeated ids")
        records_per_shard = self._records_per_shard
        for k in tqdm(range(-(-n // records_per_shard)), desc="verify shards", unit="shard", disable=not progress):
            span = range(k * records_per_shard, min(n, (k + 1) * records_per_shard))
            if self._reader is not None:
                problem = self._reader.check(k, len(span))
                err = ShardError(self._reader.name(k), span, problem or "")
            else:
                try:
                    read_through_zarr(self._signals, self.location, np.asarray(span),
                                      np.empty((len(span), L, T), np.int16), np.arange(len(span)))
                    problem = None
                except ShardError as caught:
                    problem, err = caught.problem, caught
            if problem is not None:
                problems.append(str(self._named(err)))
        for name in self.state_names():
            attrs = self.state(name) or {}
            problems.append(f"{name}: unfinished {attrs.get('note', 'run')}; {attrs.get('hint', '')}".rstrip("; "))
        return problems

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

    def read(self, indices, leads: Iterable[str] | None = None, *, raw: bool = False,
             out: np.ndarray | None = None) -> np.ndarray:
        """Records ``indices`` (any order, repeats allowed) as float32 millivolts (B, L, T).

        Args:
            indices: record indices.
            leads: lead names to return (default the stored leads); III, aVR, aVL and aVF are derived from I and
                II when the store does not hold them.
            raw: return the stored int16 samples instead, as :meth:`read_block` does (stored leads only).
            out: with ``raw=True``, a buffer to decode into, as for :meth:`read_block`.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        self._check_range("indices", idx)
        records, first, inverse = np.unique(idx, return_index=True, return_inverse=True)
        out = self._output(len(idx), raw, leads, out)
        self._decode(records, out, first)
        repeats = np.flatnonzero(first[inverse] != np.arange(len(idx)))
        out[repeats] = out[first[inverse[repeats]]]
        return self._finish(out, raw, leads)

    def read_block(self, start: int, stop: int, raw: bool = False, leads: Iterable[str] | None = None, *,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Records ``start:stop`` as float32 millivolts (B, L, T), or with ``raw=True`` the stored int16 samples
        (microvolts = value x ``gain_uv``; stored leads only).

        ``out``: a C-contiguous int16 array (B, L, T) that ``raw=True`` decodes into and returns, instead of a new
        array (a reader that reuses its buffers spares their page faults: the loader's block cache does).
        """
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"block {start}:{stop} is not within the store's {len(self)} records")
        out = self._output(stop - start, raw, leads, out)
        self._decode(np.arange(start, stop), out, np.arange(stop - start))
        return self._finish(out, raw, leads)

    def _output(self, n: int, raw: bool, leads, out: np.ndarray | None) -> np.ndarray:
        """The int16 array (n, L, T) a read decodes into: ``out`` once checked, else a new one."""
        shape = (n, len(self._lead_names), self.n_samples)
        if out is None:
            return np.empty(shape, np.int16)
        if not raw or leads is not None:
            raise ValueError("out= takes the stored int16 records: pass raw=True and no leads")
        if out.shape != shape or out.dtype != np.int16 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writable C-contiguous int16 array of shape {shape}, got "
                             f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not C-contiguous)'}")
        return out

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
        fold=None,
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
            fold: the source's recommended fold (B,), integers 0-127; -1 (the default) none.

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
                                  fs_original=fs_original, lead_valid=lead_valid, labels=labels, fold=fold)
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
        fold=None,
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
            "fold": np.full(B, -1, np.int8) if fold is None else np.asarray(fold),
        }
        folds = columns["fold"]
        if folds.size and not (np.issubdtype(folds.dtype, np.integer) and ((folds >= -1) & (folds <= 127)).all()):
            raise ValueError(f"fold must hold integers from 0 to 127 (-1: none), got {np.unique(folds)[:8]}")
        columns["fold"] = folds.astype(np.int8)
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
            if not name or "/" in name:
                raise ValueError(f"label name {name!r} must be non-empty and without '/' (it names a Zarr array)")
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
        records_per_shard = self._records_per_shard
        if not self._pending and self._pending_start % records_per_shard:
            # The last shard was written partially: reload it so that it is rewritten whole.
            k0 = self._pending_start - self._pending_start % records_per_shard
            self._pending = [self.read_block(k0, self._pending_start, raw=True)]
            self._pending_start = k0
        self._pending.append(q)
        held = sum(len(p) for p in self._pending)
        if held >= records_per_shard:
            block = np.concatenate(self._pending)
            whole = held - held % records_per_shard
            for off in range(0, whole, records_per_shard):
                self.write_shard((self._pending_start + off) // records_per_shard, block[off : off + records_per_shard])
            self._pending = [block[whole:]] if whole < held else []
            self._pending_start += whole
            self._write_columns(final=False)

    def write_shard(self, k: int, raw: np.ndarray) -> None:
        """Write the int16 records of shard ``k`` (records ``k*chunk_records`` on), growing ``signals`` as needed.

        The primitive under :meth:`append`: each call writes one shard object (then, when it grows, the array's
        metadata), so writers of different shards never touch the same object.
        """
        self._require_writable()
        start = k * self._records_per_shard
        if len(raw) > self._records_per_shard:
            raise ValueError(f"a shard holds at most {self._records_per_shard} records, got {len(raw)}")
        grow = self._signals.shape[0] < start + len(raw)
        if self._reader is not None:  # the shard first: the visible extent never covers a shard not yet written
            self._reader.write(k, self._reader.encode(np.asarray(raw, np.int16)))
        if grow:
            self._signals.resize((start + len(raw), *self._signals.shape[1:]))
        if self._reader is None:
            self._signals[start : start + len(raw)] = raw

    def _write_columns(self, final: bool) -> None:
        """Write the per-record columns in whole chunks of ``_META_CHUNK`` records (all of them when final)."""
        for name in list(self._columns):
            values, done = self._columns[name], self._written.get(name, 0)
            upto = self._n if final else self._n - self._n % _META_CHUNK
            if upto <= done:
                continue
            if name in ADDED_FIELDS and name not in self._arrays and name not in self._group:
                self._arrays[name] = _create_field(self._group, name, len(self._lead_names))
            elif name not in self._arrays and name not in self._group:
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
            self.write_shard(self._pending_start // self._records_per_shard, block)
            self._pending_start += len(block)
            self._pending = []
        self._write_columns(final=True)
        if self._signals.shape[0] < self._n:  # records whose shards ingest wrote itself (write_encoded_shard)
            self._signals.resize((self._n, *self._signals.shape[1:]))

    def save_columns(self) -> None:
        """Write the per-record columns appended so far, without growing ``signals``: after this, :meth:`flush`
        makes the records visible in one metadata write (ingest's last steps, see ``ecgfast.ingest.resume``)."""
        self._require_writable()
        self._write_columns(final=True)

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

    def add_label_groups(self, groups: Mapping[str, Iterable[str]]) -> None:
        """Record label groups in the ``label_groups`` attribute: a group already there gains the new names. Each
        name must be a label of the store, and no group may bear a label's name (``--tasks`` takes either)."""
        self._require_writable()
        known = set(self.label_names)
        merged = self.label_groups
        for name, labels in groups.items():
            labels = [str(label) for label in labels]
            missing = sorted(set(labels) - known)
            if missing or name in known or not labels:
                why = (f"labels {missing[:5]} are not in the store" if missing else
                       "it is a label's name" if name in known else "it has no labels")
                raise ValueError(f"label group {name!r}: {why}")
            merged[name] = sorted(set(merged.get(name, [])) | set(labels))
        self._group.attrs.update(label_groups=merged)

    def add_source(self, entry: Mapping) -> None:
        """Record an ingested source (its path, options...) in the ``provenance`` attribute."""
        self._require_writable()
        provenance = dict(self._group.attrs.get("provenance", {}))
        provenance["sources"] = [*provenance.get("sources", []), dict(entry)]
        self._group.attrs.update(provenance=provenance)

    # ---- primitives for writers that resume (ingest): encoded shards beyond the visible end, run state --------
    def record_codec(self) -> ChunkCodec | None:
        """The codec that encodes one int16 record (1, L, T) as an inner chunk of ``signals``, or None when the
        layout is not one :meth:`write_encoded_shard` writes. Picklable: ingest's workers encode with it."""
        return None if self._reader is None else self._reader.codec

    def encoded_chunks(self, k: int, count: int) -> list[bytes]:
        """The encoded records ``0:count`` of shard ``k`` as stored (to rewrite a partial shard whole); an inner
        chunk the index marks absent (zarr leaves out an all-zero record's) comes back encoded."""
        zeros = None
        out = []
        for chunk in self._reader.chunks(k, count):
            if chunk is None:
                zeros = zeros or self._reader.codec.encode(np.zeros(self._reader.codec.shape, np.int16))
            out.append(zeros if chunk is None else chunk)
        return out

    def write_encoded_shard(self, k: int, chunks: list[bytes]) -> None:
        """Write shard ``k`` from records encoded with :meth:`record_codec`, in one atomic object write.

        The shard may lie beyond ``len(store)``: it stays invisible until :meth:`append_columns` and :meth:`flush`
        take its records in, so that a run killed in between leaves the store as it was.
        """
        self._require_writable()
        self._reader.write(k, chunks)

    def discard(self) -> None:
        """Remove an empty store's arrays, groups and attributes, undoing :meth:`create` (ingest does it when a
        store it created took no record). Only what the store is made of: other files in its folder stay."""
        self._require_writable()
        if self._n or self._pending:
            raise ValueError(f"store {self.location} holds records; discard() removes only an empty store")
        from zarr.core.sync import sync

        for name in list(self._group.keys()):
            del self._group[name]
        sync(self._group.store.delete("zarr.json"))
        self._writable = False  # nothing left to flush
        root = getattr(self._group.store, "root", None)
        if root is not None:
            try:
                os.rmdir(root)  # only when empty
            except OSError:
                pass

    def state_names(self) -> list[str]:
        """The state groups of unfinished runs (``<writer>_state`` at the store's root)."""
        return sorted(n for n in self._group.group_keys() if n.endswith(STATE_SUFFIX))

    def state(self, name: str) -> dict | None:
        """The attributes of the state group ``name``, None when there is none. A writer may set ``note`` (what
        the run is) and ``hint`` (how to finish it): :meth:`summary` and :meth:`verify` print them."""
        return self._group[name].attrs.asdict() if name in self._group else None

    def state_entries(self, name: str) -> dict[str, dict]:
        """The entries of the state group ``name`` (entry name -> attributes); empty when there is no group."""
        if name not in self._group:
            return {}
        return {entry: group.attrs.asdict() for entry, group in self._group[name].groups()}

    def begin_state(self, name: str, attrs: Mapping) -> None:
        """Create the state group ``name`` (replacing any) with ``attrs``, in one object write: a run killed at any
        moment has either no state or the whole of it."""
        self._require_writable()
        if not name.endswith(STATE_SUFFIX):
            raise ValueError(f"a state group's name ends with {STATE_SUFFIX!r}, got {name!r}")
        self._group.create_group(name, overwrite=True, attributes=dict(attrs))

    def put_state_entry(self, name: str, entry: str, attrs: Mapping) -> None:
        """Write the entry ``entry`` of the state group ``name``: one object write."""
        self._require_writable()
        self._group[name].create_group(entry, overwrite=True, attributes=dict(attrs))

    def end_state(self, name: str) -> None:
        """Remove the state group ``name`` and its entries: the last step of a finished run."""
        self._require_writable()
        if name in self._group:
            del self._group[name]
