"""benchmarks/gpu_losses.py, the prepared GPU run, runs end to end here at its tiny interpreter size: the checks of
every loss and dtype against float64, the timings beside the reference, the JSON result."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_losses.py"


def test_gpu_losses_script_runs_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_losses", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path)]) == 0
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("gpu_losses_*.json")]
    assert result["interpreter"] and len(result["checks"]) == 16 and all(c["ok"] for c in result["checks"])
    assert {(r["loss"], r["v"], r["d"]) for r in result["timings"]} == set(script.CASES)
    assert all(r["speedup_vs_reference"] > 0 for r in result["timings"])
    assert "device: cpu" in capsys.readouterr().out
