"""Byte-level I/O of a sharded Zarr v3 array whose inner chunks are single records (the store's ``signals``).

A shard object holds ``records_per_shard`` consecutive records, each one inner chunk encoded by the array's Zarr v3
codecs, then the shard index: (offset, nbytes) uint64 pairs, one per record, and its CRC-32C. This module reads
and writes those objects itself, because zarr-python's per-chunk machinery costs milliseconds per record
(zarr-python #3829): a read is split over the decoding threads, each fetching its records' bytes and decoding them
into the caller's buffer (on an object store, every request of a read goes out at once first); writes put a whole
shard in one object write.

Any Zarr v3 codec chain serves (:class:`ChunkCodec`): the store's own (``numcodecs.pcodec`` or ``bytes``, then
``blosc``, ``zstd``, ``gzip``, ``crc32c``) are decoded by pcodec and numcodecs straight into the caller's buffer,
any other registered codec through zarr's own codec pipeline. A ``crc32c`` codec is verified on every read.

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
_MAX_GAP = 256 * 1024  # bytes between two chunks of a shard that an object store's read fetches in one request
_SERIALIZERS = {"bytes", "numcodecs.pcodec"}  # array -> bytes codecs decoded here without zarr's pipeline
_BYTES_CODECS = {"blosc", "zstd", "gzip", "crc32c"}  # bytes -> bytes codecs decoded here


class ShardError(ValueError):
    """A shard of ``signals`` that cannot give the records asked for: ``shard`` names its object (a path or URL),
    ``records`` the store indices it holds, ``problem`` what is wrong."""

    def __init__(self, shard: str, records: range, problem: str):
        what = f"records {records.start}-{records.stop - 1}" if len(records) > 1 else f"record {records.start}"
        super().__init__(f"shard {shard} ({what}): {problem}")
        self.shard, self.records, self.problem = shard, records, problem


try:  # zarr 3.1 depends on google_crc32c, other zarr 3 releases on crc32c
    from google_crc32c import value as _crc32c_value
except ImportError:  # pragma: no cover - the other zarr releases
    from crc32c import crc32c as _crc32c_value


def crc32c(data) -> int:
    """CRC-32C of ``data`` (bytes, or any buffer) as the Zarr v3 ``crc32c`` codec computes it, hardware-accelerated
    where the CPU has it."""
    if not isinstance(data, bytes):  # google_crc32c takes bytes and arrays, not memoryviews (no copy either way)
        data = np.frombuffer(data, np.uint8)
    return _crc32c_value(data)


def _strip_crc32c(data):
    """The bytes before a trailing CRC-32C, checked (a memoryview, no copy)."""
    view = memoryview(data)
    if len(view) < 4:
        raise ValueError(f"the inner chunk has {len(view)} bytes, too few for its CRC-32C")
    body = view[:-4]
    if crc32c(body) != int.from_bytes(view[-4:], "little"):
        raise ValueError("the inner chunk fails its CRC-32C check (its bytes are damaged)")
    return body


class ChunkCodec:
    """One record (L, T) <-> one encoded inner chunk, by the array's Zarr v3 inner codecs (their JSON form).

    The store's codecs (``bytes`` or ``numcodecs.pcodec``, then any of ``blosc``, ``zstd``, ``gzip``, ``crc32c``)
    are run here straight into the caller's buffer, with as little per-record work as the codec allows: a block
    read costs the codec's own decoding and a CRC-32C. Any other chain goes through zarr's codec pipeline.
    Picklable: ingest's worker processes encode with it.
    """

    def __init__(self, codecs: list[dict], shape: tuple[int, ...], dtype: str = "int16"):
        self.codecs = [dict(c) for c in codecs]
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        names = [c["name"] for c in self.codecs]
        self.checksum = "crc32c" in names
        self._fast = bool(names) and names[0] in _SERIALIZERS and all(n in _BYTES_CODECS for n in names[1:])
        self._steps = None  # built on first use: numcodecs objects, or zarr's pipeline for other codecs

    def __getstate__(self):
        return {**self.__dict__, "_steps": None}

    def _build(self):
        if self._fast:
            self._steps = _FastSteps(self.codecs, self.dtype)
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
        if self._fast:
            return steps.encode(record)
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        pipeline, spec = steps
        nd = default_buffer_prototype().nd_buffer.from_numpy_array(record)
        (buf,) = sync(pipeline.encode([(nd, spec)]))
        return buf.to_bytes()

    def decode(self, buf, out: np.ndarray) -> None:
        """Decode an inner chunk into ``out`` (C-contiguous, ``prod(self.shape)`` items of the array's dtype, any
        shape); a ValueError saying what failed."""
        steps = self._steps or self._build()
        if self._fast:
            steps.decode(buf, out)
            return
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        pipeline, spec = steps
        try:
            (nd,) = sync(pipeline.decode([(default_buffer_prototype().buffer.from_bytes(bytes(buf)), spec)]))
        except Exception as err:  # noqa: BLE001 - any codec's complaint means the chunk is damaged
            raise ValueError(f"the inner chunk does not decode ({type(err).__name__}: {err})") from err
        out[...] = nd.as_numpy_array().reshape(out.shape)


class _FastSteps:
    """The codecs of a :class:`ChunkCodec` run by numcodecs and pcodec directly (no zarr objects per record)."""

    def __init__(self, codecs: list[dict], dtype: np.dtype):
        import numcodecs

        first, cfg = codecs[0]["name"], dict(codecs[0].get("configuration") or {})
        self.dtype = dtype
        self.pcodec = None
        if first == "numcodecs.pcodec":
            from numcodecs.pcodec import PCodec
            from pcodec import standalone

            self.pcodec, self._pcodec_into = PCodec(**cfg), standalone.simple_decompress_into
        else:
            endian = cfg.get("endian", sys.byteorder)
            self.stored = dtype.newbyteorder("<" if endian == "little" else ">")
            self.native = self.stored == dtype.newbyteorder("=") or dtype.itemsize == 1
        self.chain = []  # (name, numcodecs object or None) in encoding order
        for c in codecs[1:]:
            cfg = dict(c.get("configuration") or {})
            if c["name"] == "blosc":
                shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[cfg.get("shuffle", "noshuffle")]
                # The item size for shuffling comes from the array it is given (a Blosc frame says how it was made,
                # so decoding needs no more).
                codec = numcodecs.Blosc(cname=cfg.get("cname", "zstd"), clevel=cfg.get("clevel", 5), shuffle=shuffle,
                                        blocksize=cfg.get("blocksize", 0))
            elif c["name"] == "zstd":
                codec = numcodecs.Zstd(level=cfg.get("level", 0), checksum=cfg.get("checksum", False))
            elif c["name"] == "gzip":
                codec = numcodecs.GZip(level=cfg.get("level", 5))
            else:
                codec = None  # crc32c
            self.chain.append((c["name"], codec))
        # pcodec reads bytes objects only, and stops at its own end: when a CRC-32C is all that follows it, the
        # chunk itself goes to pcodec (the CRC-32C left on), which spares a copy of every record.
        self.crc_only = [name for name, _ in self.chain] == ["crc32c"]

    def encode(self, record: np.ndarray) -> bytes:
        if self.pcodec is not None:
            data = self.pcodec.encode(np.ascontiguousarray(record))
        else:
            data = np.ascontiguousarray(record, self.stored)
        for name, codec in self.chain:
            if codec is None:
                raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
                data = raw + crc32c(raw).to_bytes(4, "little")
            else:
                data = codec.encode(data)  # blosc takes the array itself, so that it shuffles by the item size
        return data.tobytes() if isinstance(data, np.ndarray) else bytes(data)

    def decode(self, buf, out: np.ndarray) -> None:
        flat = out.reshape(-1)
        data = buf
        for k in range(len(self.chain) - 1, -1, -1):
            name, codec = self.chain[k]
            if codec is None:
                data = _strip_crc32c(data)
                continue
            direct = k == 0 and self.pcodec is None and self.native  # the last step writes into out itself
            if direct and name == "blosc":  # the size first: a frame of another size must not fill part of out
                nbytes = int.from_bytes(data[4:8], "little")  # a Blosc frame's header: uncompressed size at 4-8
                if nbytes != out.nbytes:
                    raise ValueError(f"the inner chunk decodes to {nbytes} bytes, not {out.nbytes}")
            try:
                data = codec.decode(data, out=flat.view(np.uint8) if direct else None)
            except Exception as err:  # noqa: BLE001 - a codec rejects damaged bytes in its own way
                raise ValueError(f"the inner chunk does not decode ({type(err).__name__}: {err})") from err
        if self.pcodec is not None:
            self._pcodec_decode(buf if self.crc_only else data, flat)
            return
        if isinstance(data, np.ndarray) and np.shares_memory(data, out):
            return
        values = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        if values.nbytes != out.nbytes:
            raise ValueError(f"the inner chunk decodes to {values.nbytes} bytes, not {out.nbytes}")
        flat[...] = values.view(self.stored)

    def _pcodec_decode(self, data, flat: np.ndarray) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)
        try:
            progress = self._pcodec_into(data, flat)
        except Exception as err:  # noqa: BLE001 - pcodec raises RuntimeError for damaged bytes
            raise ValueError(f"the inner chunk does not decode ({type(err).__name__}: {err})") from err
        if progress.n_processed != flat.size or not progress.finished:
            raise ValueError(f"the inner chunk decodes to {progress.n_processed} values, not {flat.size}")


class ShardIO:
    """Reads and writes the shard objects of a sharded Zarr v3 array of records (one inner chunk per record).

    Reads go as fast as the codec decodes: the records are split into ``threads`` contiguous parts, each fetched
    and decoded by one thread straight into the caller's array. On a local store each thread reads its records'
    bytes itself (``pread``); on any other store (fsspec: ``s3://``, ``memory://``...) every request of a read goes
    out at once, across all its shards (the index of a shard not read before, one suffix request; then one request
    per run of chunks less than 256 KiB apart: one per shard for a block), and the threads then decode.

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
        # shard -> (index, end of its data region: None where the store does not say an object's size cheaply)
        self._indexes: dict[int, tuple[np.ndarray, int | None]] = {}
        self._root = getattr(self._store, "root", None)  # LocalStore: read files directly with pread
        self._threads = max(1, int(threads))
        # Always a pool, even of one: every decode then runs off the caller's thread, so that numcodecs' Blosc
        # never switches to its global, internally threaded context (it does on the main thread).
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="ecgfast-decode")

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
    def _tails(self, shards: list[int]) -> list[tuple[bytes, int | None] | None]:
        """Each shard's last index bytes and its object's size (None where only a local file says it without a
        request of its own); None for a shard whose object does not exist. Remote shards are asked at once."""
        if self._root is not None:
            got = []
            for shard in shards:
                try:
                    fd = os.open(Path(self._root) / self.key(shard), os.O_RDONLY)
                except FileNotFoundError:
                    got.append(None)
                    continue
                try:
                    size = os.fstat(fd).st_size
                    n = min(size, self._index_bytes)
                    got.append((os.pread(fd, n, size - n), size))
                finally:
                    os.close(fd)
            return got
        # One suffix request per shard: its size would cost a request more (a HEAD on S3).
        bufs = self._gather([(self.key(k), self._suffix(self._index_bytes)) for k in shards])
        return [None if b is None else (b, None) for b in bufs]

    def _gather(self, requests: list[tuple[str, object]]) -> list[bytes | None]:
        """The bytes of every (key, byte request) of a non-local store, all asked at once (None: no object)."""

        async def get_all():
            return await asyncio.gather(*(self._store.get(key, self._proto, r) for key, r in requests))

        return [None if b is None else b.to_bytes() for b in self._sync(get_all())] if requests else []

    def _load_indexes(self, shards: list[int]) -> None:
        """Read and check the indexes of ``shards`` not read before: its CRC-32C, and every chunk it lists inside
        the object. A ShardError when a shard is missing, truncated or damaged."""
        todo = [k for k in shards if k not in self._indexes]
        pairs = 16 * self.records_per_shard
        for shard, got in zip(todo, self._tails(todo)):
            if got is None:
                raise self._error(shard, "the shard is missing (its object does not exist)")
            raw, size = got
            if len(raw) < self._index_bytes:
                raise self._error(shard, f"truncated: {len(raw)} bytes, fewer than its index ({self._index_bytes})")
            if self._index_crc and crc32c(raw[:pairs]) != int.from_bytes(raw[pairs:], "little"):
                raise self._error(shard, "its index fails its CRC-32C check (the shard is truncated or damaged)")
            index = np.frombuffer(raw[:pairs], "<u8").reshape(self.records_per_shard, 2)
            end = None if size is None else size - self._index_bytes
            present = index[:, 0] != MISSING
            stops = index[present, 0] + index[present, 1]
            if end is not None and len(stops) and (stops.max() > end or (index[present, 0] > end).any()):
                bad = int(np.flatnonzero(present)[np.argmax(stops)])
                raise self._error(shard, f"truncated: the chunk of its record {bad} ends at byte {int(stops.max())}, "
                                         f"past the end of its data ({end} bytes)")
            self._indexes[shard] = (index, end)

    def index(self, shard: int) -> np.ndarray:
        """The (offset, nbytes) pairs of a shard's records, checked (see :meth:`_load_indexes`)."""
        self._load_indexes([shard])
        return self._indexes[shard][0]

    def forget(self, shard: int) -> None:
        """Drop the cached index of a shard that was just rewritten."""
        self._indexes.pop(shard, None)

    def _fetch_remote(self, runs: list[tuple[int, np.ndarray, np.ndarray]]) -> list[list]:
        """The chunks of each run (shard, starts, sizes) of a non-local store, every request of every shard at
        once. Chunks less than ``_MAX_GAP`` bytes apart share one request (a block: one per shard): a request
        costs an object store far more than that many bytes more."""
        requests, plan = [], []
        for shard, starts, sizes in runs:
            order = np.argsort(starts, kind="stable")
            stops = starts + sizes
            spans = []  # (start, stop) of each request, over the chunks in offset order
            for j in order.tolist():
                if spans and starts[j] - spans[-1][1] <= _MAX_GAP:
                    spans[-1][1] = max(spans[-1][1], int(stops[j]))
                else:
                    spans.append([int(starts[j]), int(stops[j])])
            plan.append((len(requests), spans))
            requests += [(self.key(shard), self._range(a, b)) for a, b in spans]
        got = self._gather(requests)
        out = []
        for (shard, starts, sizes), (first, spans) in zip(runs, plan):
            bufs = got[first : first + len(spans)]
            if any(b is None or len(b) != stop - start for b, (start, stop) in zip(bufs, spans)):
                self.forget(shard)
                raise self._error(shard, "truncated or removed while being read")
            span_starts = np.array([a for a, _ in spans], np.int64)
            which = np.searchsorted(span_starts, starts, side="right") - 1  # the request that holds each chunk
            chunks = []
            for w, start, n in zip(which.tolist(), starts.tolist(), sizes.tolist()):
                a, b = spans[w]  # a request of this chunk alone gives its bytes object itself (pcodec wants one)
                chunks.append(bufs[w] if (a, b) == (start, start + n) else memoryview(bufs[w])[start - a : start - a + n])
            out.append(chunks)
        return out

    def _read_local(self, shard: int, starts: np.ndarray, sizes: np.ndarray) -> list[bytes]:
        """The chunks (starts, sizes) of a local shard, one ``pread`` each: no copy beyond the kernel's."""
        try:
            fd = os.open(Path(self._root) / self.key(shard), os.O_RDONLY)
        except FileNotFoundError:
            self.forget(shard)
            raise self._error(shard, "truncated or removed while being read") from None
        try:
            bufs = [os.pread(fd, n, s) for s, n in zip(starts.tolist(), sizes.tolist())]
        finally:
            os.close(fd)
        if any(len(b) != n for b, n in zip(bufs, sizes.tolist())):
            self.forget(shard)
            raise self._error(shard, "truncated or removed while being read")
        return bufs

    def chunks(self, shard: int, count: int) -> list[bytes | None]:
        """The encoded inner chunks of the first ``count`` records of a shard (None: absent, the fill value)."""
        index = self.index(shard)
        present = np.flatnonzero(index[:count, 0] != MISSING)
        out: list[bytes | None] = [None] * count
        if len(present):
            starts, sizes = index[present, 0].astype(np.int64), index[present, 1].astype(np.int64)
            if self._root is not None:
                bufs = self._read_local(shard, starts, sizes)
            else:
                bufs = self._fetch_remote([(shard, starts, sizes)])[0]
            for i, b in zip(present.tolist(), bufs):
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
        tail = [crc32c(raw).to_bytes(4, "little")] if self._index_crc else []
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
        """Decode ``records`` (sorted, unique) into ``out[rows]`` (zeros where the index marks a chunk absent).

        ``out`` is C-contiguous (B, L, T) of the array's dtype.
        """
        if not len(records):
            return
        records_per_shard = self.records_per_shard
        shards = records // records_per_shard
        bounds = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1], True])
        self._load_indexes(shards[bounds[:-1]].tolist())
        flat = out.reshape(len(out), -1)
        runs = []  # (shard, its records in the shard, their rows in out, starts, sizes): present chunks only
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            shard = int(shards[a])
            local = records[a:b] - shard * records_per_shard
            index = self._indexes[shard][0]
            present = index[local, 0] != MISSING
            if not present.all():
                flat[rows[a:b][~present]] = 0
            if present.any():
                runs.append((shard, local[present], rows[a:b][present], index[local[present], 0].astype(np.int64),
                             index[local[present], 1].astype(np.int64)))
        fetched = None if self._root is not None else self._fetch_remote([(k, s, n) for k, _, _, s, n in runs])

        def decode(part):
            for j, lo, hi in part:  # records lo:hi of run j
                shard, local, where, starts, sizes = runs[j]
                if fetched is None:
                    bufs = self._read_local(shard, starts[lo:hi], sizes[lo:hi])
                else:
                    bufs = fetched[j][lo:hi]
                for buf, row, r in zip(bufs, where[lo:hi].tolist(), local[lo:hi].tolist()):
                    try:
                        self.codec.decode(buf, flat[row])
                    except ValueError as err:
                        raise self._error(shard, f"record {shard * records_per_shard + r}: {err}") from err

        self._map(decode, _split([len(run[1]) for run in runs], self._threads))

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
        parts = list(parts)
        if len(parts) == 1:
            self._pool.submit(fn, parts[0]).result()
        else:
            list(self._pool.map(fn, parts))

    def close(self) -> None:
        self._pool.shutdown()


def _split(counts: list[int], parts: int) -> list[list[tuple[int, int, int]]]:
    """``parts`` contiguous slices of equal size (within one record) over runs of ``counts`` records: each a list
    of (run, start, stop) within the runs."""
    total = sum(counts)
    cuts = [total * p // parts for p in range(parts + 1)]
    out, run, offset = [], 0, 0  # offset: records before run
    for p in range(parts):
        lo, hi, part = cuts[p], cuts[p + 1], []
        while run < len(counts) and lo < hi:
            a, b = lo - offset, min(hi, offset + counts[run]) - offset
            if b > a:
                part.append((run, a, b))
            lo = offset + b
            if lo >= offset + counts[run]:
                offset += counts[run]
                run += 1
        if part:
            out.append(part)
    return out or [[]]


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
