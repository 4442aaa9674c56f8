"""User errors against bugs (src/errors.py, src/utils/cli.py): a bad config key, a missing or malformed
data file, a checkpoint that does not fit end an entry script with one `error:` line and a non-zero exit
code; any other exception (a bug: a wrong shape, a missing dict key in our code) keeps its traceback."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml

from src.engine.checkpoint import CheckpointIOError, CheckpointMismatchError, check_shapes
from src.errors import CheckpointError, ConfigError, CoupAlignError, DataError, TrainingError
from src.utils.cli import run_main
from test_entry_scripts import ROOT, tiny_config


def _raising(error):
    def main():
        raise error
    return main


# ------------------------------------------------------------------------------------------------
# run_main: bugs propagate, user errors are one line
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bug", [ValueError("operands could not be broadcast together with shapes (4,8) (4,9)"),
                                 KeyError("pixel_decoder"), TypeError("'NoneType' object is not iterable"),
                                 RuntimeError("a MindSpore kernel failed")])
def test_a_bug_keeps_its_traceback(bug, capsys):
    """The old run_main turned every ValueError and KeyError into one line and hid the traceback."""
    with pytest.raises(type(bug)) as raised:
        run_main(_raising(bug))
    assert raised.value is bug and raised.traceback  # the original exception, with where it came from
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize("error, code", [
    (ConfigError("unknown config key 'train.no_such_key'"), 2),
    (DataError("data/refcoco/instances.json: invalid JSON"), 2),
    (CheckpointError("model.bert.pretrained: checkpoint not found: bert.ckpt"), 2),
    (CheckpointMismatchError("best.ckpt: shapes do not match the configured model"), 2),
    (CheckpointIOError("checkpoint best.ckpt cannot be read (truncated or not a MindSpore checkpoint)"), 1),
    (TrainingError("non-finite loss at step 3"), 1),
    (FileNotFoundError("image file not found: photo.jpg"), 2),
    (IsADirectoryError("[Errno 21] Is a directory: 'out'"), 2),
])
def test_a_user_error_is_one_line_and_an_exit_code(error, code, capsys):
    with pytest.raises(SystemExit) as raised:
        run_main(_raising(error))
    assert raised.value.code == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_interrupt_and_return_codes(capsys):
    with pytest.raises(SystemExit) as raised:
        run_main(_raising(KeyboardInterrupt()))
    assert raised.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(SystemExit) as raised:
        run_main(lambda: 3)
    assert raised.value.code == 3


def test_project_errors_still_are_the_builtins_they_replaced():
    """Callers that caught ValueError (SAMPLE_ERRORS, the tools) or RuntimeError keep catching them."""
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(CheckpointError, RuntimeError) and issubclass(TrainingError, RuntimeError)
    assert issubclass(CheckpointMismatchError, ValueError) and issubclass(CheckpointIOError, CoupAlignError)


def test_a_checkpoint_of_another_shape_names_the_parameter_and_the_file():
    from mindspore import nn

    cell = nn.Dense(4, 3)
    weight = next(p for p in cell.get_parameters() if p.name.endswith("weight"))
    check_shapes(cell, {weight.name: np.zeros((3, 4), np.float32)}, "ok.ckpt")  # fits: no error
    with pytest.raises(CheckpointMismatchError, match=rf"(?s)other\.ckpt: shapes do not match.*{weight.name}: "
                                                      r"checkpoint \(5, 4\) vs model \(3, 4\)"):
        check_shapes(cell, {weight.name: np.zeros((5, 4), np.float32)}, "other.ckpt")


# ------------------------------------------------------------------------------------------------
# Entry scripts in a real process
# ------------------------------------------------------------------------------------------------
def _train(tmp_path, data_root, *overrides):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(str(data_root), str(tmp_path / "out"))))
    return subprocess.run([sys.executable, "train.py", "--config_path", str(config), *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, GLOG_v="3"))


def _one_error_line(proc, code):
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_a_bad_config_key_is_one_line_naming_it(tmp_path):
    line = _one_error_line(_train(tmp_path, tmp_path / "data", "--train.batch_sise=2"), 2)
    assert "train.batch_sise" in line and "train.batch_size" in line  # the key, and the one meant


def test_a_missing_data_file_is_one_line_naming_it(tmp_path):
    line = _one_error_line(_train(tmp_path, tmp_path / "no_such_data"), 2)
    assert os.path.join(str(tmp_path / "no_such_data"), "refcoco", "refs(unc).p") in line


def test_a_malformed_data_file_is_one_line_naming_it(tmp_path):
    data = tmp_path / "data" / "refcoco"
    data.mkdir(parents=True)
    (data / "refs(unc).p").write_bytes(pickle.dumps([{"split": "train"}]))
    (data / "instances.json").write_text('{"images": [')  # a copy cut short
    line = _one_error_line(_train(tmp_path, tmp_path / "data"), 2)
    assert f"{data / 'instances.json'}: invalid JSON" in line
