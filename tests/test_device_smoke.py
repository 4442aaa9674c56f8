"""tools/device_smoke.py (scripts/run_device_smoke.sh): on a CPU machine it must check itself end to end and skip,
with the reason, what needs a device; a check whose process fails is recorded in the report, not fatal.
export.py's device choice (CPU unless --export_device) is checked here too."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))


def test_a_failing_check_is_recorded_not_fatal(tmp_path):
    """A worker process that fails (here: its config does not exist) becomes a "failed" entry with the error's
    last lines; the report file and the table still come out."""
    import device_smoke

    work = tmp_path / "work"
    work.mkdir()
    report = device_smoke.Report(str(tmp_path / "report.json"), {"device": "CPU"})
    outcome = device_smoke.spawn("train", {"name": "train_O0", "config": str(tmp_path / "absent.yaml"), "steps": 1},
                                 str(work), 120, "CPU")
    assert not outcome["ok"] and "absent.yaml" in outcome["error"], outcome
    device_smoke._add_worker(report, "train_O0", outcome)
    report.add("msrun_2ranks", "skipped", reason="--quick")
    saved = json.load(open(tmp_path / "report.json"))
    assert saved["checks"]["train_O0"]["status"] == "failed" and "absent.yaml" in saved["checks"]["train_O0"]["error"]
    assert report.failed() == ["train_O0"]
    table = device_smoke.format_table(saved)
    assert "train_O0" in table and "failed" in table and "--quick" in table


def test_export_refuses_air_off_ascend_before_touching_a_device(tmp_path):
    import export
    from src.config import ConfigError

    assert export.split_export_device(["--export_device=Ascend", "--batch_size", "2"]) == ("Ascend", ["--batch_size", "2"])
    assert export.split_export_device(["--file_name", "m"]) == (None, ["--file_name", "m"])
    config = tmp_path / "c.yaml"
    config.write_text("device_target: Ascend\n")
    with pytest.raises(ConfigError, match="needs --export_device Ascend"):
        export.main(["--config_path", str(config), "--file_format", "AIR", "--checkpoint_path", "x.ckpt"])


@pytest.mark.slow
def test_quick_mode_on_cpu_checks_itself_end_to_end(tmp_path):
    """The cheapest mode, as a user runs it: the tiny model's training steps at O0 and O2 (loss scale 1024), its
    logits in two processes (identical on a CPU machine), the MINDIR exported on the CPU from a config that
    names Ascend, loaded back and matching; the device-only checks skipped with their reasons."""
    out = tmp_path / "smoke"
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_device_smoke.sh"), "--device", "CPU", "--quick",
                           "--steps", "1", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "PYTHON_BIN": sys.executable})
    report = json.load(open(out / "device_smoke.json"))
    checks = report["checks"]
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{json.dumps(checks, indent=1)[:4000]}"
    assert "device smoke test on CPU" in proc.stdout and report["device"] == "CPU"
    for amp in ("O0", "O2"):
        train = checks[f"train_{amp}"]
        assert train["status"] == "ok" and train["amp_level"] == amp and train["losses_finite"], train
        assert train["compile_s"] > 0 and train["step_s"] > 0 and train["host_peak_rss_mb"] > 100
    assert checks["train_O2"]["loss_scale"] == 1024.0
    assert checks["train_O2"]["first_loss_rel_diff_vs_O0"] < 1e-2  # float16 compute, float32 loss
    cmp = checks["logits_device_vs_cpu"]
    assert cmp["status"] == "ok" and cmp["samples"] == 2 and cmp["max_abs_diff"] <= 1e-5 and cmp["mask_agreement"] == 1
    mindir = checks["mindir"]
    assert mindir["status"] == "ok" and mindir["exported_on"] == "CPU" and mindir["max_abs_diff"] <= 1e-5
    assert os.path.isfile(mindir["mindir"])
    for name in ("paper_O0_b4", "paper_O2_b4", "converter_lite", "msrun_2ranks", "logits_device_vs_cpu_paper"):
        assert checks[name]["status"] == "skipped" and checks[name]["reason"], (name, checks[name])
