"""GE MUSE RestingECG XML reader.

The ``Waveform`` whose ``WaveformType`` is ``Rhythm`` (not the median beat) holds one ``LeadData`` per stored lead:
``LeadID``, ``LeadSampleCountTotal``, ``LeadAmplitudeUnitsPerBit`` with ``LeadAmplitudeUnits`` (``MICROVOLTS``...),
and ``WaveFormData``, base64 of little-endian int16 samples. The rate is the waveform's ``SampleBase`` (times 10 to
the ``SampleExponent``). MUSE stores 8 leads (I, II, V1-V6): III, aVR, aVL and aVF are derived by the driver.
Patient id, age and sex come from ``PatientDemographics``.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
import numpy as np

from ecgfast.ingest.record import FileReader, Record, SkipRecord, age_years, sex_code

_UNITS_MV = {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0, "VOLTS": 1e3, "NANOVOLTS": 1e-6}


class MuseReader(FileReader):
    """Items: the ``.xml`` files' paths without extension; ``read(item)`` gives one ECG in millivolts."""

    format = "muse"
    SUFFIXES = (".xml",)

    def read(self, item: str) -> Record:
        root = self.load(item, lambda path: ET.parse(path).getroot())
        rhythm = [w for w in root.iter("Waveform") if (w.findtext("WaveformType") or "").strip().lower() == "rhythm"]
        if not rhythm:
            raise SkipRecord(item, "bad_header", "no Rhythm waveform")
        wave = rhythm[0]
        try:
            fs = float(wave.findtext("SampleBase")) * 10 ** int(wave.findtext("SampleExponent") or 0)
        except (TypeError, ValueError) as err:
            raise SkipRecord(item, "bad_header", f"SampleBase {wave.findtext('SampleBase')!r}") from err
        names, leads = [], []
        for lead in wave.iter("LeadData"):
            name = (lead.findtext("LeadID") or "").strip()
            try:
                per_bit = float(lead.findtext("LeadAmplitudeUnitsPerBit"))
                unit = _UNITS_MV[(lead.findtext("LeadAmplitudeUnits") or "MICROVOLTS").strip().upper()]
                count = int(lead.findtext("LeadSampleCountTotal"))
                raw = base64.b64decode(lead.findtext("WaveFormData") or "", validate=False)
            except (TypeError, ValueError, KeyError, binascii.Error) as err:
                raise SkipRecord(item, "bad_header", f"lead {name!r}: {err}") from err
            if len(raw) < 2 * count:
                raise SkipRecord(item, "truncated", f"lead {name}: {len(raw) // 2} of {count} samples")
            names.append(name)
            leads.append(np.frombuffer(raw, "<i2", count).astype(np.float32) * np.float32(per_bit * unit))
        if not leads:
            raise SkipRecord(item, "lead_set", "the Rhythm waveform has no LeadData")
        if len({len(x) for x in leads}) != 1:
            raise SkipRecord(item, "truncated", f"leads of different lengths {sorted({len(x) for x in leads})}")
        demo = root.find("PatientDemographics")
        demo = demo if demo is not None else ET.Element("none")
        return Record(item=item, signal=np.stack(leads), lead_names=names, fs=fs,
                      age=age_years(demo.findtext("PatientAge") or ""), sex=sex_code(demo.findtext("Gender")),
                      patient_key=(demo.findtext("PatientID") or "").strip() or None)
