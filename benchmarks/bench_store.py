"""ECGStore reads against an uncompressed NumPy memmap of the same records, the compression ratio, and the cost of
verifying every record's CRC-32C.

The 50 real CinC records (12 leads, 500 Hz, 10 s) tiled to 2,048 records in shards of 256. Targets: contiguous
block reads at least 0.3x the memmap; at least 2.5x lossless compression. Run with ``pytest --benchmark -s``.
"""

from pathlib import Path

import numpy as np
import pytest
import zarr
from ratios import interleaved_rates, print_table

from ecgfast.ingest import ingest
from ecgfast.shards import ShardIO, crc32c
from ecgfast.store import ECGStore

N = 2048
BATCH = 256


@pytest.fixture(scope="module")
def cinc(data_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("cinc") / "cinc.zarr"
    ingest(data_dir / "cinc2021", dest, progress=False)
    return ECGStore.open(dest)


@pytest.fixture(scope="module")
def tiled(cinc, tmp_path_factory):
    """The CinC records tiled to N records, as a store and as an .npy memmap."""
    folder = tmp_path_factory.mktemp("tiled")
    raw = cinc.read_block(0, len(cinc), raw=True)
    x = np.concatenate([raw] * (N // len(raw) + 1))[:N]
    with ECGStore.create(folder / "tiled.zarr", cinc.lead_names, cinc.fs, cinc.n_samples) as store:
        store.append(x, lengths=np.full(N, x.shape[2]), record_ids=[f"t/{i}" for i in range(N)],
                     patient_keys=[str(i) for i in range(N)], raw=True)
    memmap = np.lib.format.open_memmap(folder / "tiled.npy", mode="w+", dtype=np.int16, shape=x.shape)
    memmap[:] = x
    memmap.flush()
    return ECGStore.open(folder / "tiled.zarr"), np.load(folder / "tiled.npy", mmap_mode="r")


def test_compression_ratio_on_cinc(cinc, benchmark):
    files = [f for f in Path(cinc.location, "signals").rglob("*") if f.is_file()]
    ratio = len(cinc) * len(cinc.lead_names) * cinc.n_samples * 2 / sum(f.stat().st_size for f in files)
    benchmark.extra_info["compression_ratio"] = ratio
    benchmark.pedantic(lambda: cinc.read_block(0, len(cinc), raw=True), rounds=3, iterations=1)
    print(f"\ncompression on the 50 CinC records (12 leads, Blosc zstd 3 + shuffle, lossless): {ratio:.2f}x")
    assert ratio >= 2.5


def test_contiguous_block_reads(tiled, benchmark):
    store, memmap = tiled
    scale = np.float32(store.gain_uv / 1000)
    blocks = range(0, N, BATCH)
    plain = zarr.open_group(store.location, mode="r")["signals"]
    cases = {
        "memmap int16": lambda: [np.array(memmap[s : s + BATCH]) for s in blocks],
        "store raw int16": lambda: [store.read_block(s, s + BATCH, raw=True) for s in blocks],
        "memmap float32 mV": lambda: [memmap[s : s + BATCH] * scale for s in blocks],
        "store float32 mV": lambda: [store.read_block(s, s + BATCH) for s in blocks],
        "zarr-python slicing int16": lambda: [plain[s : s + BATCH] for s in blocks],
    }
    rates = interleaved_rates(cases, N)
    print_table(f"contiguous blocks of {BATCH}, {N} CinC records (12 x 5000)", rates, "memmap int16")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(cases["store raw int16"], rounds=3, iterations=1)
    assert rates["store raw int16"].wall >= 0.3 * rates["memmap int16"].wall


def test_random_batches(tiled, benchmark):
    store, memmap = tiled
    scale = np.float32(store.gain_uv / 1000)
    rng = np.random.default_rng(0)
    batches = [rng.choice(N, BATCH, replace=False) for _ in range(8)]
    cases = {
        "memmap float32 mV": lambda: [memmap[np.sort(b)] * scale for b in batches],
        "store float32 mV": lambda: [store.read(b) for b in batches],
    }
    rates = interleaved_rates(cases, BATCH * len(batches))
    print_table(f"random batches of {BATCH} out of {N} records", rates, "memmap float32 mV")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(cases["store float32 mV"], rounds=3, iterations=1)
    # No target in the issue; this floor catches a fall back to zarr-python's fancy indexing (~0.01x).
    assert rates["store float32 mV"].wall >= 0.05 * rates["memmap float32 mV"].wall


def test_codec_choice(cinc, benchmark):
    """The trade-off behind the default (Blosc zstd level 3 + byte shuffle): ratio against encode and decode speed
    per CPU-second, one record per chunk as in the store. Level 2, the next faster zstd level, misses 2.5x."""
    from numcodecs import Blosc

    x = cinc.read_block(0, len(cinc), raw=True)
    candidates = {f"zstd {level}": Blosc("zstd", level, Blosc.SHUFFLE) for level in (1, 2, 3, 5)}
    candidates["lz4 5"] = Blosc("lz4", 5, Blosc.SHUFFLE)
    print(f"\nBlosc codecs on the {len(x)} CinC records (byte shuffle; MB/s per CPU-second of int16)")
    ratios = {}
    for name, codec in candidates.items():
        encoded = [codec.encode(r) for r in x]
        out = np.empty_like(x[0])
        rates = interleaved_rates({"encode": lambda: [codec.encode(r) for r in x],
                                   "decode": lambda: [codec.decode(e, out=out) for e in encoded]},
                                  x.nbytes // 10**6, rounds=3, min_seconds=0.2)
        ratios[name] = x.nbytes / sum(len(e) for e in encoded)
        print(f"{name:<8} ratio {ratios[name]:.2f}x  encode {rates['encode'].cpu:6.0f}  decode {rates['decode'].cpu:6.0f}")
    benchmark.extra_info.update(ratios)
    benchmark.pedantic(lambda: [candidates["zstd 3"].encode(r) for r in x], rounds=1, iterations=1)
    assert ratios["zstd 3"] >= 2.5 > ratios["zstd 2"]


def test_crc32c_read_cost(tiled, benchmark):
    """Block reads of the same records with a CRC-32C per inner chunk (verified on every read, new stores) and
    without (stores written before): the price of never returning damaged bytes."""
    import shutil

    from zarr.codecs import BloscCodec

    store, _ = tiled
    plain = Path(store.location).with_name("no_crc.zarr")
    shutil.copytree(store.location, plain)
    group = zarr.open_group(str(plain), mode="r+")
    shape = group["signals"].shape
    del group["signals"]
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
    blocks = range(0, N, BATCH)
    cases = {
        "read_block raw, no CRC (before)": lambda: [without.read_block(s, s + BATCH, raw=True) for s in blocks],
        "read_block raw, CRC-32C verified": lambda: [store.read_block(s, s + BATCH, raw=True) for s in blocks],
    }
    rates = interleaved_rates(cases, N)
    print_table(f"contiguous blocks of {BATCH}, {N} CinC records: the CRC-32C check", rates,
                "read_block raw, no CRC (before)")
    chunks = io.encode(x[:BATCH])
    crc = interleaved_rates({"crc32c": lambda: [crc32c(c) for c in chunks]}, sum(map(len, chunks)) // 10**6)
    print(f"CRC-32C alone over the compressed chunks: {crc['crc32c'].cpu:,.0f} MB per CPU-s")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.extra_info["crc32c_MB_per_cpu_s"] = crc["crc32c"].cpu
    benchmark.pedantic(cases["read_block raw, CRC-32C verified"], rounds=3, iterations=1)
