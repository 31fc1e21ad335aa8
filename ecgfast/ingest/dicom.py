"""DICOM 12-lead ECG Waveform Storage reader (pydicom).

Of the ``WaveformSequence`` groups it reads the rhythm one (``MultiplexGroupLabel`` RHYTHM; else the longest group
that is not a median beat). Per channel: the name from ``ChannelSourceSequence``'s code meaning (``Lead I
(Einthoven)``...), value = sample x ``ChannelSensitivity`` x ``ChannelSensitivityCorrectionFactor`` +
``ChannelBaseline``, in ``ChannelSensitivityUnitsSequence``'s unit (uV, mV). The rate is the group's
``SamplingFrequency``. Patient id, age and sex from the dataset's patient module.
"""

from __future__ import annotations

import numpy as np

from ecgfast.ingest.record import FileReader, Record, SkipRecord, age_years, sex_code

_UNITS_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3}
_DTYPES = {(16, "SS"): "<i2", (16, "US"): "<u2", (32, "SL"): "<i4", (8, "SB"): "i1"}


def _group(ds):
    groups = list(getattr(ds, "WaveformSequence", []))
    for g in groups:
        if "RHYTHM" in str(getattr(g, "MultiplexGroupLabel", "")).upper():
            return g
    others = [g for g in groups if "MEDIAN" not in str(getattr(g, "MultiplexGroupLabel", "")).upper()]
    return max(others, key=lambda g: int(g.NumberOfWaveformSamples)) if others else None


class DicomReader(FileReader):
    """Items: the ``.dcm`` files' paths without extension; ``read(item)`` gives one ECG in millivolts."""

    format = "dicom"
    SUFFIXES = (".dcm",)

    def read(self, item: str) -> Record:
        import pydicom

        ds = self.load(item, pydicom.dcmread)
        group = _group(ds)
        if group is None:
            raise SkipRecord(item, "bad_header", "no rhythm waveform group")
        try:
            n_ch, n = int(group.NumberOfWaveformChannels), int(group.NumberOfWaveformSamples)
            dtype = _DTYPES[(int(group.WaveformBitsAllocated), str(group.WaveformSampleInterpretation))]
            fs = float(group.SamplingFrequency)
            channels = list(group.ChannelDefinitionSequence)
        except (AttributeError, KeyError, ValueError, TypeError) as err:
            raise SkipRecord(item, "bad_header", f"waveform group: {err}") from err
        data = bytes(group.WaveformData)
        size = np.dtype(dtype).itemsize
        if len(data) < n * n_ch * size:
            raise SkipRecord(item, "truncated", f"{len(data) // (n_ch * size)} of {n} samples")
        if len(channels) != n_ch:
            raise SkipRecord(item, "bad_header", f"{len(channels)} channel definitions for {n_ch} channels")
        x = np.frombuffer(data, dtype, n * n_ch).reshape(n, n_ch).T.astype(np.float64)
        names = []
        for c, ch in enumerate(channels):
            try:
                names.append(str(ch.ChannelSourceSequence[0].CodeMeaning))
                unit = _UNITS_MV[str(ch.ChannelSensitivityUnitsSequence[0].CodeValue)]
                sensitivity = float(ch.ChannelSensitivity) * float(getattr(ch, "ChannelSensitivityCorrectionFactor", 1))
                baseline = float(getattr(ch, "ChannelBaseline", 0))
            except (AttributeError, IndexError, KeyError, ValueError, TypeError) as err:
                raise SkipRecord(item, "bad_header", f"channel {c}: {err}") from err
            x[c] = (x[c] * sensitivity + baseline) * unit
        return Record(item=item, signal=x.astype(np.float32), lead_names=names, fs=fs,
                      age=age_years(getattr(ds, "PatientAge", "") or ""), sex=sex_code(getattr(ds, "PatientSex", "")),
                      patient_key=str(getattr(ds, "PatientID", "") or "").strip() or None)
