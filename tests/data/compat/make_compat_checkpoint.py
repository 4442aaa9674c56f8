"""Writes the checkpoint-compatibility fixture of tests/test_checkpoint_compat.py: a tiny CoupAlign with every
optional part switched on (msdeform and fpn decoders, category head, mask geometry, reasoning layers, Swin
ape), its weights as train.py saves them, one batch and the outputs the writing commit computed.

Run once on the commit named in the file name (`python tests/data/compat/make_compat_checkpoint.py COMMIT`);
the files it writes are what later commits must still load and reproduce. Never regenerate them to make the
test pass: that would hide exactly the break the test exists for."""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from src.config import config_from_dict  # noqa: E402
from src.models.coupalign import CoupAlign, CoupAlignWithLoss  # noqa: E402
from src.models.criterion import CoupAlignCriterion  # noqa: E402

IMAGE, TOKENS, VOCAB, OTHERS = 32, 6, 50, 2
TINY = {
    "model": {
        "image_size": IMAGE, "max_tokens": TOKENS,
        "swin": {"preset": "", "embed_dim": 8, "depths": [2, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                 "window_size": 2, "drop_path_rate": 0.0, "ape": True},
        "bert": {"vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
                 "intermediate_size": 32, "max_position_embeddings": 16, "hidden_dropout_prob": 0.0,
                 "attention_probs_dropout_prob": 0.0},
        "wpa": {"word_heads": 2},
        "mask_generator": {"conv_dim": 16, "mask_dim": 16, "encoder_layers": 1, "encoder_heads": 2,
                           "encoder_ffn_dim": 32, "num_queries": 4, "decoder_layers": 2, "decoder_heads": 2,
                           "decoder_ffn_dim": 32, "num_classes": 3},
        "sma": {"mask_geometry": True, "reasoning_layers": 1, "sentence_pool": "mean"},
    },
    # The terms the fixture's commit summed for this model (it derived the class loss from num_classes = 3); named
    # since loss.terms exists. Its outputs file holds them under the old names: seg_loss = referring, proposal_loss
    # = proposal_masks + proposal_selection, class_loss = proposal_class.
    "loss": {"aux_num_fg": 8, "aux_num_bg": 16,
             "terms": ["referring", "aux_contrast", "proposal_masks", "proposal_selection", "proposal_class"]},
    "data": {"max_other_objects": OTHERS},
}
VARIANTS = {"msdeform": {}, "fpn": {"model.mask_generator.pixel_decoder": "fpn"}}


def batch():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32)
    ids = rng.integers(1, VOCAB, (2, TOKENS)).astype(np.int32)
    mask = np.ones((2, TOKENS), np.int32)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    target = np.zeros((2, IMAGE, IMAGE), np.float32)
    target[0, 4:20, 6:14] = 1
    target[1, 12:30, 10:28] = 1
    others = np.zeros((2, OTHERS, IMAGE, IMAGE), np.uint8)
    others[0, 0, 22:30, 20:30] = 1
    others[1, 0, 1:10, 1:12] = 1
    categories = np.array([[0, 2, 3], [1, 0, 3]], np.int32)  # 3 = "no object" in the empty slot
    return dict(image=image, input_ids=ids, attention_mask=mask, target=target, others=others, categories=categories)


def main(commit: str) -> None:
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    out_dir = os.path.dirname(os.path.abspath(__file__))
    inputs = batch()
    for name, overrides in VARIANTS.items():
        cfg = config_from_dict(TINY, overrides)
        ms.set_seed(0)
        model = CoupAlign(cfg)
        model.set_train(False)
        logits = model(Tensor(inputs["image"]), Tensor(inputs["input_ids"]), Tensor(inputs["attention_mask"]))
        criterion = CoupAlignCriterion.from_config(cfg)
        net = CoupAlignWithLoss(model, criterion)
        losses = net(*[Tensor(inputs[k]) for k in ("image", "input_ids", "attention_mask", "target", "others",
                                                   "categories")])
        stem = os.path.join(out_dir, f"tiny_{name}_{commit}")
        ms.save_checkpoint(model, stem + ".ckpt")
        np.savez(stem + "_outputs.npz", logits=logits.asnumpy(),
                 losses=np.array([float(v.asnumpy()) for v in losses], np.float32),
                 loss_names=np.array(criterion.loss_names), **inputs)
        print(stem, logits.shape, [float(v.asnumpy()) for v in losses])


if __name__ == "__main__":
    main(sys.argv[1])
