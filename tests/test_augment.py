import numpy as np
import pytest
import wfdb
from scipy.signal import butter, filtfilt

from benchmarks._numpy_pipeline import pipeline, vcg_map
from ecgfast.augment import (
    AmplitudeScale,
    Augment,
    BaselineWander,
    GaussianNoise,
    LeadDropout,
    RandomCrop,
    SampleStreams,
    VCGAugment,
    ZeroMask,
    augment_batch,
    rotation_matrices,
    vcg_from_leads,
    vcg_transform,
)
from ecgfast.leads import LEADS8, LEADS12, canonical_lead, expand_8_to_12
from ecgfast.views import ViewSpec

EVERYTHING = Augment(
    crop=RandomCrop(),
    noise=GaussianNoise(0.05),
    wander=BaselineWander(),
    vcg=VCGAugment(matrix="kors", keep_residual=True),
    amplitude=AmplitudeScale(),
    dropout=LeadDropout(0.2),
    mask=ZeroMask(0.25),
)


def raw_block(batch, leads, samples, seed=0, low=-2000, high=2000):
    return np.random.default_rng(seed).integers(low, high, (batch, leads, samples)).astype(np.int16)


def run(raw, spec, augment, *, store_leads=LEADS8, gain_uv=1.0, positions=None, lengths=None, **kwargs):
    positions = np.arange(len(raw)) if positions is None else positions
    lengths = np.full(len(raw), raw.shape[2]) if lengths is None else lengths
    return augment_batch(raw, lengths, gain_uv=gain_uv, store_leads=store_leads, spec=spec, augment=augment, seed=3,
                         epoch=1, positions=positions, **kwargs)


def crops(raw, starts, window, gain_uv):
    """(B, C, L, window) float64 millivolts of each view's window."""
    return np.stack([[raw[b, :, s:s + window] for s in row] for b, row in enumerate(starts)]) * (gain_uv / 1000)


def with_limb_leads(x8):
    """(B, 12, T) from (B, 8, T): Einthoven's and Goldberger's III, aVR, aVL, aVF from I and II."""
    i, ii = x8[:, 0], x8[:, 1]
    return np.concatenate([x8[:, :2], np.stack([ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2], 1), x8[:, 2:]], 1)


def cyclic_mask(starts, length, window):
    return (np.arange(window) - starts[..., None]) % window < length


@pytest.mark.parametrize("seed", [0, 2**40 + 3])
def test_sample_streams_are_seedsequence_words(seed):
    positions = np.array([0, 1, 977, 2**32 - 1])
    streams = SampleStreams(seed, 5, positions)
    reference = np.stack([np.random.SeedSequence((seed, 5, int(p))).generate_state(1005, np.uint32) for p in positions])
    np.testing.assert_array_equal(streams.words(0, 12), reference[:, :12])
    np.testing.assert_array_equal(streams.words(7, 5), reference[:, 7:12])
    np.testing.assert_array_equal(streams.words(1000, 5), reference[:, 1000:])


def test_rotation_order_is_rz_ry_rx():
    ex, ey, ez = np.eye(3)
    np.testing.assert_allclose(rotation_matrices([[0, 0, 90]])[0] @ ex, ey, atol=1e-12)  # Z: X -> Y
    np.testing.assert_allclose(rotation_matrices([[90, 0, 0]])[0] @ ey, ez, atol=1e-12)  # X: Y -> Z
    np.testing.assert_allclose(rotation_matrices([[0, 90, 0]])[0] @ ez, ex, atol=1e-12)  # Y: Z -> X
    # X first, then Z: X stays X under Rx, then Rz takes it to Y (Rx Rz would give Z).
    both = rotation_matrices([[90, 0, 90]])[0]
    np.testing.assert_allclose(both @ ex, ey, atol=1e-12)
    np.testing.assert_allclose(both @ ey, ez, atol=1e-12)


