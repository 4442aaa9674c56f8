"""CoupAlign: Swin + BERT with word-pixel alignment at every stage, a mask generator, and
sentence-mask alignment (docs/method.md, "Data flow").

    image (B,3,H,W) --Swin stage i--> V_i --WPA_i--> V_i' (next stage), F_i (aligned, to S_o)
    ids (B,T)       --BERT group i--> L_i --WPA_i--> L_i' (next group)            [bidirectional]
    S_o = {LN(F_1)..LN(F_4)} --pixel decoder--> P (B,D,H/4,W/4) + 3 coarse maps
                              --transformer decoder--> Q (S,B,N,D) per supervised stage
    L_g = pool(L_4);  SMA(Q_s, P, L_g) -> M_s (B,1,H/4,W/4);  logits = upsample(M_last) (B,1,H,W)

`CoupAlign.construct` is the inference/export signature; `CoupAlign.forward_train` returns what
`CoupAlignCriterion` needs; `CoupAlignWithLoss` joins the two for the train step.
"""
from __future__ import annotations

from typing import Optional

from mindspore import nn, ops

from src.config import ConfigError, LossSection, ModelSection, swin_arch
from src.models.bert import BertConfig, BertModel, load_converted_bert
from src.models.criterion import CoupAlignCriterion
from src.models.pixel_decoder import build_pixel_decoder
from src.models.sma import SentenceMaskAlignment, SentencePixelHead, pool_sentence
from src.models.swin import SwinTransformer
from src.models.transformer_decoder import MaskedTransformerDecoder
from src.models.wpa import WordPixelAlignment

NUM_STAGES = 4


def bert_config_from(section) -> BertConfig:
    """The BERT architecture: the converted checkpoint's own config when `pretrained` is set, else the
    architecture keys of the `model.bert` section."""
    if section.pretrained:
        config, _, _ = load_converted_bert(section.pretrained)
        return config
    return BertConfig(vocab_size=section.vocab_size, hidden_size=section.hidden_size,
                      num_hidden_layers=section.num_hidden_layers, num_attention_heads=section.num_attention_heads,
                      intermediate_size=section.intermediate_size,
                      max_position_embeddings=section.max_position_embeddings,
                      type_vocab_size=section.type_vocab_size, layer_norm_eps=section.layer_norm_eps,
                      hidden_dropout_prob=section.hidden_dropout_prob,
                      attention_probs_dropout_prob=section.attention_probs_dropout_prob)


