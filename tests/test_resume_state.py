"""A step checkpoint holds the dynamic loss scale (issue 22, finding 10): resuming a run with loss scaling
continues from the scale and the overflow-free count it had reached, not from train.loss_scale again."""
import logging

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from src.engine.checkpoint import (CheckpointManager, CheckpointMismatchError, TrainState, load_train_step,
                                   read_checkpoint, split_meta)
from src.engine.train_step import LOSS_SCALE_PARAMS, TrainStep


class _Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(3, 1)

    def construct(self, x):
        loss = (self.dense(x) ** 2).mean()
        return loss, loss


def _step(loss_scale=1024.0):
    net = _Net()
    return TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.1), loss_scale=loss_scale)


def _scale(step):
    return float(step.scaler.scale_value.asnumpy()), int(step.scaler.counter.asnumpy())


def test_loss_scale_is_saved_and_restored(tmp_path):
    trained = _step()
    trained(Tensor(np.ones((2, 3), np.float32)))  # one real step: the counter moves to 1
    trained.scaler.scale_value.set_data(Tensor(256.0, ms.float32))  # as after two overflows
    assert _scale(trained) == (256.0, 1)
    path = CheckpointManager(str(tmp_path)).save(trained, TrainState(step=5), 0, "")
    entries = read_checkpoint(path)
    assert set(LOSS_SCALE_PARAMS) <= set(entries)

    resumed = _step()
    params, state, _ = split_meta(entries)
    load_train_step(resumed, params, path)
    assert state.step == 5 and _scale(resumed) == (256.0, 1)
    np.testing.assert_array_equal(resumed.net_with_loss.dense.weight.asnumpy(),
                                  trained.net_with_loss.dense.weight.asnumpy())


def test_checkpoint_without_loss_scale_resumes_with_the_initial_one(tmp_path, caplog):
    path = CheckpointManager(str(tmp_path)).save(_step(loss_scale=1.0), TrainState(step=2), 0, "")  # no scaler
    resumed = _step()
    params, _, _ = split_meta(read_checkpoint(path))
    with caplog.at_level(logging.WARNING):
        load_train_step(resumed, params, path)
    assert _scale(resumed) == (1024.0, 0) and "holds no dynamic loss scale" in caplog.text
    del params["dense.weight"]
    with pytest.raises(CheckpointMismatchError, match="dense.weight"):  # anything else missing still refuses it
        load_train_step(_step(), params, path)


def test_artifacts_of_bare_weights_are_none_and_of_a_broken_file_an_error(tmp_path):
    """A checkpoint of weights only (ms.save_checkpoint of a Cell, no config or vocabulary) has no artifacts:
    MindSpore's filtered load raises on it ("parameter dict is empty after filter"), which read_artifacts
    reported as an unreadable file. A truncated file is still an error."""
    from src.engine.checkpoint import CheckpointIOError, read_artifacts

    path = str(tmp_path / "bare.ckpt")
    ms.save_checkpoint(_Net(), path)
    assert read_artifacts(path) == {}
    broken = str(tmp_path / "broken.ckpt")
    with open(path, "rb") as f, open(broken, "wb") as g:
        g.write(f.read()[:20])
    with pytest.raises(CheckpointIOError, match="cannot be read"):
        read_artifacts(broken)
