"""The coupled SMA head (``model.sma.head: coupled``): word-pixel path plus SMA's selected proposal masks.

docs/method.md, "Two readings of SMA". The abstract says the proposals are weighted by the sentence "and
finally projected back to aggregate the pixels for the target"; the mixture head (src/models/sma.py) reads
that as the only output path, ``M = (sum_n w_n Q_n) . P``. This head reads it as *coupling*: SMA's selected
masks are projected back onto the per-pixel (word-pixel aligned) logits and added to them::

    g_p = Linear_p(L_g)                                     # the sentence as a pixel query
    M_pix = g_p . P                                         # word-pixel path (the "no SMA" head's logits)
    s_n = exp(t) * (K_n . g / sqrt(D)) + log(1 - p_n(no object))   # t learnable (0 at init), objectness prior
          [+ beta * <M_pix>_n]                              # model.sma.pixel_agreement: the word-pixel path's
                                                            # mean logit inside proposal n, beta learnable (1 at init)
    w = softmax_n(s)
    M_sma = logit(sum_n w_n sigmoid(Q_n . P))               # SMA's map: the selected proposal masks
    M = M_pix + alpha * M_sma                               # alpha learnable, 0 at init

At ``alpha = 0`` the output is exactly the per-pixel head's (tested), so SMA can only add to it; ``M_sma``
gets a loss of its own (the ``sma_map`` term, src/models/losses/sma_map.py) so SMA must select whatever
alpha is. The objectness prior comes from the proposals' class head (no gradient through it: the class
head learns categories, not the referent); without a class head it is 0. With ``pixel_agreement`` the
word-pixel path also votes for the proposal it already covers (the coupling in the other direction: a read-out,
no gradient through it), so SMA starts from the pixel path's localisation and its own scores learn what that
misses. Deep supervision: the combined
output is supervised once (the word-pixel path is one map), SMA's own map at every decoder layer after the
first; the initial learnable queries are the same for every image, so a referring loss on them would train
"one fixed query is the referent" (issue #21, finding 3).
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .layers import softmax_fp32
from .registry import SMA_HEADS
from .sma import SentenceMaskAlignment, _project_to_pixels

__all__ = ["CoupledSentenceMaskHead", "no_object_log_prior", "pixel_agreement"]

# sigmoid mixtures are clipped to [eps, 1 - eps] before the logit: |M_sma| <= ln((1 - eps) / eps) ~ 9.2.
_MIX_EPS = 1e-4


def no_object_log_prior(class_logits):
    """``log(1 - p(no object))`` per proposal from the class head's logits ``(B, N, C + 1)`` (the last class is
    "no object") -> ``(B, N)``, as ``logsumexp(real classes) - logsumexp(all)``; no gradient."""
    class_logits = ops.stop_gradient(class_logits)
    num_real = class_logits.shape[-1] - 1
    return ops.logsumexp(class_logits[:, :, :num_real], -1) - ops.logsumexp(class_logits, -1)


def pixel_agreement(proposals, pixel_logits):
    """The word-pixel path's mean logit inside each proposal: ``sum_hw m_n M_pix / (sum_hw m_n + 1)`` with the soft
    masks ``m_n = sigmoid(Q_n . P)`` ``(B, N, hw)`` and ``M_pix (B, 1, h, w)`` -> ``(B, N)``; no gradient (a read-out)."""
    proposals = ops.stop_gradient(proposals)
    batch = pixel_logits.shape[0]
    pixels = ops.stop_gradient(pixel_logits).reshape(batch, -1, 1)  # (B, hw, 1)
    return ops.bmm(proposals, pixels).squeeze(-1) / (proposals.sum(axis=-1) + 1.0)  # (B, N)


@SMA_HEADS.register("coupled")
class CoupledSentenceMaskHead(SentenceMaskAlignment):
    """SMA coupled to the word-pixel path through a zero-initialised gate (module docstring).

    Scores use `SentenceMaskAlignment.sentence_scores` (with its geometry and reasoning options), softmax
    weighting only. Parameters added to the mixture head's: ``pixel_query`` (Linear_p), ``log_temperature``
    (t) and ``gate`` (alpha).
    """

    # Adam moves a parameter by about lr per step whatever its gradient: at the quickstart's lr (5e-4, decaying) a
    # scalar can travel at most ~0.18 in its 708 steps, and the gate had reached 0.03 after 354 (2026-12-07). The
    # optimizer gives these two scalars 10x the learning rate (src/engine/train_step.py reads this).
    param_lr_scales = {"gate": 10.0, "log_temperature": 10.0, "agreement_weight": 10.0}

    def __init__(self, text_dim, mask_dim, geometry=False, reasoning_layers=0, reasoning_heads=4,
                 pixel_agreement=False):
        super().__init__(text_dim, mask_dim, geometry=geometry, reasoning_layers=reasoning_layers,
                         reasoning_heads=reasoning_heads)
        self.pixel_query = nn.Dense(text_dim, mask_dim)
        self.log_temperature = Parameter(Tensor(0.0, ms.float32), name="log_temperature")
        self.gate = Parameter(Tensor(0.0, ms.float32), name="gate")
        self.use_pixel_agreement = bool(pixel_agreement)
        self.agreement_weight = (Parameter(Tensor(1.0, ms.float32), name="agreement_weight") if pixel_agreement
                                 else None)

    @classmethod
    def from_config(cls, cfg, text_dim: int) -> "CoupledSentenceMaskHead":
        sma, mg = cfg.model.sma, cfg.model.mask_generator
        return cls(text_dim, mg.mask_dim, geometry=sma.mask_geometry, reasoning_layers=sma.reasoning_layers,
                   reasoning_heads=mg.decoder_heads, pixel_agreement=sma.pixel_agreement)

    def pixel_logits(self, pixel_embed, sentence):
        """``M_pix = Linear_p(L_g) . P`` ``(B, 1, h, w)``: the word-pixel path."""
        return _project_to_pixels(self.pixel_query(sentence), pixel_embed)

    def sma_map(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None,
                pixel_logits=None):
        """SMA on one stage -> (``M_sma (B, 1, h, w)``, weights ``w (B, N)``, target embedding ``a = sum_n w_n Q_n
        (B, D)``, scores ``s (B, N)``: what the softmax normalises, supervised by the criterion's SMA CE).
        ``pixel_logits`` ``M_pix (B, 1, h, w)`` is read with ``pixel_agreement`` only."""
        batch, dim, height, width = pixel_embed.shape
        proposals = ops.sigmoid(ops.bmm(mask_embed, pixel_embed.reshape(batch, dim, height * width)))  # (B, N, hw)
        scores = ops.exp(self.log_temperature) * self.sentence_scores(mask_embed, pixel_embed, sentence, words,
                                                                      attention_mask)  # (B, N)
        if class_logits is not None:
            scores = scores + no_object_log_prior(class_logits)  # (B, N)
        if self.use_pixel_agreement:
            scores = scores + self.agreement_weight * pixel_agreement(proposals, pixel_logits)  # (B, N)
        weights = softmax_fp32(scores)  # (B, N), float32 inside under AMP
        target_embed = ops.bmm(weights.expand_dims(1), mask_embed).squeeze(1)  # (B, D)
        mix = ops.bmm(weights.expand_dims(1), proposals)  # (B, 1, hw)
        mix = ops.clip_by_value(mix, _MIX_EPS, 1.0 - _MIX_EPS)
        sma_logits = (ops.log(mix) - ops.log(1.0 - mix)).reshape(batch, 1, height, width)  # (B, 1, h, w)
        return sma_logits, weights, target_embed, scores

    def combine(self, pixel_logits, sma_logits):
        """``M = M_pix + alpha * M_sma``."""
        return pixel_logits + self.gate * sma_logits

    def forward_with_scores(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        pixel_logits = self.pixel_logits(pixel_embed, sentence)  # (B, 1, h, w)
        sma_logits, weights, target_embed, scores = self.sma_map(mask_embed, pixel_embed, sentence, words, attention_mask,
                                                                 class_logits, pixel_logits)
        return self.combine(pixel_logits, sma_logits), weights, target_embed, scores

    def forward_train(self, mask_embeds, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        """-> (the combined logits of the final stage (1, B, 1, h, w), a (B, D), scores (S, B, N), SMA's maps of
        the stages after the initial queries (S - 1, B, 1, h, w); of the one stage when S = 1)."""
        num_stages = mask_embeds.shape[0]
        stage_maps = ()
        stage_scores = ()
        target_embed = None
        sma_logits = None
        pixel_logits = self.pixel_logits(pixel_embed, sentence)  # (B, 1, h, w)
        for s in range(num_stages):
            stage_class = None if class_logits is None else class_logits[s]
            # Indexed, not unpacked: an unused tuple output made graph mode warn "Some side effect nodes were
            # eliminated by mistake" here (nothing in sma_map is random; the weights are simply not needed).
            stage = self.sma_map(mask_embeds[s], pixel_embed, sentence, words, attention_mask, stage_class, pixel_logits)
            sma_logits, target_embed, scores = stage[0], stage[2], stage[3]
            stage_scores = stage_scores + (scores,)
            if s > 0 or num_stages == 1:
                stage_maps = stage_maps + (sma_logits,)
        logits = self.combine(pixel_logits, sma_logits)  # (B, 1, h, w), final stage
        return logits.expand_dims(0), target_embed, ops.stack(stage_scores), ops.stack(stage_maps)

    def construct(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        logits, weights, target_embed, _ = self.forward_with_scores(mask_embed, pixel_embed, sentence, words,
                                                                    attention_mask, class_logits)
        return logits, weights, target_embed
