"""The model-to-loss contract: the fields of `CoupAlign.forward_train`'s output and of the training batch, by name.

Both are dicts with these fixed keys (MindSpore 2.10 graph mode compiles dicts with constant string keys, a value
may be None; a namedtuple or dataclass would not pass through `construct`). A field a configuration does not
produce is None in the outputs, and zero-size in the batch (the dataset always has the same columns), so no code
decides what an input is from how many there are.
"""
import mindspore as ms

# name -> what it holds (S = supervised stages, B batch, N proposals, D mask_dim, h x w = the input's stride-4 grid).
TRAIN_OUTPUTS = {
    "stage_logits": "(S', B, 1, h, w) referring logits, one per supervised stage; the last is the output",
    "pixel_embed": "(B, D, h, w) pixel embeddings P",
    "target_embed": "(B, D) the final stage's target embedding a (the aux contrast's anchor)",
    "mask_embeds": "(S, B, N, D) the proposals' mask embeddings Q (without SMA: a as one proposal, (1, B, 1, D))",
    "scores": "(S, B, N) SMA's scores before the softmax (without SMA: zeros (1, B, 1))",
    "class_logits": "(S, B, N, C + 1) the proposals' category logits, the last class 'no object'; None without a "
                    "category head (model.mask_generator.num_classes = 0)",
    "sma_map_logits": "(S'', B, 1, h, w) SMA's own maps (the coupled head); the output logits for the other heads",
}

# name -> what it holds (the dataset's training columns after image, input_ids, attention_mask; src/data/dataset.py).
BATCH = {
    "target": "(B, H, W) float32 0/1, the referent's mask at input resolution",
    "others": "(B, K, H, W) the masks of up to K other objects of the image, zero-padded; K = 0 without SMA",
    "categories": "(B, 1 + K) int32 class of the referent, then of each of `others` (C in empty slots); (B, 0) "
                  "without a category head",
}


def float32_outputs(outputs):
    """The outputs in float32 (float16 under train.amp_level O2/O3; no-op casts at O0); None stays None."""
    return {name: (None if outputs[name] is None else outputs[name].astype(ms.float32)) for name in TRAIN_OUTPUTS}
