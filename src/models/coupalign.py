"""CoupAlign: Swin + BERT with word-pixel alignment at every stage, a mask generator, and
sentence-mask alignment (docs/method.md, "Data flow").

    image (B,3,H,W) --Swin stage i--> V_i --WPA_i--> V_i' (next stage), F_i (aligned, to S_o)
    ids (B,T)       --BERT group i--> L_i --WPA_i--> L_i' (next group)            [bidirectional]
    S_o = {LN(F_1)..LN(F_4)} --pixel decoder--> P (B,D,H/4,W/4) + 3 coarse maps
                              --transformer decoder--> Q (S,B,N,D) per supervised stage
    L_g = pool(L_4);  SMA(Q_s, P, L_g) -> M_s (B,1,H/4,W/4);  logits = upsample(M_last) (B,1,H,W)

One forward path: `forward_features` (encoders with fusion, pixel decoder, proposals) feeds both
`construct` (the inference/export signature: `predict`, the final stage upsampled) and `forward_heads`
(every supervised stage, what `CoupAlignCriterion` needs); `CoupAlignWithLoss` joins model and criterion
for the train step.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from src.config import ConfigError, ModelSection
from src.models.bert import BertConfig, BertModel, bert_config_from
from src.models.criterion import CoupAlignCriterion, build_criterion  # noqa: F401  (build_criterion re-exported)
from src.models.layers import scale_gradient
from src.models.registry import FUSIONS, IMAGE_ENCODERS, PIXEL_DECODERS, SMA_HEADS, TRANSFORMER_DECODERS, discover
from src.models.sma import SentencePixelHead, pool_sentence

NUM_STAGES = 4


class CoupAlign(nn.Cell):
    """The full network. Build it with `CoupAlign(cfg.model)` (or `create_model(cfg)`).

    Every part builds itself from the config (`from_config` beside its class); the fusion module, the pixel
    decoder and the transformer decoder are chosen by name from their registries (src/models/registry.py).

    Inputs of `construct`: image float32 (B, 3, H, W) ImageNet-normalised, input_ids int32 (B, T),
    attention_mask int32 (B, T). Output: target logits float32 (B, 1, H, W) (mask = logits > 0).
    """

    # Parts that stay float32 under mixed precision (train.amp_level, src/models/amp.py): they make the output
    # logits and SMA's scores from small tensors (N proposals, one sentence), and are called through methods
    # (forward_train) that a float16 flag would not cast; `forward_head` hands them float32 inputs.
    fp32_parts = ("head", "class_embed")

    def __init__(self, cfg: ModelSection, bert_config: Optional[BertConfig] = None):
        super().__init__()
        discover()  # parts defined in any module of src/models are registered before they are looked up
        self.bidirectional = cfg.wpa.bidirectional
        self.use_sma = cfg.sma.enabled
        self.deep_supervision = cfg.sma.deep_supervision
        self.sentence_pool = cfg.sma.sentence_pool
        self.proposal_grad_scale = float(cfg.sma.proposal_grad_scale)

        # The image encoder (model.image_encoder; the paper's Swin by default) sits at `swin` whatever its kind, so
        # the Swin configurations keep their checkpoint names.
        self.swin = IMAGE_ENCODERS.get(cfg.image_encoder)(cfg)
        bert_config = bert_config or bert_config_from(cfg.bert)
        if cfg.max_tokens > bert_config.max_position_embeddings:
            raise ConfigError(f"model.max_tokens = {cfg.max_tokens} exceeds BERT's max_position_embeddings "
                              f"({bert_config.max_position_embeddings})")
        self.bert = BertModel(bert_config)
        text_dim = bert_config.hidden_size
        # The 12 BERT layers run as 4 groups, one before each WPA (docs/method.md [choice]).
        self.bert_groups = self.bert.layer_groups(NUM_STAGES)
        self.num_bert_layers = bert_config.num_hidden_layers

        channels = self.swin.num_features
        fusion = FUSIONS.get(cfg.fusion)
        # The attribute keeps the name `wpa` whatever the module: checkpoint names (wpa.{i}.*) stay stable.
        self.wpa = nn.CellList([fusion.from_config(cfg, i, channels[i], text_dim) for i in range(NUM_STAGES)])

        mg = cfg.mask_generator
        self.pixel_decoder = PIXEL_DECODERS.get(mg.pixel_decoder).from_config(mg, channels)
        if self.use_sma:
            self.transformer_decoder = TRANSFORMER_DECODERS.get(mg.transformer_decoder).from_config(mg)
            # model.sma.head: mixture (the proposals' weighted mix is the output) or coupled (SMA's selected masks
            # added to the word-pixel path through a zero-initialised gate; src/models/coupled_head.py).
            self.head = SMA_HEADS.get(cfg.sma.head).from_config(cfg, text_dim)
            # Category of each proposal, read off its mask embedding (the vector SMA scores against the
            # sentence), so that what a proposal is (a star, a person) is written into that vector. Used by
            # the training loss only (config model.mask_generator.num_classes; Mask2Former's class_embed).
            self.class_embed = nn.Dense(mg.mask_dim, mg.num_classes + 1) if mg.num_classes else None
        else:
            # "No SMA" ablation: no proposals, the sentence meets the pixels directly.
            self.transformer_decoder = None
            self.head = SentencePixelHead.from_config(cfg, text_dim)
            self.class_embed = None

    # ------------------------------------------------------------------------------------------
    def encode(self, image, input_ids, attention_mask, trace=False):
        """Both encoders with WPA at each stage -> (S_o = 4 NCHW maps, word features L (B, T, D_text)).

        With ``trace=True`` (a Python constant; `src/engine/diagnostics.py` uses it eagerly) a third item
        is returned: ``{"layer_words": words after every BERT layer, "stage_inputs": (V_i, L_i, h, w) fed
        to each WPA}``.
        """
        ext_mask = self.bert.extended_attention_mask(attention_mask)  # (B, 1, 1, T)
        words = self.bert.embed(input_ids)  # (B, T, D_text)
        layer_words = ()
        stage_inputs = ()
        if not self.bidirectional:  # LAVT: all of BERT first
            words, layer_words = self._run_bert(words, ext_mask, 0, self.num_bert_layers, trace, layer_words)
        tokens, height, width = self.swin.embed(image)  # (B, H/4 * W/4, C_0)
        features = ()
        for i in range(NUM_STAGES):
            tokens = self.swin.run_stage(i, tokens, height, width)  # V_i (B, HW, C_i)
            if self.bidirectional:
                start, end = self.bert_groups[i]
                words, layer_words = self._run_bert(words, ext_mask, start, end, trace, layer_words)  # L_i
            if trace:
                stage_inputs = stage_inputs + ((tokens, words, height, width),)
            tokens, aligned, words = self.wpa[i](tokens, words, attention_mask)
            features = features + (self.swin.stage_output(i, aligned, height, width),)  # LN(F_i), NCHW
            tokens, height, width = self.swin.downsample(i, tokens, height, width)
        if trace:
            return features, words, {"layer_words": layer_words, "stage_inputs": stage_inputs}
        return features, words

    def _run_bert(self, words, ext_mask, start, end, trace, layer_words):
        if not trace:
            return self.bert.run_layers(words, ext_mask, start, end), layer_words
        for index in range(start, end):
            words = self.bert.run_layers(words, ext_mask, index, index + 1)
            layer_words = layer_words + (words,)
        return words, layer_words

    def decode(self, features, words, attention_mask):
        """Sentence, pixel decoder and mask generator -> (L_g (B, D_text), P (B, D, h, w), Q per supervised
        stage (S, B, N, D) or None without SMA). Shared by inference, training and the diagnostics."""
        sentence = self.sentence_feature(words, attention_mask)  # L_g (B, D_text)
        pixel_embed, multi_scale = self.pixel_decoder(features)  # P (B, D, H/4, W/4)
        # The proposal branch reads the trunk's maps through a gradient scale (model.sma.proposal_grad_scale; the
        # criterion scales its proposal masks' pull on P by the same factor): its losses can then shape the
        # trunk only that much.
        memory = ()
        for level in multi_scale:
            memory = memory + (scale_gradient(level, self.proposal_grad_scale),)
        return sentence, pixel_embed, self.generate_masks(memory, scale_gradient(pixel_embed, self.proposal_grad_scale))

    def sentence_feature(self, words, attention_mask):
        """L_g (B, D_text): the sentence as SMA reads it (model.sma.sentence_pool)."""
        return pool_sentence(words, attention_mask, self.sentence_pool)

    def generate_masks(self, multi_scale, pixel_embed):
        """The proposals' mask embeddings Q per supervised stage (S, B, N, D), or None without SMA."""
        if not self.use_sma:
            return None
        mask_embeds = self.transformer_decoder(multi_scale, pixel_embed)  # (L+1, B, N, D)
        if not self.deep_supervision:
            mask_embeds = mask_embeds[-1:]
        return mask_embeds

    def forward_features(self, image, input_ids, attention_mask):
        """Encoders with fusion, then decoding -> (L_g (B, D_text), P (B, D, h, w), Q (S, B, N, D) or None
        without SMA, words L (B, T, D_text)): everything the heads read. The one path shared by inference
        (`construct`), training (`forward_heads`) and the benchmark."""
        features, words = self.encode(image, input_ids, attention_mask)
        sentence, pixel_embed, mask_embeds = self.decode(features, words, attention_mask)
        return sentence, pixel_embed, mask_embeds, words

    def forward_heads(self, image, input_ids, attention_mask):
        """-> (referring logits per supervised stage (S', B, 1, h, w), P (B, D, h, w), target embedding a (B, D)
        of the final stage, mask embeddings Q (S, B, N, D), SMA scores (S, B, N), SMA's own maps (S'', B, 1, h, w)).

        The mixture head supervises its output at every stage and its map is that output; the coupled head
        outputs the final stage once and SMA's maps separately (src/models/coupled_head.py). Without SMA there
        are no proposals: Q is the target embedding as a single "proposal" (1, B, 1, D), the scores are zeros
        (1, B, 1) and the map is the output.
        """
        sentence, pixel_embed, mask_embeds, words = self.forward_features(image, input_ids, attention_mask)
        return self.forward_head(sentence, pixel_embed, mask_embeds, words, attention_mask)

    def forward_head(self, sentence, pixel_embed, mask_embeds, words, attention_mask):
        """`forward_heads` from `forward_features`' outputs (the benchmark times this part alone)."""
        sentence, pixel_embed, mask_embeds, words = _float32(sentence, pixel_embed, mask_embeds, words)
        if mask_embeds is None:
            logits, _, target_embed, scores = self.head.forward_with_scores(None, pixel_embed, sentence)
            logits = logits.expand_dims(0)  # (1, B, 1, h, w)
            return (logits, pixel_embed, target_embed, target_embed.expand_dims(0).expand_dims(2),
                    scores.expand_dims(0), logits)
        class_logits = None if self.class_embed is None else self.class_embed(mask_embeds)  # (S, B, N, C + 1)
        stage_logits, target_embed, scores, map_logits = self.head.forward_train(mask_embeds, pixel_embed, sentence,
                                                                                 words, attention_mask, class_logits)
        return stage_logits, pixel_embed, target_embed, mask_embeds, scores, map_logits

    def predict(self, sentence, pixel_embed, mask_embeds, words, attention_mask, height, width):
        """The final stage's target logits, upsampled to (height, width) -> (B, 1, H, W). Two ints, not a
        (H, W) tuple: with a tuple argument here graph mode failed to compile ("the function has 6
        parameters but 3 were provided", MindSpore 2.10)."""
        sentence, pixel_embed, mask_embeds, words = _float32(sentence, pixel_embed, mask_embeds, words)
        mask_embed = None if mask_embeds is None else mask_embeds[-1]  # final stage only
        class_logits = None if self.class_embed is None else self.class_embed(mask_embed)  # (B, N, C + 1)
        logits, _, _ = self.head(mask_embed, pixel_embed, sentence, words, attention_mask, class_logits)  # (B, 1, h, w)
        logits = logits.astype(ms.float32)  # float16 under train.amp_level O2/O3; the output is float32
        return ops.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)

    def construct(self, image, input_ids, attention_mask):
        sentence, pixel_embed, mask_embeds, words = self.forward_features(image, input_ids, attention_mask)
        return self.predict(sentence, pixel_embed, mask_embeds, words, attention_mask, image.shape[2], image.shape[3])


