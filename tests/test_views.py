import numpy as np
import pytest

from ecgfast.leads import LEADS8, LEADS12
from ecgfast.views import ViewSpec


def test_paper_and_intersegment_specs():
    paper = ViewSpec.paper()
    assert (paper.leads, paper.window, paper.copies, paper.mode) == (LEADS8, 2500, 2, "copies")
    assert paper.shape == (2, 8, 2500) and paper.min_length == 2500
    segments = ViewSpec.intersegment(fs=250.0)
    assert (segments.window, segments.mode, segments.segments, segments.min_length) == (1250, "segments", "fixed", 2500)
    assert ViewSpec(leads=list(LEADS12)).leads == LEADS12  # any sequence, kept as a tuple
    with pytest.raises(AttributeError):
        paper.window = 10  # frozen


def test_starts_without_uniforms_are_fixed():
    np.testing.assert_array_equal(ViewSpec(window=100, copies=3).starts([100, 500]), [[0, 0, 0]] * 2)
    spec = ViewSpec(window=100, copies=3, mode="segments")
    np.testing.assert_array_equal(spec.starts([300, 500]), [[0, 100, 200]] * 2)


def test_random_crop_covers_every_start_within_the_record():
    lengths = np.full(4000, 104)
    u = np.random.default_rng(0).random((4000, 2))
    starts = ViewSpec(window=100).starts(lengths, u)
    assert (starts[:, 0] == starts[:, 1]).all()  # copies share the window
    assert set(np.unique(starts)) == {0, 1, 2, 3, 4}
    fixed = ViewSpec(window=100, copies=2, mode="segments").starts(np.full(4000, 203), u)
    np.testing.assert_array_equal(fixed[:, 1] - fixed[:, 0], 100)
    assert fixed.min() == 0 and fixed.max() == 103


def test_random_segments_never_overlap_and_stay_inside():
    rng = np.random.default_rng(1)
    lengths = rng.integers(300, 1000, 500)
    starts = ViewSpec(window=100, copies=3, mode="segments", segments="random").starts(lengths, rng.random((500, 3)))
    ordered = np.sort(starts, axis=1)
    assert (np.diff(ordered, axis=1) >= 100).all()
    assert (ordered[:, 0] >= 0).all() and (ordered[:, -1] + 100 <= lengths).all()
    assert (starts[:, 0] > 0).mean() > 0.9  # not pinned to the start


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"leads": ()}, "leads is empty"),
        ({"leads": ("I", "vx")}, "not standard lead names"),
        ({"leads": ("I", "I")}, "repeats"),
        ({"fs": 0.0}, "fs"),
        ({"window": 0}, "window"),
        ({"copies": 2.5}, "copies"),
        ({"mode": "leads"}, "mode"),
        ({"mode": "segments", "segments": "some"}, "segments must be"),
        ({"segments": "random"}, 'mode="segments" only'),
    ],
)
def test_bad_spec_gets_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewSpec(**kwargs)


def test_records_too_short_are_refused():
    with pytest.raises(ValueError, match="shorter than the 200 samples"):
        ViewSpec(window=100, mode="segments").starts([250, 199])
    with pytest.raises(ValueError, match="need uniforms"):
        ViewSpec(window=100, mode="segments", segments="random").starts([250])