class CoupAlign(nn.Cell):
    """The full network. Build it with `CoupAlign(cfg.model)` (or `create_model(cfg)`).

    Inputs of `construct`: image float32 (B, 3, H, W) ImageNet-normalised, input_ids int32 (B, T),
    attention_mask int32 (B, T). Output: target logits float32 (B, 1, H, W) (mask = logits > 0).
    """

    def __init__(self, cfg: ModelSection, bert_config: Optional[BertConfig] = None):
        super().__init__()
        self.bidirectional = cfg.wpa.bidirectional
        self.use_sma = cfg.sma.enabled
        self.deep_supervision = cfg.sma.deep_supervision
        self.sentence_pool = cfg.sma.sentence_pool

        grid = -(-cfg.image_size // cfg.swin.patch_size)  # patches per side (PatchEmbed pads up)
        self.swin = SwinTransformer(**swin_arch(cfg.swin), ape_grid=(grid, grid) if cfg.swin.ape else None)
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
        self.wpa = nn.CellList([
            WordPixelAlignment(channels[i], text_dim, num_heads=cfg.wpa.word_heads, bidirectional=self.bidirectional)
            for i in range(NUM_STAGES)])

        mg = cfg.mask_generator
        decoder_kwargs = {}
        if mg.pixel_decoder == "msdeform":
            decoder_kwargs = dict(num_encoder_layers=mg.encoder_layers, n_heads=mg.encoder_heads,
                                  n_points=mg.encoder_points, dim_feedforward=mg.encoder_ffn_dim,
                                  recompute_sampling=mg.recompute_sampling)
        self.pixel_decoder = build_pixel_decoder(mg.pixel_decoder, channels, mg.conv_dim, mg.mask_dim,
                                                 **decoder_kwargs)
        if self.use_sma:
            self.transformer_decoder = MaskedTransformerDecoder(
                in_channels=mg.conv_dim, hidden_dim=mg.conv_dim, num_queries=mg.num_queries, nheads=mg.decoder_heads,
                dim_feedforward=mg.decoder_ffn_dim, dec_layers=mg.decoder_layers, mask_dim=mg.mask_dim)
            self.head = SentenceMaskAlignment(text_dim, mg.mask_dim, weighting=cfg.sma.weighting,
                                              geometry=cfg.sma.mask_geometry, reasoning_layers=cfg.sma.reasoning_layers,
                                              reasoning_heads=mg.decoder_heads)
            # Category of each proposal, read off its mask embedding (the vector SMA scores against the
            # sentence), so that what a proposal is (a star, a person) is written into that vector. Used by
            # the training loss only (config model.mask_generator.num_classes; Mask2Former's class_embed).
            self.class_embed = nn.Dense(mg.mask_dim, mg.num_classes + 1) if mg.num_classes else None
        else:
            # "No SMA" ablation: no proposals, the sentence meets the pixels directly.
            self.transformer_decoder = None
            self.head = SentencePixelHead(text_dim, mg.mask_dim)
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
        sentence = pool_sentence(words, attention_mask, self.sentence_pool)  # L_g (B, D_text)
        pixel_embed, multi_scale = self.pixel_decoder(features)  # P (B, D, H/4, W/4)
        if not self.use_sma:
            return sentence, pixel_embed, None
        mask_embeds = self.transformer_decoder(multi_scale, pixel_embed)  # (L+1, B, N, D)
        if not self.deep_supervision:
            mask_embeds = mask_embeds[-1:]
        return sentence, pixel_embed, mask_embeds

    def forward_heads(self, image, input_ids, attention_mask):
        """-> (SMA logits per supervised stage (S, B, 1, h, w), P (B, D, h, w), target embedding a (B, D)
        of the final stage, mask embeddings Q (S, B, N, D), SMA scores (S, B, N)).

        Without SMA there are no proposals: Q is the target embedding as a single "proposal"
        (1, B, 1, D) and the scores are zeros (1, B, 1).
        """
        features, words = self.encode(image, input_ids, attention_mask)
        sentence, pixel_embed, mask_embeds = self.decode(features, words, attention_mask)
        if mask_embeds is None:
            logits, _, target_embed, scores = self.head.forward_with_scores(None, pixel_embed, sentence)
            return (logits.expand_dims(0), pixel_embed, target_embed, target_embed.expand_dims(0).expand_dims(2),
                    scores.expand_dims(0))
        stage_logits = ()
        stage_scores = ()
        target_embed = None
        for s in range(mask_embeds.shape[0]):
            logits, _, target_embed, scores = self.head.forward_with_scores(mask_embeds[s], pixel_embed, sentence,
                                                                            words, attention_mask)
            stage_logits = stage_logits + (logits,)
            stage_scores = stage_scores + (scores,)
        return ops.stack(stage_logits), pixel_embed, target_embed, mask_embeds, ops.stack(stage_scores)

    def construct(self, image, input_ids, attention_mask):
        features, words = self.encode(image, input_ids, attention_mask)
        sentence, pixel_embed, mask_embeds = self.decode(features, words, attention_mask)
        mask_embed = None if mask_embeds is None else mask_embeds[-1]  # final stage only
        logits, _, _ = self.head(mask_embed, pixel_embed, sentence, words, attention_mask)  # (B, 1, H/4, W/4)
        return ops.interpolate(logits, size=(image.shape[2], image.shape[3]), mode="bilinear", align_corners=False)


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
        stage_logits, pixel_embed, target_embed, mask_embeds, scores = self.model.forward_heads(
            image, input_ids, attention_mask)
        if self.classify:
            other_masks = extra[0] if len(extra) > 1 else None
            class_logits = self.model.class_embed(mask_embeds)  # (S, B, N, C + 1)
            return self.criterion(stage_logits, target, pixel_embed, target_embed, None, None, mask_embeds, scores,
                                  other_masks, class_logits, extra[-1])
        other_masks = extra[0] if extra else None
        return self.criterion(stage_logits, target, pixel_embed, target_embed, None, None, mask_embeds, scores,
                              other_masks)


def build_criterion(loss: LossSection, deep_supervision: bool = True, use_sma: bool = True,
                    num_classes: int = 0) -> CoupAlignCriterion:
    """The criterion of `loss`; without SMA (the "no SMA" ablation) there are no proposals to supervise.
    `num_classes` > 0 (model.mask_generator.num_classes) adds the proposals' category loss."""
    return CoupAlignCriterion(ce_weights=(loss.ce_weight_bg, loss.ce_weight_fg), dice_weight=loss.dice_weight,
                              aux_weight=loss.aux_weight, aux_temperature=loss.aux_temperature,
                              aux_num_fg=loss.aux_num_fg, aux_num_bg=loss.aux_num_bg,
                              aux_hard_ratio=loss.aux_hard_ratio, deep_supervision=deep_supervision,
                              use_aux=loss.aux_enabled, proposal_loss=loss.proposal_loss if use_sma else "none",
                              proposal_targets=loss.proposal_targets, proposal_weight=loss.proposal_weight,
                              sma_ce_weight=loss.sma_ce_weight, match_score_weight=loss.match_score_weight,
                              num_classes=num_classes if use_sma else 0, class_weight=loss.class_weight,
                              no_object_weight=loss.no_object_weight)