def _float32(*tensors):
    """The heads' inputs in float32 (float16 under train.amp_level O2/O3; no-op casts at O0); None stays None."""
    return tuple(None if x is None else x.astype(ms.float32) for x in tensors)


class CoupAlignWithLoss(nn.Cell):
    """(image, input_ids, attention_mask, target (B, H, W)[, others (B, K, H, W)][, categories (B, 1 + K)]) -> the
    criterion's losses (a tuple named by ``loss_names``, the total first) for the train step. ``categories`` is
    given exactly when the criterion classifies the proposals (``criterion.num_classes`` > 0)."""

    def __init__(self, model: CoupAlign, criterion: CoupAlignCriterion):
        super().__init__(auto_prefix=False)
        if criterion.num_classes and model.class_embed is None:
            raise ValueError("the criterion classifies the proposals but the model has no category head "
                             "(model.mask_generator.num_classes = 0)")
        self.model = model
        self.criterion = criterion
        self.loss_names = criterion.loss_names
        self.classify = bool(criterion.num_classes)

    def construct(self, image, input_ids, attention_mask, target, *extra):
        stage_logits, pixel_embed, target_embed, mask_embeds, scores, map_logits = self.model.forward_heads(
            image, input_ids, attention_mask)
        categories = extra[-1] if self.classify else None
        others = extra[0] if len(extra) > int(self.classify) else None
        class_logits = self.model.class_embed(mask_embeds) if self.classify else None  # (S, B, N, C + 1)
        pixel_class_logits = None
        if self.criterion.pixel_classes:  # the proposals' classifier read at every pixel embedding
            pixel_class_logits = self.model.class_embed(pixel_embed.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # (B, C + 1, h, w)
        return self.criterion(stage_logits, target, pixel_embed, target_embed, None, None, mask_embeds, scores,
                              others, class_logits, categories, pixel_class_logits, map_logits)
