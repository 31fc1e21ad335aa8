"""Byte-level I/O of a sharded Zarr v3 array whose inner chunks are single records (the store's ``signals``).

A shard object holds ``records_per_shard`` consecutive records, each one inner chunk encoded by the array's Zarr v3
codecs, then the shard index: (offset, nbytes) uint64 pairs, one per record, and its CRC-32C. This module reads
and writes those objects itself, because zarr-python's per-chunk machinery costs milliseconds per record
(zarr-python #3829): reads fetch the byte ranges of the needed inner chunks through the Zarr store (one span per
shard for a block) and decode them in a thread pool; writes put a whole shard in one object write.

Any Zarr v3 codec chain serves (:class:`ChunkCodec`): the usual ones (``bytes``, ``blosc``, ``zstd``, ``gzip``,
``crc32c``) are decoded with numcodecs straight into the caller's buffer, any other registered codec through
zarr's own codec pipeline. A ``crc32c`` codec is verified on every read.

Reads never invent data: a shard missing within the records asked for, a truncated one, an index that fails its
checksum, or an inner chunk that fails its CRC-32C or its decoder is a :class:`ShardError` naming the shard's
object and its records. An inner chunk that the (valid) index marks absent is the fill value, as Zarr defines it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MISSING = 2**64 - 1  # offset and size of an absent inner chunk in a shard index
_FAST_BYTES_CODECS = {"blosc", "zstd", "gzip", "crc32c"}


class ShardError(ValueError):
    """A shard of ``signals`` that cannot give the records asked for: ``shard`` names its object (a path or URL),
    ``records`` the store indices it holds, ``problem`` what is wrong."""

    def __init__(self, shard: str, records: range, problem: str):
        what = f"records {records.start}-{records.stop - 1}" if len(records) > 1 else f"record {records.start}"
        super().__init__(f"shard {shard} ({what}): {problem}")
        self.shard, self.records, self.problem = shard, records, problem


def crc32c(data) -> int:
    """CRC-32C of ``data`` as the Zarr v3 ``crc32c`` codec computes it (hardware-accelerated where the CPU has it),
    with whichever package this zarr release depends on."""
    if isinstance(data, memoryview):  # google_crc32c takes bytes and arrays, not memoryviews (no copy either way)
        data = np.frombuffer(data, np.uint8)
    try:
        import google_crc32c  # zarr 3.1

        return google_crc32c.value(data)
    except ImportError:
        import crc32c as _crc32c  # other zarr 3 releases

        return _crc32c.crc32c(data)


class ChunkCodec:
    """One record (L, T) <-> one encoded inner chunk, by the array's Zarr v3 inner codecs (their JSON form).

    Picklable: ingest's worker processes encode with it.
    """

    def __init__(self, codecs: list[dict], shape: tuple[int, ...], dtype: str = "int16"):
        self.codecs = [dict(c) for c in codecs]
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        names = [c["name"] for c in self.codecs]
        self.checksum = "crc32c" in names
        first = self.codecs[0] if self.codecs else {}
        self._fast = (first.get("name") == "bytes" and all(n in _FAST_BYTES_CODECS for n in names[1:]))
        if self._fast:
            self._endian = (first.get("configuration") or {}).get("endian", sys.byteorder)
        self._steps = None  # built on first use: numcodecs objects, or zarr's pipeline for other codecs

    def __getstate__(self):
        return {**self.__dict__, "_steps": None}

    def _build(self):
        if self._fast:
            import numcodecs

            steps = []
            for c in self.codecs[1:]:
                cfg = dict(c.get("configuration") or {})
                if c["name"] == "blosc":
                    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[cfg.get("shuffle", "noshuffle")]
                    # The item size for shuffling comes from the array it is given (a Blosc frame says how it was
                    # made, so decoding needs no more).
                    steps.append(numcodecs.Blosc(cname=cfg.get("cname", "zstd"), clevel=cfg.get("clevel", 5),
                                                 shuffle=shuffle, blocksize=cfg.get("blocksize", 0)))
                elif c["name"] == "zstd":
                    steps.append(numcodecs.Zstd(level=cfg.get("level", 0), checksum=cfg.get("checksum", False)))
                elif c["name"] == "gzip":
                    steps.append(numcodecs.GZip(level=cfg.get("level", 5)))
                else:
                    steps.append("crc32c")
            self._steps = steps
        else:
            from zarr.core.array_spec import ArrayConfig, ArraySpec
            from zarr.core.buffer import default_buffer_prototype
            from zarr.core.codec_pipeline import BatchedCodecPipeline
            from zarr.core.dtype import parse_data_type
            from zarr.registry import get_codec_class

            codecs = [get_codec_class(c["name"]).from_dict(c) for c in self.codecs]
            spec = ArraySpec(shape=self.shape, dtype=parse_data_type(self.dtype, zarr_format=3), fill_value=0,
                             config=ArrayConfig(order="C", write_empty_chunks=True),
                             prototype=default_buffer_prototype())
            self._steps = (BatchedCodecPipeline.from_codecs(codecs), spec)
        return self._steps

    def encode(self, record: np.ndarray) -> bytes:
        """The inner chunk of ``record`` (shape ``self.shape``, cast to the array's dtype)."""
        steps = self._steps or self._build()
        record = np.asarray(record, self.dtype).reshape(self.shape)
        if not self._fast:
            from zarr.core.buffer import default_buffer_prototype
            from zarr.core.sync import sync

            pipeline, spec = steps
            nd = default_buffer_prototype().nd_buffer.from_numpy_array(record)
            (buf,) = sync(pipeline.encode([(nd, spec)]))
            return buf.to_bytes()
        data = np.ascontiguousarray(record, self.dtype.newbyteorder("<" if self._endian == "little" else ">"))
        for step in steps:
            if step == "crc32c":
                raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
                data = raw + np.uint32(crc32c(raw)).astype("<u4").tobytes()
            else:
                data = step.encode(data)  # blosc takes the array itself, so that it shuffles by the item size
        return data.tobytes() if isinstance(data, np.ndarray) else bytes(data)

    def decode(self, buf, out: np.ndarray) -> None:
        """Decode an inner chunk into ``out`` (shape ``self.shape``); a ValueError saying what failed."""
        steps = self._steps or self._build()
        if not self._fast:
            from zarr.core.buffer import default_buffer_prototype
            from zarr.core.sync import sync

            pipeline, spec = steps
            try:
                (nd,) = sync(pipeline.decode([(default_buffer_prototype().buffer.from_bytes(bytes(buf)), spec)]))
            except Exception as err:  # noqa: BLE001 - any codec's complaint means the chunk is damaged
                raise ValueError(f"the inner chunk does not decode ({type(err).__name__}: {err})") from err
            out[...] = nd.as_numpy_array()
            return
        native = self._endian == sys.byteorder or self.dtype.itemsize == 1
        target = out.reshape(-1).view(np.uint8) if native and out.flags.c_contiguous else None
        data = memoryview(buf)
        for k in range(len(steps) - 1, -1, -1):
            step = steps[k]
            if step == "crc32c":
                if len(data) < 4:
                    raise ValueError(f"the inner chunk has {len(data)} bytes, too few for its CRC-32C")
                stored = int(np.frombuffer(data[-4:], "<u4")[0])
                data = data[:-4]
                if crc32c(data) != stored:
                    raise ValueError("the inner chunk fails its CRC-32C check (its bytes are damaged)")
                continue
            try:
                data = step.decode(data, out=target if k == 0 else None)
            except Exception as err:  # noqa: BLE001 - a codec rejects damaged bytes in its own way
                raise ValueError(f"the inner chunk does not decode ({type(err).__name__}: {err})") from err
        if target is not None and isinstance(data, np.ndarray) and np.shares_memory(data, out):
            return
        flat = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        if flat.nbytes != out.nbytes:
            raise ValueError(f"the inner chunk decodes to {flat.nbytes} bytes, not {out.nbytes}")
        order = "<" if self._endian == "little" else ">"
        out[...] = flat.view(self.dtype.newbyteorder(order)).reshape(self.shape)


class ShardIO:
    """Reads and writes the shard objects of a sharded Zarr v3 array of records (one inner chunk per record).

    Args:
        array: the zarr array (``signals``).
        location: how errors name the array's group (a path or URL); a shard is ``<location>/<array>/c/<k>/0/0``.
        threads: decoding threads.
    """

    def __init__(self, array, location: str, threads: int):
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        meta = array.metadata.to_dict()
        cfg = meta["codecs"][0]["configuration"]
        self.records_per_shard = int(array.shards[0])
        self.codec = ChunkCodec(cfg["codecs"], (1, *array.shape[1:]), array.dtype)
        self._index_crc = [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
        self._index_bytes = 16 * self.records_per_shard + 4 * self._index_crc
        self._store, self._location = array.store, location.rstrip("/")
        self._prefix = f"{array.path}/" if array.path else ""
        self._encode_key = array.metadata.encode_chunk_key
        self._proto, self._sync = default_buffer_prototype(), sync
        self._range, self._suffix = RangeByteRequest, SuffixByteRequest
        self._indexes: dict[int, tuple[np.ndarray, int]] = {}  # shard -> (index, end of its data region)
        self._root = getattr(self._store, "root", None)  # LocalStore: read files directly with pread
        self._threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None

    @classmethod
    def for_array(cls, array, location: str, threads: int) -> ShardIO | None:
        """A reader/writer for ``array``, or None when its layout is not one this module handles (zarr serves)."""
        try:
            meta = array.metadata.to_dict()
            codecs = meta["codecs"]
            if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
                return None
            cfg = codecs[0]["configuration"]
            index = [c["name"] for c in cfg["index_codecs"]]
            if (tuple(cfg["chunk_shape"]) != (1, *array.shape[1:]) or index not in (["bytes"], ["bytes", "crc32c"])
                    or cfg["index_codecs"][0].get("configuration", {}).get("endian", "little") != "little"
                    or cfg.get("index_location", "end") != "end"
                    or meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}):
                return None
            return cls(array, location, threads)
        except (ImportError, AttributeError, KeyError, TypeError, ValueError):
            return None

    # ---- naming ----------------------------------------------------------------------------------------------
    def key(self, shard: int) -> str:
        return self._prefix + self._encode_key((shard, 0, 0))

    def name(self, shard: int) -> str:
        """The shard's object as a user finds it: a file path, or the store's URL and the key."""
        if self._root is not None:
            return str(Path(self._root) / self.key(shard))
        return f"{self._location}/{self.key(shard)}"  # the group is the Zarr store's root

    def _error(self, shard: int, problem: str) -> ShardError:
        start = shard * self.records_per_shard
        return ShardError(self.name(shard), range(start, start + self.records_per_shard), problem)

    # ---- bytes -----------------------------------------------------------------------------------------------
    def _fetch(self, shard: int, ranges: list[tuple[int, int]] | None):
        """Bytes of ``ranges`` of a shard's object, or with ``ranges=None`` (its index bytes, its size); None when
        the object does not exist."""
        key = self.key(shard)
        if self._root is not None:
            try:
                fd = os.open(Path(self._root) / key, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                if ranges is None:
                    size = os.fstat(fd).st_size
                    n = min(size, self._index_bytes)
                    return os.pread(fd, n, size - n), size
                return [os.pread(fd, b - a, a) for a, b in ranges]
            finally:
                os.close(fd)

        async def get_all(requests):
            return await asyncio.gather(*(self._store.get(key, self._proto, r) for r in requests))

        if ranges is None:
            (buf,) = self._sync(get_all([self._suffix(self._index_bytes)]))
            if buf is None:
                return None
            return buf.to_bytes(), self._sync(self._store.getsize(key))
        bufs = self._sync(get_all([self._range(a, b) for a, b in ranges]))
        return None if any(b is None for b in bufs) else [b.to_bytes() for b in bufs]

    def index(self, shard: int) -> np.ndarray:
        """The (offset, nbytes) pairs of a shard's records, checked: its CRC-32C, and every chunk it lists inside
        the object. A ShardError when the shard is missing, truncated or damaged."""
        if shard in self._indexes:
            return self._indexes[shard][0]
        got = self._fetch(shard, None)
        if got is None:
            raise self._error(shard, "the shard is missing (its object does not exist)")
        raw, size = got
        if size < self._index_bytes:
            raise self._error(shard, f"truncated: {size} bytes, fewer than its index ({self._index_bytes})")
        pairs = 16 * self.records_per_shard
        if self._index_crc and crc32c(raw[:pairs]) != int(np.frombuffer(raw[pairs:], "<u4")[0]):
            raise self._error(shard, "its index fails its CRC-32C check (the shard is truncated or damaged)")
        index = np.frombuffer(raw[:pairs], "<u8").reshape(self.records_per_shard, 2)
        end = size - self._index_bytes
        present = index[:, 0] != MISSING
        stops = index[present, 0] + index[present, 1]
        if len(stops) and (stops.max() > end or (index[present, 0] > end).any()):
            bad = int(np.flatnonzero(present)[np.argmax(stops)])
            raise self._error(shard, f"truncated: the chunk of its record {bad} ends at byte {int(stops.max())}, "
                                            f"past the end of its data ({end} bytes)")
        self._indexes[shard] = (index, end)
        return index

    def forget(self, shard: int) -> None:
        """Drop the cached index of a shard that was just rewritten."""
        self._indexes.pop(shard, None)

    def chunks(self, shard: int, count: int) -> list[bytes | None]:
        """The encoded inner chunks of the first ``count`` records of a shard (None: absent, the fill value)."""
        index = self.index(shard)
        present = np.flatnonzero(index[:count, 0] != MISSING)
        out: list[bytes | None] = [None] * count
        if len(present):
            starts, sizes = index[present, 0].astype(np.int64), index[present, 1].astype(np.int64)
            bufs = self._fetch(shard, list(zip(starts.tolist(), (starts + sizes).tolist())))
            if bufs is None:
                raise self._error(shard, "the shard is missing (its object does not exist)")
            for i, n, b in zip(present, sizes, bufs):
                if len(b) != n:
                    raise self._error(shard, f"truncated: the chunk of its record {i} is cut short")
                out[i] = bytes(b)
        return out

    def write(self, shard: int, chunks: list[bytes]) -> None:
        """Write a whole shard object from encoded inner chunks (one per record, in order), its index at the end.

        One object write, atomic on a local store (zarr writes a temporary file and renames it): a shard is
        either the old one or the new one, whenever the process dies.
        """
        if len(chunks) > self.records_per_shard:
            raise ValueError(f"a shard holds at most {self.records_per_shard} records, got {len(chunks)}")
        index = np.full((self.records_per_shard, 2), MISSING, "<u8")
        sizes = np.array([len(c) for c in chunks], np.uint64)
        index[: len(chunks), 1] = sizes
        index[: len(chunks), 0] = np.cumsum(sizes) - sizes
        raw = index.tobytes()
        tail = [np.uint32(crc32c(raw)).astype("<u4").tobytes()] if self._index_crc else []
        data = b"".join([*chunks, raw, *tail])
        self._sync(self._store.set(self.key(shard), self._proto.buffer.from_bytes(data)))
        self.forget(shard)

    def encode(self, records: np.ndarray) -> list[bytes]:
        """The inner chunks of ``records`` (B, L, T), encoded in the thread pool."""
        parts = [records[k :: self._threads] for k in range(self._threads)]
        encoded = [[]] * len(parts)

        def encode(k):
            encoded[k] = [self.codec.encode(r) for r in parts[k]]

        self._map(encode, range(len(parts)))
        return [encoded[i % self._threads][i // self._threads] for i in range(len(records))]

    # ---- reading records -------------------------------------------------------------------------------------
    def read_into(self, records: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """Decode ``records`` (sorted, unique) into ``out[rows]`` (zeros where the index marks a chunk absent)."""
        records_per_shard = self.records_per_shard
        jobs = []  # (shard, buffer, row)
        shards = records // records_per_shard
        for shard in np.unique(shards).tolist():
            sel = np.flatnonzero(shards == shard)
            local = records[sel] - shard * records_per_shard
            index = self.index(shard)
            present = index[local, 0] != MISSING
            out[rows[sel[~present]]] = 0
            if not present.any():
                continue
            sel, local = sel[present], local[present]
            starts, sizes = index[local, 0].astype(np.int64), index[local, 1].astype(np.int64)
            lo, hi = int(starts.min()), int((starts + sizes).max())
            if 2 * sizes.sum() >= hi - lo:  # dense (a block): one read of the span
                got = self._fetch(shard, [(lo, hi)])
                parts = None
                if got is not None and len(got[0]) == hi - lo:
                    view = memoryview(got[0])
                    parts = [view[s - lo : s - lo + n] for s, n in zip(starts, sizes)]
            else:
                parts = self._fetch(shard, list(zip(starts.tolist(), (starts + sizes).tolist())))
                if parts is not None and any(len(p) != n for p, n in zip(parts, sizes)):
                    parts = None
            if parts is None:
                self.forget(shard)
                raise self._error(shard, "truncated or removed while being read")
            jobs += [(shard, p, rows[i], int(r)) for p, i, r in zip(parts, sel, local)]

        def decode(part):
            for shard, buf, row, local in part:
                try:
                    self.codec.decode(buf, out[row])
                except ValueError as err:
                    raise self._error(shard, f"record {shard * records_per_shard + local}: {err}") from err

        self._map(decode, [jobs[k :: self._threads] for k in range(self._threads)])

    def check(self, shard: int, count: int) -> str | None:
        """What is wrong with the first ``count`` records of a shard (index, bounds, every chunk's CRC-32C and
        decoding), None when nothing is."""
        self.forget(shard)
        out = np.empty((count, *self.codec.shape[1:]), self.codec.dtype)
        try:
            self.read_into(np.arange(shard * self.records_per_shard, shard * self.records_per_shard + count), out,
                           np.arange(count))
        except ShardError as err:
            return err.problem
        finally:
            self.forget(shard)
        return None

    def _map(self, fn, parts) -> None:
        if self._pool is None:
            for p in parts:
                fn(p)
        else:
            list(self._pool.map(fn, parts))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def read_through_zarr(array, location: str, records: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
    """``out[rows] = array[records]`` through zarr-python, for layouts :class:`ShardIO` does not handle, one storage
    object (shard or chunk) at a time: a missing object is a ShardError (zarr would give the fill value), and any
    error of zarr's names the object."""
    from zarr.core.sync import sync

    per_object = int(array.shards[0]) if array.shards else int(array.chunks[0])
    meta, store = array.metadata, array.store
    objects = records // per_object
    for k in np.unique(objects).tolist():
        sel = np.flatnonzero(objects == k)
        key = f"{array.path}/{meta.encode_chunk_key((k,) + (0,) * (array.ndim - 1))}"
        root = getattr(store, "root", None)
        name = str(Path(root) / key) if root is not None else f"{location.rstrip('/')}/{key}"
        span = range(k * per_object, min((k + 1) * per_object, array.shape[0]))
        if not sync(store.exists(key)):
            raise ShardError(name, span, "the shard is missing (its object does not exist)")
        try:
            recs = records[sel]
            if recs[-1] - recs[0] + 1 == len(recs):
                out[rows[sel]] = array[int(recs[0]) : int(recs[-1]) + 1]
            else:
                out[rows[sel]] = array.oindex[recs]
        except Exception as err:  # noqa: BLE001 - zarr and its codecs raise many kinds for damaged bytes
            raise ShardError(name, span, f"zarr cannot read it ({type(err).__name__}: {err})") from err
