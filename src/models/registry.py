"""The registries that choose CoupAlign's parts by name (src/registry.py), one per kind of part.

    IMAGE_ENCODERS        model.image_encoder                        swin, convnet (src/models/swin.py, convnet.py)
    FUSIONS               model.fusion                               wpa          (src/models/wpa.py)
    PIXEL_DECODERS        model.mask_generator.pixel_decoder         msdeform, fpn (src/models/pixel_decoder.py)
    TRANSFORMER_DECODERS  model.mask_generator.transformer_decoder   masked_attention (src/models/transformer_decoder.py)
    SMA_HEADS             model.sma.head                             mixture, coupled (src/models/sma.py, coupled_head.py)
    MODELS                create_model(cfg, name)                    coupalign    (src/models/factory.py)
    LOSS_TERMS            loss.terms                                 referring, aux_contrast, ... (src/models/losses/)

Each registered class builds itself from the config through a `from_config` classmethod next to it, always
``from_config(cfg, *runtime_args)``: the whole Config first (the part reads its own section), then what other
parts fix at build time (see the comments below), so CoupAlign can build any of them.

A new part is one new file in src/models/ that registers its class (``@FUSIONS.register("name")``): each
registry imports the modules of src/models that register in it before its first look-up (src/registry.py,
"Discovery"), so no import list needs editing (docs/developer.md, "Extending").
"""
from __future__ import annotations

from src.registry import Registry

PACKAGE = "src.models"

# from_config(cfg: Config) -> Cell with Swin's stage API (embed, run_stage, stage_output, downsample,
# num_features; src/models/swin.py). CoupAlign keeps it at `swin` whatever its kind, so checkpoints of the
# Swin configurations keep their parameter names.
IMAGE_ENCODERS = Registry("image encoder", "model.image_encoder", PACKAGE, "IMAGE_ENCODERS")
# from_config(cfg: Config, stage: int, visual_dim: int, text_dim: int) -> Cell with
# construct(vis (B, HW, C), words (B, T, D_text), attention_mask (B, T)) -> (V' (B, HW, C), F (B, HW, C),
# L' (B, T, D_text)): the next stage's pixels, the aligned features for the mask generator, the next words.
FUSIONS = Registry("fusion module", "model.fusion", PACKAGE, "FUSIONS")
# from_config(cfg: Config, in_channels: 4 ints) -> Cell with construct(features: 4 NCHW
# maps, strides 4..32) -> (P (B, mask_dim, H/4, W/4), 3 maps (B, conv_dim, H_l, W_l) coarse to fine).
PIXEL_DECODERS = Registry("pixel decoder", "model.mask_generator.pixel_decoder", PACKAGE, "PIXEL_DECODERS")
# from_config(cfg: Config) -> Cell with construct(multi_scale (3 maps), P) ->
# mask embeddings (L + 1, B, N, mask_dim), one set per decoder layer plus the initial queries.
TRANSFORMER_DECODERS = Registry("transformer decoder", "model.mask_generator.transformer_decoder", PACKAGE,
                                "TRANSFORMER_DECODERS")
# from_config(cfg: Config, text_dim: int) -> Cell with forward_train(Q (S, B, N, D), P (B, D, h, w),
# L_g (B, D_text), words, attention_mask, class_logits (S, B, N, C + 1) or None) -> (referring logits per supervised
# stage (S', B, 1, h, w), target embedding a (B, D), scores (S, B, N), SMA's own maps (S'', B, 1, h, w)),
# forward_with_scores (one stage) and construct (inference, the final stage).
SMA_HEADS = Registry("SMA head", "model.sma.head", PACKAGE, "SMA_HEADS")
# fn(cfg: Config, load_pretrained: bool, bert_config) -> Cell (a builder, not a class: src/models/factory.py).
MODELS = Registry("model", "create_model(name=...)", PACKAGE, "MODELS")
# from_config(cfg: Config) -> a LossTerm (src/models/losses/base.py): construct(outputs, batch, matching) -> scalar.
LOSS_TERMS = Registry("loss term", "loss.terms", "src.models.losses", "LOSS_TERMS")
