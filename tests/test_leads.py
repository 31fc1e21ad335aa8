import numpy as np
import pytest
import wfdb

from ecgfast import leads


@pytest.mark.parametrize(
    "name, expected",
    [("i", "I"), ("DI", "I"), ("Lead I (Einthoven)", "I"), ("lead_ii", "II"), ("DIII", "III"), ("AVR", "aVR"),
     ("avl", "aVL"), ("aVF", "aVF"), ("v1", "V1"), ("V6", "V6"), ("vx", None), ("-aVR", None), ("Pleth", None)],
)
def test_canonical_lead(name, expected):
    assert leads.canonical_lead(name) == expected


def test_inverse_dower_is_the_pseudo_inverse_of_dower():
    # Edenbrandt & Pahlm derived their matrix as the least-squares inverse of Dower's: an independent check of
    # both tables as typed in.
    np.testing.assert_allclose(leads.INVERSE_DOWER, np.linalg.pinv(leads.DOWER), atol=1.5e-3)


def test_expand_8_to_12_matches_recorded_limb_leads(data_dir):
    for name in ("E07500", "HR06000", "JS20004"):
        rec = wfdb.rdrecord(str(data_dir / "cinc2021" / name))
        x = rec.adc().T.astype(np.float64)  # microvolts, 12 standard leads
        assert [leads.canonical_lead(s) for s in rec.sig_name] == list(leads.LEADS12)
        x8 = x[[leads.LEADS12.index(n) for n in leads.LEADS8]]
        # The recorded derived leads were rounded to whole microvolts after derivation.
        np.testing.assert_allclose(leads.expand_8_to_12(x8), x, atol=3.5)


def test_select_leads_derives_missing_limb_leads():
    rng = np.random.default_rng(0)
    x8 = rng.standard_normal((3, 8, 17)).astype(np.float32)
    out = leads.select_leads(x8, leads.LEADS8, ["aVL", "V3", "III"])
    i, ii = x8[:, 0], x8[:, 1]
    np.testing.assert_allclose(out[:, 0], i - ii / 2, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], x8[:, 4])
    np.testing.assert_allclose(out[:, 2], ii - i, rtol=1e-6)


def test_bad_leads_are_named():
    with pytest.raises(ValueError, match="'V7'"):
        leads.select_leads(np.zeros((8, 4)), leads.LEADS8, ["V7"])
    with pytest.raises(ValueError, match="8 leads"):
        leads.expand_8_to_12(np.zeros((12, 4)))
    with pytest.raises(ValueError, match="aVR"):
        leads.lead_index(leads.LEADS8, ["aVR"])