# Pairwise over leads x matrix x residual, alternating dtypes; odd T.
@pytest.mark.parametrize(
    "leads, matrix, keep_residual, dtype",
    [
        (8, "inverse_dower", False, np.float32),
        (8, "kors", True, np.float64),
        (12, "inverse_dower", True, np.float32),
        (12, "kors", False, np.float64),
    ],
)
def test_vcg_transform_matches_float64_reference(leads, matrix, keep_residual, dtype):
    rng = np.random.default_rng(leads)
    x8 = rng.standard_normal((5, 8, 301))
    angles, scales = rng.uniform(-60, 60, (5, 3)), rng.uniform(0.5, 2.0, (5, 3))
    want = vcg_map(angles, scales, matrix, keep_residual) @ x8
    x = x8
    if leads == 12:
        x, want = with_limb_leads(x8), with_limb_leads(want)
    got = vcg_transform(x.astype(dtype), angles, scales, matrix=matrix, keep_residual=keep_residual)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_vcg_transform_identity_keeps_everything_only_with_residual():
    x = np.random.default_rng(1).standard_normal((2, 8, 51))
    zero, one = np.zeros((2, 3)), np.ones((2, 3))
    np.testing.assert_allclose(vcg_transform(x, zero, one, keep_residual=True), x, atol=1e-12)
    projected = vcg_transform(x, zero, one)  # rank 3: the non-dipolar part is gone
    assert np.linalg.matrix_rank(projected[0]) == 3


def test_vcg_augment_draws_the_papers_distribution():
    angles, scales = VCGAugment().draw(SampleStreams(0, 0, np.arange(2000)), 2)
    assert angles.shape == scales.shape == (2000, 2, 3)
    assert np.abs(angles).max() <= 45 and abs(angles.mean()) < 1.0
    assert angles.std() == pytest.approx(45 / 3**0.5, rel=0.02)
    inverted = scales < 1
    assert inverted.mean() == pytest.approx(0.5, abs=0.02)
    assert scales[~inverted].min() >= 1 and scales[~inverted].max() <= 1.5
    assert (1 / scales[inverted]).max() <= 1.5


def test_optional_steps_draw_their_distributions():
    streams = SampleStreams(1, 2, np.arange(4000))
    keep = LeadDropout(0.25).draw(streams, 2, 8)
    assert keep.shape == (4000, 2, 8) and (~keep).mean() == pytest.approx(0.25, abs=0.01)
    amplitude = AmplitudeScale(0.5, 2.0).draw(streams, 2)
    assert amplitude.min() >= 0.5 and amplitude.max() <= 2.0 and amplitude.mean() == pytest.approx(1.25, abs=0.02)
    amp, phase, hz = np.moveaxis(BaselineWander(0.2, 0.1, 0.4).draw(streams, (2, 8)), -1, 0)
    assert 0 <= amp.min() and amp.max() <= 0.2 and 0 <= phase.min() and phase.max() <= 2 * np.pi
    assert 0.1 <= hz.min() and hz.max() <= 0.4
    offsets = GaussianNoise(0.1).draw(streams, (2, 8), 2500)
    assert offsets.min() >= 0 and offsets.max() + 2500 <= len(GaussianNoise.table(2500))
    table = GaussianNoise.table(2500)
    assert abs(table.mean()) < 0.01 and table.std() == pytest.approx(1, abs=0.01)


