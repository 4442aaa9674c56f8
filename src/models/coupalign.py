"""CoupAlign: Swin + BERT with word-pixel alignment at every stage, a mask generator, and
sentence-mask alignment (docs/method.md, "Data flow").

    image (B,3,H,W) --Swin stage i--> V_i --WPA_i--> V_i' (next stage), F_i (aligned, to S_o)
    ids (B,T)       --BERT group i--> L_i --WPA_i--> L_i' (next group)            [bidirectional]
    S_o = {LN(F_1)..LN(F_4)} --pixel decoder--> P (B,D,H/4,W/4) + 3 coarse maps
                              --transformer decoder--> Q (S,B,N,D) per supervised stage
    L_g = pool(L_4);  SMA(Q_s, P, L_g) -> M_s (B,1,H/4,W/4);  logits = upsample(M_last) (B,1,H,W)

One forward path: `forward_features` (encoders with fusion, pixel decoder, proposals) feeds both
`construct` (the inference/export signature: `predict`, the final stage upsampled) and `forward_train`
(every supervised stage, the named outputs `CoupAlignCriterion` reads); `CoupAlignWithLoss` joins model and criterion
for the train step.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from src.config import Config, ConfigError
from src.models.bert import BertConfig, BertModel, bert_config_from
from src.models.criterion import CoupAlignCriterion
from src.models.layers import scale_gradient
from src.models.registry import FUSIONS, IMAGE_ENCODERS, PIXEL_DECODERS, SMA_HEADS, TRANSFORMER_DECODERS
from src.models.sma import SentencePixelHead, pool_sentence

NUM_STAGES = 4


class CoupAlign(nn.Cell):
    """The full network. Build it with `create_model(cfg)` (src/models/factory.py: also loads the pretrained
    encoders) or `CoupAlign(cfg)`, `cfg` the whole Config.

    Every part builds itself from the whole Config (`from_config(cfg, *runtime_args)` beside its class); the
    image encoder, the fusion module, the pixel decoder, the transformer decoder and the SMA head are chosen by
    name from their registries (src/models/registry.py).

    Inputs of `construct`: image float32 (B, 3, H, W) ImageNet-normalised, input_ids int32 (B, T),
    attention_mask int32 (B, T). Output: target logits float32 (B, 1, H, W) (mask = logits > 0).
    """

    # Parts that stay float32 under mixed precision (train.amp_level, src/models/amp.py): they make the output
    # logits and SMA's scores from small tensors (N proposals, one sentence), and are called through methods
    # (forward_train) that a float16 flag would not cast; `train_outputs` hands them float32 inputs.
    fp32_parts = ("head", "class_embed")

    def __init__(self, cfg: Config, bert_config: Optional[BertConfig] = None):
        super().__init__()
        if not hasattr(cfg, "model"):  # e.g. the model section, which CoupAlign took before the parts took the Config
            raise TypeError(f"CoupAlign takes the whole Config (CoupAlign(cfg), not CoupAlign(cfg.model)); got "
                            f"{type(cfg).__name__}")
        model_cfg = cfg.model
        self.bidirectional = model_cfg.wpa.bidirectional
        self.use_sma = model_cfg.sma.enabled
        self.deep_supervision = model_cfg.sma.deep_supervision
        self.sentence_pool = model_cfg.sma.sentence_pool
        self.proposal_grad_scale = float(model_cfg.sma.proposal_grad_scale)

        # The image encoder (model.image_encoder; the paper's Swin by default) sits at `swin` whatever its kind, so
        # the Swin configurations keep their checkpoint names.
        self.swin = IMAGE_ENCODERS.get(model_cfg.image_encoder).from_config(cfg)
        bert_config = bert_config or bert_config_from(model_cfg.bert)
        if model_cfg.max_tokens > bert_config.max_position_embeddings:
            raise ConfigError(f"model.max_tokens = {model_cfg.max_tokens} exceeds BERT's max_position_embeddings "
                              f"({bert_config.max_position_embeddings})")
        if bert_config.num_hidden_layers < NUM_STAGES:
            source = f"the checkpoint {model_cfg.bert.pretrained}" if model_cfg.bert.pretrained else \
                "model.bert.num_hidden_layers"
            raise ConfigError(f"BERT has {bert_config.num_hidden_layers} layers ({source}); CoupAlign runs them in "
                              f"{NUM_STAGES} groups, one before each encoder stage, so it needs {NUM_STAGES} or more")
        self.bert = BertModel(bert_config)
        text_dim = bert_config.hidden_size
        # The 12 BERT layers run as 4 groups, one before each WPA (docs/method.md [choice]).
        self.bert_groups = self.bert.layer_groups(NUM_STAGES)
        self.num_bert_layers = bert_config.num_hidden_layers

        channels = self.swin.num_features
        fusion = FUSIONS.get(model_cfg.fusion)
        # The attribute keeps the name `wpa` whatever the module: checkpoint names (wpa.{i}.*) stay stable.
        self.wpa = nn.CellList([fusion.from_config(cfg, i, channels[i], text_dim) for i in range(NUM_STAGES)])

        mg = model_cfg.mask_generator
        self.pixel_decoder = PIXEL_DECODERS.get(mg.pixel_decoder).from_config(cfg, channels)
        if self.use_sma:
            self.transformer_decoder = TRANSFORMER_DECODERS.get(mg.transformer_decoder).from_config(cfg)
            # model.sma.head: mixture (the proposals' weighted mix is the output) or coupled (SMA's selected masks
            # added to the word-pixel path through a zero-initialised gate; src/models/coupled_head.py).
            self.head = SMA_HEADS.get(model_cfg.sma.head).from_config(cfg, text_dim)
            # Category of each proposal, read off its mask embedding (the vector SMA scores against the
            # sentence), so that what a proposal is (a star, a person) is written into that vector. Read by the
            # proposal_class loss and by the coupled head's objectness prior (config model.mask_generator.num_classes;
            # Mask2Former's class_embed, which reads the query state instead). Measured on the quickstart: it does not
            # learn there (research/NOTEBOOK.md, "Ablation").
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
        attention_bias = self.bert.extended_attention_mask(attention_mask)  # (B, 1, 1, T)
        words = self.bert.embed(input_ids)  # (B, T, D_text)
        layer_words = ()
        stage_inputs = ()
        if not self.bidirectional:  # LAVT: all of BERT first
            words, layer_words = self._run_bert(words, attention_bias, 0, self.num_bert_layers, trace, layer_words)
        tokens, height, width = self.swin.embed(image)  # (B, H/4 * W/4, C_0)
        features = ()
        for i in range(NUM_STAGES):
            tokens = self.swin.run_stage(i, tokens, height, width)  # V_i (B, HW, C_i)
            if self.bidirectional:
                start, end = self.bert_groups[i]
                words, layer_words = self._run_bert(words, attention_bias, start, end, trace, layer_words)  # L_i
            if trace:
                stage_inputs = stage_inputs + ((tokens, words, height, width),)
            tokens, aligned, words = self.wpa[i](tokens, words, attention_mask)
            features = features + (self.swin.stage_output(i, aligned, height, width),)  # LN(F_i), NCHW
            tokens, height, width = self.swin.downsample(i, tokens, height, width)
        if trace:
            return features, words, {"layer_words": layer_words, "stage_inputs": stage_inputs}
        return features, words

    def _run_bert(self, words, attention_bias, start, end, trace, layer_words):
        if not trace:
            return self.bert.run_layers(words, attention_bias, start, end), layer_words
        for index in range(start, end):
            words = self.bert.run_layers(words, attention_bias, index, index + 1)
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
        (`construct`), training (`forward_train`) and the benchmark."""
        features, words = self.encode(image, input_ids, attention_mask)
        sentence, pixel_embed, mask_embeds = self.decode(features, words, attention_mask)
        return sentence, pixel_embed, mask_embeds, words

    def forward_train(self, image, input_ids, attention_mask):
        """The training outputs: a dict with the fields of src/models/outputs.py (`TRAIN_OUTPUTS`), everything the
        criterion reads: referring logits per supervised stage, P, the target embedding, the proposals' mask
        embeddings, SMA's scores, the proposals' category logits and SMA's own maps."""
        sentence, pixel_embed, mask_embeds, words = self.forward_features(image, input_ids, attention_mask)
        return self.train_outputs(sentence, pixel_embed, mask_embeds, words, attention_mask)

    def train_outputs(self, sentence, pixel_embed, mask_embeds, words, attention_mask):
        """`forward_train`'s dict from `forward_features`' outputs (the benchmark times this part alone).

        The mixture head supervises its output at every stage and its map is that output; the coupled head outputs
        the final stage once and SMA's maps separately (src/models/coupled_head.py). Without SMA there are no
        proposals: the target embedding stands as a single "proposal" (1, B, 1, D), the scores are zeros (1, B, 1)
        and the map is the output."""
        sentence, pixel_embed, mask_embeds, words = _float32(sentence, pixel_embed, mask_embeds, words)
        if mask_embeds is None:
            logits, _, target_embed, scores = self.head.forward_with_scores(None, pixel_embed, sentence)
            logits = logits.expand_dims(0)  # (1, B, 1, h, w)
            return {"stage_logits": logits, "pixel_embed": pixel_embed, "target_embed": target_embed,
                    "mask_embeds": target_embed.expand_dims(0).expand_dims(2), "scores": scores.expand_dims(0),
                    "class_logits": None, "sma_map_logits": logits}
        class_logits = self.proposal_classes(mask_embeds)  # (S, B, N, C + 1) or None
        stage_logits, target_embed, scores, map_logits = self.head.forward_train(mask_embeds, pixel_embed, sentence,
                                                                                 words, attention_mask, class_logits)
        return {"stage_logits": stage_logits, "pixel_embed": pixel_embed, "target_embed": target_embed,
                "mask_embeds": mask_embeds, "scores": scores, "class_logits": class_logits,
                "sma_map_logits": map_logits}

    def proposal_classes(self, mask_embeds):
        """The proposals' category logits ``(..., N, C + 1)`` from their mask embeddings ``(..., N, D)`` (every stage
        or the final one); None without a category head."""
        return None if self.class_embed is None else self.class_embed(mask_embeds)

    def predict(self, sentence, pixel_embed, mask_embeds, words, attention_mask, height, width):
        """The final stage's target logits, upsampled to (height, width) -> (B, 1, H, W). Two ints, not a
        (H, W) tuple: with a tuple argument here graph mode failed to compile ("the function has 6
        parameters but 3 were provided", MindSpore 2.10)."""
        sentence, pixel_embed, mask_embeds, words = _float32(sentence, pixel_embed, mask_embeds, words)
        mask_embed = None if mask_embeds is None else mask_embeds[-1]  # final stage only
        class_logits = self.proposal_classes(mask_embed)  # (B, N, C + 1) or None
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
    """(image, input_ids, attention_mask, target (B, H, W), others (B, K, H, W), categories (B, 1 + K)) -> the
    criterion's losses (a tuple named by ``loss_names``, the total first) for the train step. The batch always has
    these columns; ``others`` and ``categories`` are zero-size where the configuration has none
    (src/models/outputs.py, `BATCH`)."""

    def __init__(self, model: CoupAlign, criterion: CoupAlignCriterion):
        super().__init__(auto_prefix=False)
        self.model = model
        self.criterion = criterion
        self.loss_names = criterion.loss_names

    def construct(self, image, input_ids, attention_mask, target, others, categories):
        outputs = self.model.forward_train(image, input_ids, attention_mask)
        return self.criterion(outputs, {"target": target, "others": others, "categories": categories})
