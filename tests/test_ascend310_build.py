"""Build and exercise the C++ inference program (ascend310_infer/) against the MindSpore Lite SDK.

`scripts/fetch_mslite_sdk.sh` downloads the mindspore-lite 2.0.0 wheel from PyPI once (cached in
ascend310_infer/.mslite); `ascend310_infer/build.sh` then compiles and links with -Wall -Wextra -Werror into a
temporary folder. The wheel's runtime libraries are self-contained, so the binary also runs here on CPU:
argument and data validation are checked, and a tiny network exported by MindSpore runs end to end.

Lite 2.0 (the only Lite release on PyPI) refuses MindSpore 2.10's MINDIR format version 3 outright. The tiny
test graph uses only element-wise ops whose serialisation did not change, so lowering the file's
`mind_ir_version` field to 1 lets Lite 2.0 load it; this is a test device for the program's I/O path, not a
way to deploy: real CoupAlign MINDIRs need the Lite runtime that matches the exporting MindSpore version.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops
from mindspore.train import mind_ir_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FETCH_SCRIPT = os.path.join(ROOT, "scripts", "fetch_mslite_sdk.sh")
BUILD_SCRIPT = os.path.join(ROOT, "ascend310_infer", "build.sh")
SDK_CACHE = os.path.join(ROOT, "ascend310_infer", ".mslite")
INPUT_SUBDIRS = ("00_image", "01_input_ids", "02_attention_mask")

BATCH, SEQ_LEN, SIZE = 2, 5, 8
IMAGE_BYTES = BATCH * 3 * SIZE * SIZE * 4
LOADER_ERROR = "error while loading shared libraries"


# ----------------------------------------------------------------------------------------------------------
# SDK, build and run helpers
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ms_lite_home():
    """Fetch (or reuse) the Lite SDK; returns the MS_LITE_HOME the fetch script prints."""
    proc = subprocess.run(
        ["bash", FETCH_SCRIPT, SDK_CACHE],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"fetch_mslite_sdk.sh failed:\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("MS_LITE_HOME="), proc.stdout
    home = lines[0].split("=", 1)[1]
    assert os.path.isfile(os.path.join(home, "include", "api", "model.h"))
    return home


@pytest.fixture(scope="module")
def built_binary(ms_lite_home, tmp_path_factory):
    """Path of `main` built by build.sh into a temporary build and output folder."""
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"C++ toolchain not installed: {', '.join(missing)}")
    build_root = tmp_path_factory.mktemp("ascend310_build")
    env = {**os.environ, "MS_LITE_HOME": ms_lite_home, "BUILD_DIR": str(build_root / "build"),
           "OUT_DIR": str(build_root / "out")}
    proc = subprocess.run(["bash", BUILD_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    binary = build_root / "out" / "main"
    assert binary.is_file(), proc.stdout
    return binary


@pytest.fixture(scope="module")
def run_main(built_binary, ms_lite_home):
    """Runs the binary with LD_LIBRARY_PATH on the SDK's lib folder; skips if the loader cannot start it."""
    env = {**os.environ, "GLOG_v": "3"}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (os.path.join(ms_lite_home, "lib"), os.environ.get("LD_LIBRARY_PATH", "")) if p)

    def run(*args):
        return subprocess.run([str(built_binary), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=300)

    probe = run("--help")
    if probe.returncode != 0 and LOADER_ERROR in probe.stderr:
        pytest.skip(f"binary builds but cannot start here (runtime libraries missing): {probe.stderr.strip()}")
    return run


# ----------------------------------------------------------------------------------------------------------
# Tiny MINDIRs and .bin inputs
# ----------------------------------------------------------------------------------------------------------
class _ElementwiseNet(nn.Cell):
    """Two outputs with a closed form: image * 0.5 + 1 and float(ids) * float(mask)."""

    def __init__(self):
        super().__init__()
        self.cast = ops.Cast()
        self.scale = ms.Parameter(ms.Tensor(np.array([0.5], np.float32)), name="scale")

    def construct(self, image, input_ids, attention_mask):
        logits = image * self.scale + 1.0  # (B, 3, H, W)
        kept = self.cast(input_ids, ms.float32) * self.cast(attention_mask, ms.float32)  # (B, T)
        return logits, kept


def _export(net, ids_dtype, path_stem, mind_ir_version):
    image = ms.Tensor(np.zeros((BATCH, 3, SIZE, SIZE), np.float32))
    ids = ms.Tensor(np.zeros((BATCH, SEQ_LEN)), ids_dtype)
    mask = ms.Tensor(np.zeros((BATCH, SEQ_LEN), np.int32))
    ms.export(net, image, ids, mask, file_name=path_stem, file_format="MINDIR")
    path = path_stem + ".mindir"
    if mind_ir_version is not None:
        model = mind_ir_pb2.ModelProto()
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
        model.mind_ir_version = mind_ir_version
        os.chmod(path, 0o600)
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def tiny_mindirs(tmp_path_factory):
    """{"ok": Lite-2.0-loadable, "float_ids": ids input float32, "native": untouched MindSpore 2.10 export}."""
    root = tmp_path_factory.mktemp("tiny_mindir")
    return {
        "ok": _export(_ElementwiseNet(), ms.int32, str(root / "ok"), 1),
        "float_ids": _export(_ElementwiseNet(), ms.float32, str(root / "float_ids"), 1),
        "native": _export(_ElementwiseNet(), ms.int32, str(root / "native"), None),
    }


def _write_samples(input_dir, names, seed=0):
    """Random inputs per sample name, written the way the Python preprocessing does; returns them."""
    rng = np.random.default_rng(seed)
    for sub in INPUT_SUBDIRS:
        os.makedirs(os.path.join(input_dir, sub), exist_ok=True)
    samples = {}
    for name in names:
        image = rng.standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
        ids = rng.integers(0, 30000, (BATCH, SEQ_LEN)).astype(np.int32)
        mask = rng.integers(0, 2, (BATCH, SEQ_LEN)).astype(np.int32)
        for sub, array in zip(INPUT_SUBDIRS, (image, ids, mask)):
            array.tofile(os.path.join(input_dir, sub, name + ".bin"))
        samples[name] = (image, ids, mask)
    return samples


# ----------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------
def test_build_script_rejects_missing_sdk(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MS_LITE_HOME"}
    cases = [
        (None, "MS_LITE_HOME is not set"),
        (str(tmp_path / "absent"), "is not a directory"),
        (str(tmp_path), "is not a MindSpore Lite SDK"),
    ]
    for home, message in cases:
        case_env = dict(env, BUILD_DIR=str(tmp_path / "build"), OUT_DIR=str(tmp_path / "out"))
        if home is not None:
            case_env["MS_LITE_HOME"] = home
        proc = subprocess.run(["bash", BUILD_SCRIPT], env=case_env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and message in proc.stderr, (home, proc.stderr)
    assert not (tmp_path / "out" / "main").exists()


def test_fetch_is_idempotent(ms_lite_home):
    proc = subprocess.run(["bash", FETCH_SCRIPT, SDK_CACHE], env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "already in" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == f"MS_LITE_HOME={ms_lite_home}"


def test_binary_is_built(built_binary):
    assert os.access(built_binary, os.X_OK)
    with open(built_binary, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_help_lists_every_flag(run_main):
    proc = run_main("--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--mindir_path", "--input_dir", "--output_dir", "--device_type", "--device_id", "--cpu_threads"):
        assert flag in proc.stdout
    for folder in INPUT_SUBDIRS:
        assert folder in proc.stdout


@pytest.mark.parametrize("args, message", [
    (("--bogus=1",), "unknown option '--bogus'"),
    (("--mindir_path", "m.mindir"), "missing required option --input_dir"),
    (("--mindir_path", "m", "--input_dir", "i", "--output_dir", "o", "--device_type", "NPU"),
     "invalid value 'NPU' for --device_type"),
    (("--mindir_path", "m", "--input_dir", "i", "--output_dir", "o", "--device_id", "-1"),
     "invalid value '-1' for --device_id"),
    (("--mindir_path",), "missing value for --mindir_path"),
])
def test_usage_errors_exit_2(run_main, args, message):
    proc = run_main(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_missing_mindir_is_reported(run_main, tmp_path):
    missing = tmp_path / "no_such_model.mindir"
    proc = run_main("--mindir_path", missing, "--input_dir", tmp_path, "--output_dir", tmp_path / "out",
                    "--device_type", "CPU")
    assert proc.returncode == 1
    assert f"MINDIR file does not exist: {missing}" in proc.stderr


def test_mismatched_sample_names_are_reported(run_main, tiny_mindirs, tmp_path):
    _write_samples(tmp_path / "in", ["a", "b"])
    os.remove(tmp_path / "in" / "02_attention_mask" / "b.bin")
    proc = run_main("--mindir_path", tiny_mindirs["ok"], "--input_dir", tmp_path / "in",
                    "--output_dir", tmp_path / "out", "--device_type", "CPU")
    assert proc.returncode == 1
    assert f"input file missing: {tmp_path / 'in' / '02_attention_mask' / 'b.bin'}" in proc.stderr, proc.stderr


def test_end_to_end_on_cpu(run_main, tiny_mindirs, tmp_path):
    samples = _write_samples(tmp_path / "in", ["img_0001", "img_0002", "img_0003"])
    out_dir = tmp_path / "out"
    proc = run_main("--mindir_path", tiny_mindirs["ok"], "--input_dir", tmp_path / "in", "--output_dir", out_dir,
                    "--device_type", "CPU", "--cpu_threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Mean latency:" in proc.stdout
    for name, (image, ids, mask) in samples.items():
        logits = np.fromfile(out_dir / f"{name}_0.bin", np.float32).reshape(image.shape)
        kept = np.fromfile(out_dir / f"{name}_1.bin", np.float32).reshape(ids.shape)
        np.testing.assert_allclose(logits, image * 0.5 + 1.0, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(kept, (ids * mask).astype(np.float32))

    report = (out_dir / "latency.txt").read_text().splitlines()
    summary = dict(line.split(": ", 1) for line in report if ": " in line)
    assert summary["samples"] == "3" and summary["batch_size"] == str(BATCH)
    assert summary["device_type"] == "CPU"
    per_sample = [line.split() for line in report[report.index("# per-sample Predict latency (ms)") + 1:]]
    assert [row[0] for row in per_sample] == [f"{name}.bin" for name in samples]
    latencies = [float(row[1]) for row in per_sample]
    assert all(ms_ > 0 for ms_ in latencies)
    assert float(summary["mean_ms"]) == pytest.approx(np.mean(latencies), abs=2e-3)


def test_input_size_mismatch_is_reported_before_running(run_main, tiny_mindirs, tmp_path):
    _write_samples(tmp_path / "in", ["a", "b"])
    bad = tmp_path / "in" / "00_image" / "b.bin"
    bad.write_bytes(bad.read_bytes()[:100])
    proc = run_main("--mindir_path", tiny_mindirs["ok"], "--input_dir", tmp_path / "in",
                    "--output_dir", tmp_path / "out", "--device_type", "CPU")
    assert proc.returncode == 1
    assert f"size mismatch for {bad}: expected {IMAGE_BYTES} bytes, got 100 bytes" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "a_0.bin").exists(), "validation must happen before any sample runs"


def test_input_dtype_mismatch_is_reported(run_main, tiny_mindirs, tmp_path):
    _write_samples(tmp_path / "in", ["a"])
    proc = run_main("--mindir_path", tiny_mindirs["float_ids"], "--input_dir", tmp_path / "in",
                    "--output_dir", tmp_path / "out", "--device_type", "CPU")
    assert proc.returncode == 1
    assert "fed from 01_input_ids/ must be int32" in proc.stderr, proc.stderr


def test_unloadable_mindir_fails_cleanly(run_main, tiny_mindirs, tmp_path):
    """An untouched MindSpore 2.10 MINDIR (format version 3) is beyond Lite 2.0: a clean build error, exit 1."""
    _write_samples(tmp_path / "in", ["a"])
    proc = run_main("--mindir_path", tiny_mindirs["native"], "--input_dir", tmp_path / "in",
                    "--output_dir", tmp_path / "out", "--device_type", "CPU")
    assert proc.returncode == 1
    assert f"error: failed to build {tiny_mindirs['native']} for device CPU" in proc.stderr, proc.stderr