def test_fused_paper_pipeline_matches_numpy_reference():
    raw, spec, augment = raw_block(6, 8, 3001), ViewSpec(window=1001), Augment.paper()
    got = run(raw, spec, augment, gain_uv=2.5, lengths=[3001, 2000, 1001, 2500, 3001, 1700])
    draws = augment.draw(spec, [3001, 2000, 1001, 2500, 3001, 1700], seed=3, epoch=1, positions=np.arange(6), inputs=8)
    assert (draws.starts[:, 0] == draws.starts[:, 1]).all()  # two copies of one window
    assert (draws.starts[:, 0] + 1001 <= [3001, 2000, 1001, 2500, 3001, 1700]).all()
    want = pipeline(raw, 2.5, draws.starts, 1001, draws.angles, draws.scales, draws.mask_starts, 500, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize(
    "store_leads, spec",
    [
        (LEADS12, ViewSpec(window=400, copies=3, mode="segments", segments="random")),
        (LEADS8, ViewSpec(leads=LEADS12, window=777, mode="segments")),
    ],
)
def test_fused_equals_composition_of_transforms(store_leads, spec):
    raw = raw_block(4, len(store_leads), 1601, seed=2)
    augment = Augment(vcg=VCGAugment(matrix="kors", keep_residual=True), amplitude=AmplitudeScale(),
                      dropout=LeadDropout(0.3), mask=ZeroMask(0.3))
    got = run(raw, spec, augment, store_leads=store_leads, gain_uv=0.5)
    draws = augment.draw(spec, [1601] * 4, seed=3, epoch=1, positions=np.arange(4), inputs=8)
    x = crops(raw, draws.starts, spec.window, 0.5)
    x8 = x[:, :, [store_leads.index(name) for name in LEADS8]]
    flat = x8.reshape(-1, 8, spec.window)
    y = vcg_transform(flat, draws.angles.reshape(-1, 3), draws.scales.reshape(-1, 3), matrix="kors", keep_residual=True)
    y = y.reshape(x8.shape)
    if spec.leads == LEADS12:
        y = expand_8_to_12(y)
    y = y * draws.amplitude[..., None, None] * draws.keep[..., None]
    y[cyclic_mask(draws.mask_starts, round(0.3 * spec.window), spec.window)] = 0
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5 * np.abs(y).max())
    if spec.segments == "random":
        gaps = np.diff(np.sort(draws.starts, axis=1), axis=1)
        assert (gaps >= spec.window).all() and (draws.starts.max(1) + spec.window <= 1601).all()
    else:
        np.testing.assert_array_equal(draws.starts, [[0, 777]] * 4)


def test_noise_and_wander_are_added_in_millivolts():
    raw, spec = np.zeros((3, 8, 900), np.int16), ViewSpec(window=900, fs=250.0)
    augment = Augment(noise=GaussianNoise(0.2), wander=BaselineWander(max_mv=0.3, max_hz=2.0))
    got = run(raw, spec, augment, gain_uv=4.0)
    draws = augment.draw(spec, [900] * 3, seed=3, epoch=1, positions=np.arange(3), inputs=8)
    table = GaussianNoise.table(900).astype(np.float64)
    noise = 0.2 * table[draws.noise_offsets[..., None] + np.arange(900)]
    amp, phase, hz = np.moveaxis(draws.wander, -1, 0)
    wander = amp[..., None] * np.sin(phase[..., None] + 2 * np.pi * hz[..., None] * np.arange(900) / 250.0)
    np.testing.assert_allclose(got, noise + wander, rtol=1e-4, atol=1e-5)
    assert got.std() == pytest.approx(np.hypot(0.2, 0.3 / 6**0.5), rel=0.1)


def test_same_position_same_views_whatever_threads_or_batch():
    raw, spec = raw_block(8, 12, 1200, seed=4), ViewSpec(window=500)
    full = run(raw, spec, EVERYTHING, store_leads=LEADS12, positions=np.arange(10, 18), threads=1)
    two = run(raw, spec, EVERYTHING, store_leads=LEADS12, positions=np.arange(10, 18), threads=2)
    np.testing.assert_array_equal(two, full)
    alone = run(raw[5:6], spec, EVERYTHING, store_leads=LEADS12, positions=[15])
    np.testing.assert_array_equal(alone[0], full[5])
    assert not np.array_equal(full[0, 0], full[0, 1])  # copies differ
    other_epoch = augment_batch(raw, np.full(8, 1200), gain_uv=1.0, store_leads=LEADS12, spec=spec, augment=EVERYTHING,
                                seed=3, epoch=2, positions=np.arange(10, 18))
    assert not np.allclose(other_epoch, full)


