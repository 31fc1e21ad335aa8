"""CPSC 2018 reader: ``.mat`` files holding a struct ``ECG`` with ``data`` (12 x T millivolts, 500 Hz), ``sex``
and ``age``; the leads in the standard order I, II, III, aVR, aVL, aVF, V1-V6. Records run 6-60 s: the driver
crops them to the store's duration, or cuts them into windows with ``split``."""

from __future__ import annotations

import numpy as np

from ecgfast.ingest.record import FileReader, Record, SkipRecord, age_years, sex_code
from ecgfast.leads import LEADS12

FS = 500.0


class CPSC2018Reader(FileReader):
    """Items: the ``.mat`` files' paths without extension; ``read(item)`` gives one record in millivolts."""

    format = "cpsc2018"
    SUFFIXES = (".mat",)

    @classmethod
    def claims(cls, path) -> bool:
        """A ``.mat`` beside a ``.hea`` of the same name is a WFDB signal file, not a CPSC record."""
        return super().claims(path) and not path.with_suffix(".hea").exists()

    def read(self, item: str) -> Record:
        import scipy.io

        mat = self.load(item, lambda path: scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False))
        ecg = mat.get("ECG")
        data = getattr(ecg, "data", None)
        if data is None:
            raise SkipRecord(item, "bad_header", "no struct ECG with a data field")
        data = np.asarray(data, np.float32)
        if data.ndim != 2 or data.shape[0] != len(LEADS12):
            raise SkipRecord(item, "lead_set", f"data has shape {data.shape}, not 12 x T")
        return Record(item=item, signal=data, lead_names=list(LEADS12), fs=FS,
                      age=age_years(getattr(ecg, "age", "")), sex=sex_code(getattr(ecg, "sex", "")))
