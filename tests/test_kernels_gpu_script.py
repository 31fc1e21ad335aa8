"""benchmarks/gpu_losses.py, the prepared GPU run, runs end to end here at its tiny interpreter size: the checks of
every loss and dtype against float64, the timings beside the reference, the JSON result."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_losses.py"


def test_gpu_losses_script_runs_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_losses", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path)]) == 0
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("gpu_losses_*.json")]
    assert result["interpreter"] and len(result["checks"]) == 16 and all(c["ok"] for c in result["checks"])
    assert {(r["loss"], r["v"], r["d"]) for r in result["timings"]} == set(script.CASES)
    assert all(r["vs_reference"] > 0 for r in result["timings"])
    assert "device: cpu" in capsys.readouterr().out


@pytest.mark.parametrize("name,label,peak", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4), ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.0), ("NVIDIA H200", "H200 SXM", 989.4), ("NVIDIA H200 NVL", "H200 NVL", 835.0),
    ("NVIDIA GH200 480GB", "GH200", 989.4), ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090", None)])
def test_the_scripts_name_the_exact_card_and_its_peak(monkeypatch, name, label, peak):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.delitem(sys.modules, "devices", raising=False)
    import devices

    assert devices.card(name) == (label, peak)