def test_zero_mask_statistics():
    window, fraction = 101, 0.3
    raw = raw_block(64, 8, window, seed=5, low=1)  # no zero samples of its own
    views = run(raw, ViewSpec(window=window), Augment(mask=ZeroMask(fraction)), positions=np.arange(64) + 1000)
    zeros = views.reshape(-1, window) == 0
    length = round(fraction * window)
    assert (zeros.sum(1) == length).all()
    starts_at = zeros & ~np.roll(zeros, 1, axis=1)  # one cyclic run per lead
    assert (starts_at.sum(1) == 1).all()
    starts = starts_at.argmax(1)
    wraps = starts > window - length
    assert wraps.mean() == pytest.approx((length - 1) / window, abs=0.06)
    counts = np.bincount(starts * 4 // window, minlength=4)
    expected = len(starts) / 4
    assert ((counts - expected) ** 2 / expected).sum() < 16.3  # chi-square, 3 dof, p = 0.001


def test_output_buffer_is_filled_in_place():
    raw, spec = raw_block(3, 8, 700), ViewSpec(window=700, copies=1)
    out = np.full((3, 1, 8, 700), np.nan, np.float32)
    assert run(raw, spec, Augment(), out=out) is out
    np.testing.assert_allclose(out[:, 0], raw / 1000, rtol=1e-6)


@pytest.mark.parametrize("matrix, minimum", [("kors", (0.9, 0.9, 0.65)), ("inverse_dower", (0.9, 0.9, 0.3))])
def test_vcg_follows_the_frank_leads_of_a_real_heart(data_dir, matrix, minimum):
    record = wfdb.rdrecord(str(data_dir / "ptb_frank" / "s0010_re"))
    names = [name.lower() for name in record.sig_name]
    leads = {canonical_lead(name): record.p_signal[:, k] for k, name in enumerate(record.sig_name)}
    x12 = np.stack([leads[name] for name in LEADS12])
    frank = np.stack([record.p_signal[:, names.index(axis)] for axis in ("vx", "vy", "vz")])
    b, a = butter(2, 0.5, btype="highpass", fs=record.fs)
    x8 = x12[[LEADS12.index(name) for name in LEADS8]]
    ours = filtfilt(b, a, vcg_from_leads(x8, matrix))
    theirs = filtfilt(b, a, frank)
    r = [np.corrcoef(ours[k], theirs[k])[0, 1] for k in range(3)]
    assert all(rk >= mk for rk, mk in zip(r, minimum)), f"Pearson r X/Y/Z {np.round(r, 3)} below {minimum}"
    np.testing.assert_allclose(vcg_from_leads(x12, matrix), vcg_from_leads(x8, matrix), atol=1e-9)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: vcg_transform(np.full((1, 8, 10), np.nan), np.zeros((1, 3)), np.ones((1, 3))), "NaN"),
        (lambda: vcg_transform(np.zeros((1, 10, 10)), np.zeros((1, 3)), np.ones((1, 3))), "8, T"),
        (lambda: vcg_transform(np.zeros((2, 8, 10)), np.zeros((1, 3)), np.ones((1, 3))), "batch of 2"),
        (lambda: run(np.full((2, 8, 600), np.nan), ViewSpec(window=500), Augment.paper()), "raw contains NaN"),
        (lambda: run(raw_block(2, 8, 600).astype(np.int32), ViewSpec(window=500), Augment.paper()), "int16"),
        (lambda: run(raw_block(2, 12, 600), ViewSpec(window=500), Augment.paper()), "raw has 12 leads"),
        (lambda: run(raw_block(2, 8, 600), ViewSpec(window=500), Augment.paper(), lengths=[400, 450]),
         "longer than every record"),
        (lambda: run(raw_block(2, 8, 600), ViewSpec(window=500), Augment.paper(), lengths=[600, 450]),
         "batch rows \\[1\\]"),
        (lambda: run(raw_block(2, 8, 600), ViewSpec(window=500), Augment.paper(), gain_uv=float("nan")), "gain_uv"),
        (lambda: run(raw_block(2, 8, 600), ViewSpec(window=500), Augment(), out=np.zeros((2, 2, 8, 400), np.float32)),
         "out must be"),
        (lambda: run(raw_block(2, 3, 600), ViewSpec(window=500), Augment.paper(), store_leads=("I", "II", "III")),
         "'V1' is neither stored"),
        (lambda: run(raw_block(2, 8, 600), ViewSpec(window=500), Augment(), positions=[0]), "positions"),
        (lambda: VCGAugment(matrix="frank"), "matrix"),
        (lambda: ZeroMask(1.5), "fraction"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
