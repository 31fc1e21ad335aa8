"""ECGStore reads against an uncompressed NumPy memmap of the same records; the codecs a store can use (ratio,
encoding and decoding per core, block reads); how close reads come to the codec's own decoding speed; the cost of
the CRC-32C; and one table with every figure of issue 14's "Done when".

Data: the 50 real CinC records (12 leads, 500 Hz, 10 s), and the same records with 8 leads (I, II, V1-V6); for
reads they are tiled to 2,048 records in shards of 256. Rates are medians of interleaved rounds; "per CPU-s" counts
the CPU time of all the process's threads (the rate per core). Run with
``python -m pytest --benchmark benchmarks/bench_store.py -s`` (the last table: ``-k done_when``).
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from ratios import interleaved_rates, print_table

from ecgfast.ingest import ingest
from ecgfast.leads import LEADS8
from ecgfast.shards import ShardIO, crc32c
from ecgfast.store import CODECS, DEFAULT_CODEC, ECGStore

N = 2048
BATCH = 256
THREADS = len(os.sched_getaffinity(0))
# The codecs compared (name, level); the first is the default.
DEFAULT = (DEFAULT_CODEC, CODECS[DEFAULT_CODEC][0])
CANDIDATES = [DEFAULT, ("blosc-lz4hc", 3), ("blosc-lz4", 5), ("blosc-zstd", 1), ("blosc-zstd", 3), ("blosc-zstd", 5),
              ("pcodec", 8), ("pcodec", 12)]
READ_CODECS = [DEFAULT, ("blosc-lz4", 5), ("blosc-zstd", 3), ("pcodec", 8)]
READERS = {  # which Zarr v3 implementations open a store of each codec (sharding_indexed and crc32c included)
    "pcodec": "zarr-python + numcodecs + pcodec; zarrs (its pcodec feature)",
    "blosc": "zarr-python, zarrs, tensorstore, zarr-java (Zarr v3 core codecs)",
}


def _label(codec, level) -> str:
    return f"{codec} {level}"


@pytest.fixture(scope="module")
def cinc(data_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("cinc") / "cinc.zarr"
    ingest(data_dir / "cinc2021", dest, progress=False)
    return ECGStore.open(dest)


@pytest.fixture(scope="module")
def tiled(cinc, tmp_path_factory):
    """(codec, level) -> the CinC records tiled to N records in a store of that codec; and the .npy memmap."""
    folder = tmp_path_factory.mktemp("tiled")
    raw = cinc.read_block(0, len(cinc), raw=True)
    x = np.resize(raw, (N, *raw.shape[1:]))
    stores = {}
    for codec, level in READ_CODECS:
        path = folder / f"{codec}-{level}.zarr"
        with ECGStore.create(path, cinc.lead_names, cinc.fs, cinc.n_samples, codec=codec,
                             compression_level=level) as store:
            store.append(x, lengths=np.full(N, x.shape[2]), record_ids=[f"t/{i}" for i in range(N)],
                         patient_keys=[str(i) for i in range(N)], raw=True)
        stores[codec, level] = ECGStore.open(path)
    memmap = np.lib.format.open_memmap(folder / "tiled.npy", mode="w+", dtype=np.int16, shape=x.shape)
    memmap[:] = x
    memmap.flush()
    return stores, np.load(folder / "tiled.npy", mmap_mode="r")


def _blocks(store):
    return lambda: [store.read_block(s, s + BATCH, raw=True) for s in range(0, N, BATCH)]


def _memmap_blocks(memmap):
    return lambda: [np.array(memmap[s : s + BATCH]) for s in range(0, N, BATCH)]


def test_codec_table(cinc, tmp_path, benchmark):
    """Ratio, encoding and decoding (MB of int16 per CPU-second, one record per chunk, each record's CRC-32C
    included) of every candidate on the 12-lead and the 8-lead records."""
    x12 = cinc.read_block(0, len(cinc), raw=True)
    x8 = np.ascontiguousarray(x12[:, [cinc.lead_names.index(n) for n in LEADS8]])
    rows = {}
    for codec, level in CANDIDATES:
        for leads, x in (("12", x12), ("8", x8)):
            with ECGStore.create(tmp_path / f"{codec}{level}{leads}.zarr", LEADS8 if leads == "8" else cinc.lead_names,
                                 cinc.fs, cinc.n_samples, codec=codec, compression_level=level) as store:
                chunk_codec = store.record_codec()
            encoded = [chunk_codec.encode(r[None]) for r in x]
            out = np.empty((1, *x.shape[1:]), np.int16)
            rates = interleaved_rates({"encode": lambda: [chunk_codec.encode(r[None]) for r in x],
                                       "decode": lambda: [chunk_codec.decode(e, out) for e in encoded]},
                                      x.nbytes / 1e6, rounds=3, min_seconds=0.2)
            rows[_label(codec, level), leads] = (x.nbytes / sum(map(len, encoded)), rates["encode"].cpu,
                                                  rates["decode"].cpu)
    print(f"\ncodecs on the {len(x12)} CinC records (lossless, one record per chunk, CRC-32C included; MB of int16 "
          f"per CPU-second; load {os.getloadavg()[0]:.1f})")
    print(f"{'codec':<16} {'leads':>5} {'ratio':>6} {'encode':>7} {'decode':>7}  opened by")
    for (name, leads), (ratio, enc, dec) in rows.items():
        readers = READERS["pcodec" if name.startswith("pcodec") else "blosc"]
        print(f"{name:<16} {leads:>5} {ratio:>5.2f}x {enc:>7.0f} {dec:>7.0f}  {readers}")
    benchmark.extra_info.update({f"{name} {leads}-lead": row for (name, leads), row in rows.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert rows[_label(*DEFAULT), "12"][0] >= 2.0 and rows["pcodec 8", "12"][0] >= 3.0  # floors for regressions


def test_block_reads_by_codec(tiled, benchmark):
    """Contiguous blocks of 256 (``read_block(raw=True)``, the store's default threads) of each codec's store
    against the memmap: the first criterion of the codec choice (at least 0.3x)."""
    stores, memmap = tiled
    cases = {"memmap int16": _memmap_blocks(memmap)}
    cases.update({_label(*key): _blocks(store) for key, store in stores.items()})
    rates = interleaved_rates(cases, N)
    print_table(f"contiguous blocks of {BATCH}, {N} CinC records (12 x 5000), {THREADS} threads, load "
                f"{os.getloadavg()[0]:.1f}", rates, "memmap int16")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


@pytest.mark.parametrize("codec", [DEFAULT, ("pcodec", 8)], ids=lambda c: _label(*c).replace(" ", "-"))
def test_reads_at_the_codecs_speed(tiled, codec, benchmark):
    """Block and random reads of a store per CPU-second against its codec decoding the same records one after
    another into one record's buffer: target at least 0.85x; and with 2 threads, CPU-seconds over wall at least 1.7
    at a rate per CPU-second within 10% of one thread's (on 2 idle cores)."""
    stores, _ = tiled
    path = stores[codec].location
    one, two = ECGStore.open(path, threads=1), ECGStore.open(path, threads=2)
    chunk_codec = one.record_codec()
    chunks = [c for k in range(N // BATCH) for c in one._reader.chunks(k, BATCH)]
    record = np.empty((1, 12, one.n_samples), np.int16)
    buffer = np.empty((BATCH, 12, one.n_samples), np.int16)
    rng = np.random.default_rng(0)
    batches = [rng.choice(N, BATCH, replace=False) for _ in range(N // BATCH)]
    cases = {
        "codec alone, one record's buffer": lambda: [chunk_codec.decode(c, record) for c in chunks],
        "read_block, 1 thread": _blocks(one),
        "read_block, 2 threads": _blocks(two),
        "read_block(out=), 1 thread": lambda: [one.read_block(s, s + BATCH, raw=True, out=buffer)
                                               for s in range(0, N, BATCH)],
        "read_block(out=), 2 threads": lambda: [two.read_block(s, s + BATCH, raw=True, out=buffer)
                                                for s in range(0, N, BATCH)],
        "read(random 256), 2 threads": lambda: [two.read(b, raw=True) for b in batches],
        "read(random 256, out=), 2 threads": lambda: [two.read(b, raw=True, out=buffer) for b in batches],
    }
    rates = interleaved_rates(cases, N)
    print_table(f"{_label(*codec)}: decoding alone vs reads, {N} records, load {os.getloadavg()[0]:.1f}", rates,
                "codec alone, one record's buffer")
    for name in ("read_block", "read_block(out=)"):
        r1, r2 = rates[f"{name}, 1 thread"], rates[f"{name}, 2 threads"]
        print(f"{name}: 2 threads use {r2.wall / r2.cpu:.2f} CPU-s per wall second, at {r2.cpu / r1.cpu:.2f}x one "
              f"thread's rate per CPU-s")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    # A floor for regressions (e.g. a copy more per record); the 0.85x target is read from the table.
    assert rates["read_block(out=), 1 thread"].cpu >= 0.6 * rates["codec alone, one record's buffer"].cpu


def test_done_when(cinc, tiled, data_dir, tmp_path, benchmark):
    """Issue 14's figures in one run: block reads of the default codec against the memmap (target 0.3x on 2 idle
    cores), its compression of the 12-lead CinC records (3.0x, or the stated trade), the global-shuffle loader
    against the block-mode loader (0.5x, bench_loader.py's 8-lead setup). Asserted: floors per CPU-second that a
    loaded machine still shows (block reads 0.15x the memmap per CPU-s: 0.3x with 2 cores)."""
    from bench_loader import loader_rates

    stores, memmap = tiled
    store = stores[DEFAULT]
    reads = interleaved_rates({"memmap": _memmap_blocks(memmap), "store": _blocks(store),
                               "pcodec": _blocks(stores["pcodec", 8])}, N)
    files = [f for f in Path(cinc.location, "signals").rglob("*") if f.is_file()]
    ratio = len(cinc) * len(cinc.lead_names) * cinc.n_samples * 2 / sum(f.stat().st_size for f in files)
    loaders = loader_rates(data_dir, tmp_path, ["ECGStore, block mode", "ECGStore, global shuffle"], rounds=3)
    block, shuffle = loaders["ECGStore, block mode"], loaders["ECGStore, global shuffle"]
    rows = [
        (f"block reads of 256, {_label(*DEFAULT)} store vs memmap (records/s)", reads["store"].wall,
         reads["memmap"].wall, 0.3),
        (f"compression of the 50 CinC records, 12 leads, {_label(*DEFAULT)} (x)", ratio, 1.0, 3.0),
        ("the alternative (3.3x): block reads of 256, pcodec 8 store vs memmap (records/s)", reads["pcodec"].wall,
         reads["memmap"].wall, 0.3),
        ("loader, global shuffle vs block mode (ECGs/s)", shuffle.wall, block.wall, 0.5),
    ]
    print(f"\nissue 14, done when (one run, {THREADS} cores, load {os.getloadavg()[0]:.1f})")
    print(f"{'figure':<72} {'value':>9} {'baseline':>9} {'ratio':>6} {'target':>6}")
    for name, value, base, target in rows:
        got = value / base
        print(f"{name:<72} {value:>9,.2f} {base:>9,.2f} {got:>5.2f}x {target:>5.2f}x  "
              f"{'met' if got >= target else 'MISSED'}")
    print(f"(per CPU-s: block reads {reads['store'].cpu:,.0f}, pcodec {reads['pcodec'].cpu:,.0f}, memmap "
          f"{reads['memmap'].cpu:,.0f}; loaders {shuffle.cpu:,.0f} vs {block.cpu:,.0f} ECGs/CPU-s. Compression: the "
          f"trade the README states, block reads first)")
    benchmark.extra_info.update({name: [value, base] for name, value, base, _ in rows})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert reads["store"].cpu >= 0.15 * reads["memmap"].cpu and ratio >= 2.0 and shuffle.wall >= 0.5 * block.wall


def test_crc32c_read_cost(tiled, benchmark):
    """Block reads of the same records with a CRC-32C per inner chunk (verified on every read, new stores) and
    without (stores written before): the price of never returning damaged bytes."""
    stores, _ = tiled
    store = stores["blosc-zstd", 3]
    plain = Path(store.location).with_name("no_crc.zarr")
    shutil.copytree(store.location, plain)
    group = zarr.open_group(str(plain), mode="r+")
    shape = group["signals"].shape
    del group["signals"]
    from zarr.codecs import BloscCodec

    array = group.create_array("signals", shape=shape, dtype="int16", chunks=(1, *shape[1:]),
                               shards=(BATCH, *shape[1:]), fill_value=0,
                               compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    io = ShardIO.for_array(array, str(plain), threads=2)
    x = store.read_block(0, N, raw=True)
    for k in range(N // BATCH):
        io.write(k, io.encode(x[k * BATCH : (k + 1) * BATCH]))
    without = ECGStore.open(plain)
    assert store.record_codec().checksum and not without.record_codec().checksum
    np.testing.assert_array_equal(without.read_block(0, N, raw=True), x)
    cases = {
        "read_block raw, no CRC (before)": _blocks(without),
        "read_block raw, CRC-32C verified": _blocks(store),
    }
    rates = interleaved_rates(cases, N)
    print_table(f"contiguous blocks of {BATCH}, {N} CinC records, Blosc zstd 3: the CRC-32C check", rates,
                "read_block raw, no CRC (before)")
    chunks = io.encode(x[:BATCH])
    crc = interleaved_rates({"crc32c": lambda: [crc32c(c) for c in chunks]}, sum(map(len, chunks)) // 10**6)
    print(f"CRC-32C alone over the compressed chunks: {crc['crc32c'].cpu:,.0f} MB per CPU-s")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.extra_info["crc32c_MB_per_cpu_s"] = crc["crc32c"].cpu
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
