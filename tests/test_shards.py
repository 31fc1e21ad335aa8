"""ecgfast.shards: any Zarr v3 codec chain, CRC-32C on every read, and damaged shards (missing, truncated, a flipped
byte, an unreadable index) as errors naming the shard on every read path, found by ``ECGStore.verify``."""

import shutil

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

from ecgfast.leads import LEADS8
from ecgfast.shards import ChunkCodec, ShardError, ShardIO
from ecgfast.store import ECGStore

T, N, SHARD = 200, 10, 4  # records 0-3, 4-7, 8-9: shard 1 is the one damaged below


def _records(n, leads=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-3000, 3000, (n, leads, T)).astype(np.int16)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A store of 10 records in shards of 4; record 6 is padded after 150 samples (its tail reads as zeros)."""
    x = _records(N)
    x[6, :, 150:] = 0
    path = tmp_path_factory.mktemp("shards") / "good.zarr"
    with ECGStore.create(path, LEADS8, 500, T, chunk_records=SHARD) as store:
        store.append(x, lengths=[T] * 6 + [150] + [T] * 3, record_ids=[f"s/r{i}" for i in range(N)],
                     patient_keys=[str(i) for i in range(N)], raw=True)
    return path, x


def _shard_file(path, k=1):
    return path / "signals" / "c" / str(k) / "0" / "0"


def _damage(path, how):
    f = _shard_file(path)
    data = bytearray(f.read_bytes())
    if how == "missing":
        f.unlink()
    elif how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif how == "flipped":  # a byte inside record 5's compressed bytes: its CRC-32C no longer matches
        index = np.frombuffer(bytes(data[-(16 * SHARD + 4) : -4]), "<u8").reshape(SHARD, 2)
        offset, size = index[1]
        data[int(offset + size // 2)] ^= 0x10
        f.write_bytes(data)
    elif how == "index":  # a byte of the index: its CRC-32C fails
        data[-10] ^= 0x01
        f.write_bytes(data)


DAMAGE = ["missing", "truncated", "flipped", "index"]


@pytest.fixture(params=DAMAGE)
def damaged(good, tmp_path, request):
    path, x = good
    copy = tmp_path / f"{request.param}.zarr"
    shutil.copytree(path, copy)
    _damage(copy, request.param)
    return copy, x, request.param


def test_the_untouched_store_reads_exactly_and_verifies(good):
    path, x = good
    store = ECGStore.open(path)
    assert store.record_codec().checksum  # new stores carry a CRC-32C per record
    np.testing.assert_array_equal(store.read_block(0, N, raw=True), x)
    assert not store.read_block(6, 7, raw=True)[0, :, 150:].any()  # the padded tail is data, not an error
    assert store.verify() == []
    # zarr-python reads the same bytes and checks each chunk's CRC-32C itself
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["signals"][:], x)


@pytest.mark.parametrize("path_kind", ["block", "random", "zarr"])
def test_a_damaged_shard_is_an_error_naming_it_on_every_read_path(damaged, path_kind):
    path, x, how = damaged
    store = ECGStore.open(path)
    if path_kind == "zarr":
        store._reader = None  # zarr-python's own path, as for a layout the shard module does not handle
    read = {"block": lambda: store.read_block(2, 9, raw=True), "random": lambda: store.read([9, 5, 0]),
            "zarr": lambda: store.read_block(2, 9, raw=True)}[path_kind]
    with pytest.raises(ShardError, match="records 4-7") as err:
        read()
    assert str(_shard_file(path)) in str(err.value) and "s/r4 ... s/r7" in str(err.value)
    assert isinstance(err.value, ValueError)
    # The other shards still read, exactly.
    np.testing.assert_array_equal(store.read_block(0, 4, raw=True), x[:4])
    np.testing.assert_array_equal(store.read([9, 8], leads=["I"]), x[[9, 8], :1] * np.float32(1e-3))


def test_verify_finds_each_damage_and_names_the_shard(damaged):
    path, _, how = damaged
    problems = ECGStore.open(path).verify()
    assert len(problems) == 1, problems
    assert str(_shard_file(path)) in problems[0] and "records 4-7" in problems[0]
    expected = {"missing": "missing", "truncated": "truncated", "flipped": "CRC-32C", "index": "index"}[how]
    assert expected in problems[0]


def test_verify_finds_columns_of_the_wrong_length_and_an_unfinished_run(good, tmp_path):
    path, _ = good
    copy = tmp_path / "c.zarr"
    shutil.copytree(path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group["age"].resize((N - 1,))
    store = ECGStore.open(copy, mode="r+")
    store.begin_state("ingest_state", {"note": "run of /src (wfdb)", "hint": "run it again"})
    problems = ECGStore.open(copy).verify()
    assert any("array age has shape (9,), not (10,)" in p for p in problems)
    assert any("unfinished run of /src (wfdb)" in p for p in problems)


def test_an_existing_store_without_chunk_checksums_still_opens_reads_and_appends(good, tmp_path):
    """Stores written before CRC-32C per chunk (inner codecs bytes + blosc): read by the shard module, verified by
    decoding, appended to in their own layout."""
    path, x = good
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    group = zarr.open_group(str(old), mode="r+")
    del group["signals"]
    group.create_array("signals", shape=(N, 8, T), dtype="int16", chunks=(1, 8, T), shards=(SHARD, 8, T),
                       compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), fill_value=0)[:] = x
    store = ECGStore.open(old, mode="r+")
    assert store._reader is not None and not store.record_codec().checksum
    np.testing.assert_array_equal(store.read([7, 1]), x[[7, 1]] * np.float32(1e-3))
    store.append(x[:2], lengths=[T, T], record_ids=["s/new0", "s/new1"], patient_keys=["a", "b"], raw=True)
    store.close()
    store = ECGStore.open(old)
    np.testing.assert_array_equal(store.read_block(0, N + 2, raw=True), np.concatenate([x, x[:2]]))
    assert store.verify() == []


CODECS = {  # inner codec chains of other Zarr v3 writers; the last two go through zarr's own codec pipeline
    "zstd + crc32c": lambda: dict(compressors=(ZstdCodec(level=1), Crc32cCodec())),
    "gzip": lambda: dict(compressors=GzipCodec(level=1)),
    "blosc lz4 bitshuffle": lambda: dict(compressors=BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")),
    "transpose + zstd": lambda: dict(filters=TransposeCodec(order=(0, 2, 1)), compressors=ZstdCodec(level=1)),
    "numcodecs.zlib": lambda: dict(compressors=zarr.codecs.numcodecs.Zlib(level=1)),
}


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3 specification")
@pytest.mark.parametrize("name", CODECS)
def test_any_zarr_v3_codec_chain_reads_and_writes_what_zarr_does(name, tmp_path):
    x = _records(6, leads=3)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=x.shape, dtype="int16", chunks=(1, 3, T),
                              shards=(4, 3, T), fill_value=0, **CODECS[name]())
    array[:] = x
    io = ShardIO.for_array(array, str(tmp_path / "a.zarr"), threads=2)
    assert io is not None and io.records_per_shard == 4
    out = np.empty_like(x)
    io.read_into(np.arange(6), out, np.arange(6))
    np.testing.assert_array_equal(out, x)
    # Shards written here are read back by zarr-python.
    y = _records(6, leads=3, seed=1)
    io.write(0, io.encode(y[:4]))
    io.write(1, io.encode(y[4:]))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:], y)


def test_chunk_codec_pickles_and_reports_a_damaged_chunk():
    import pickle

    codec = ChunkCodec([{"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle",
                                                            "typesize": 2, "blocksize": 0}},
                        {"name": "crc32c"}], (1, 8, T))
    x = _records(1)
    chunk = pickle.loads(pickle.dumps(codec)).encode(x)
    out = np.empty_like(x)
    codec.decode(chunk, out)
    np.testing.assert_array_equal(out, x)
    bad = bytearray(chunk)
    bad[5] ^= 0xFF
    with pytest.raises(ValueError, match="CRC-32C"):
        codec.decode(bytes(bad), out)
    with pytest.raises(ValueError, match="too few"):
        codec.decode(b"ab", out)


def test_shard_error_names_a_single_record():
    assert "(record 3)" in str(ShardError("/s/c/0/0/0", range(3, 4), "missing"))


def test_verify_through_zarr_for_a_layout_the_shard_module_does_not_handle(good, tmp_path):
    path, x = good
    copy = tmp_path / "unsharded.zarr"
    shutil.copytree(path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    del group["signals"]
    group.create_array("signals", data=x, chunks=(SHARD, 8, T))  # unsharded chunks of 4 records
    store = ECGStore.open(copy)
    assert store._reader is None and store.verify() == []
    (copy / "signals" / "c" / "1" / "0" / "0").unlink()
    (problem,) = ECGStore.open(copy).verify()
    assert "signals/c/1/0/0 (records 4-7): the shard is missing" in problem


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_a_damaged_shard_of_a_remote_store_is_an_error_naming_it(how):
    """Through fsspec (here memory://) the index comes in one suffix request, without the object's size: a damaged
    shard is still found, by its index's CRC-32C or the bytes that do not come back."""
    import fsspec

    url = f"memory://test_shards_remote/{how}.zarr"
    x = _records(N)
    with ECGStore.create(url, LEADS8, 500, T, chunk_records=SHARD, overwrite=True) as store:
        store.append(x, lengths=[T] * N, record_ids=[f"s/r{i}" for i in range(N)],
                     patient_keys=[str(i) for i in range(N)], raw=True)
    fs, key = fsspec.filesystem("memory"), f"/test_shards_remote/{how}.zarr/signals/c/1/0/0"
    data = fs.cat(key)
    if how == "missing":
        fs.rm(key)
    else:
        fs.pipe(key, data[: len(data) // 2])
    store = ECGStore.open(url)
    for read in (lambda: store.read_block(0, N, raw=True), lambda: store.read([9, 5])):
        with pytest.raises(ShardError, match="records 4-7") as err:
            read()
        assert f"{url}/signals/c/1/0/0" in str(err.value)
        assert ("missing" if how == "missing" else "index fails its CRC-32C") in str(err.value)
    np.testing.assert_array_equal(store.read([9, 0], raw=True), x[[9, 0]])


def test_pcodec_chunks_decode_straight_and_report_damage():
    codec = ChunkCodec([{"name": "numcodecs.pcodec", "configuration": {"level": 8}}, {"name": "crc32c"}], (1, 8, T))
    x = _records(1)
    chunk = codec.encode(x)
    out = np.empty_like(x)
    codec.decode(chunk, out)
    np.testing.assert_array_equal(out, x)
    codec.decode(memoryview(chunk), out)  # a view into a span fetched from an object store
    np.testing.assert_array_equal(out, x)
    bad = bytearray(chunk)
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(ValueError, match="CRC-32C"):
        codec.decode(bytes(bad), out)
    short = ChunkCodec([{"name": "numcodecs.pcodec", "configuration": {"level": 8}}], (1, 8, T + 1))
    with pytest.raises(ValueError, match=f"decodes to {8 * T} values, not {8 * (T + 1)}"):
        short.decode(chunk[:-4], np.empty((1, 8, T + 1), np.int16))
