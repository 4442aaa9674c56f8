"""tools/pretrain_visual.py, which builds the quickstart's image encoder (scripts/pretrain_quickstart_encoder.sh ->
weights/quickstart_convnet.ckpt): the label map of each cell, and a short run whose checkpoint train.py loads."""
import numpy as np
import pytest


@pytest.mark.slow  # the tool end to end (~1 min); the default suite keeps the unit test below
def test_pretrain_visual_writes_an_encoder_checkpoint_that_train_loads(trained, tmp_path):
    """tools/pretrain_visual.py on the tiny config: a few steps of category and colour segmentation, the val
    accuracies of both printed, and a checkpoint whose names are the Swin's own, which CoupAlign loads strictly as
    model.swin.pretrained (every Swin parameter replaced)."""
    import mindspore as ms

    from src.config import load_config
    from src.models.factory import create_model
    from test_entry_scripts import run

    out = str(tmp_path / "swin.ckpt")
    proc = run("tools/pretrain_visual.py", "--config_path", trained["config"], "--data_root", trained["data"],
               "--out", out, "--steps", "2", "--eval_every", "2", "--batch_size", "2", "--fields", "category_id,color")
    assert "category_id: val foreground-pixel accuracy" in proc.stdout
    assert "color: val foreground-pixel accuracy" in proc.stdout
    saved = ms.load_checkpoint(out)
    cfg = load_config(trained["config"], [f"--model.swin.pretrained={out}", "--model.bert.pretrained="])
    model = create_model(cfg)
    own = {p.name: p for p in model.swin.get_parameters()}
    assert {f"swin.{k}" for k in saved} == set(own)
    name = "swin.layers.0.blocks.0.attn.qkv.weight"
    np.testing.assert_array_equal(own[name].asnumpy(), saved[name[len("swin."):]].asnumpy())


def test_pretrain_labels_each_cell_by_the_field_of_the_object_covering_most_of_it(tmp_path):
    """The label map of tools/pretrain_visual.py: a cell takes the field value of an object covering more than
    half of it, other cells are background, a value unseen in training is background; a missing field is an
    error naming the file, the annotation and the field."""
    from src.errors import ConfigError
    from tools.pretrain_visual import field_cells, field_classes

    masks = {1: np.zeros((8, 8), np.uint8), 2: np.zeros((8, 8), np.uint8)}
    masks[1][0:4, 0:3] = 1  # 0.75 of cell (0, 0)
    masks[2][4:8, 4:6] = 1  # half of cell (1, 1): not more than half

    class Split:  # the two members of a refer split that the labelling reads
        instances_path = "instances.json"
        annotations = {1: {"color": "red", "category_id": 3}, 2: {"color": "blue", "category_id": 5}}

        def image_annotations(self, image_id):
            return [1, 2]

        def load_mask(self, ann):
            return masks[ann]

    classes = field_classes(Split(), "color")
    assert classes == {"blue": 0, "red": 1}
    label = field_cells(Split(), 0, 8, 4, "color", classes)
    np.testing.assert_array_equal(label, [[1, 2], [2, 2]])  # red where covered 0.75; object 2 covers only 0.5
    label = field_cells(Split(), 0, 8, 4, "color", {"blue": 0})  # red unseen in training: background
    np.testing.assert_array_equal(label, [[1, 1], [1, 1]])
    with pytest.raises(ConfigError, match=r"instances.json: annotation 1 has no field 'shape'"):
        field_classes(Split(), "shape")
