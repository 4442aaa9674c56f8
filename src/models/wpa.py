"""Word-Pixel Alignment (WPA): the early fusion block run after every encoder stage.

CoupAlign aligns words and pixels inside both encoders, in both directions (docs/method.md, "WPA"):

* the vision half (:class:`PixelWordAttention`) lets every pixel gather the words it relates to and
  gates the result back into the visual stream. It follows LAVT's pixel-word attention module plus its
  residual gate; sub-layer names mirror LAVT's ``fusion.*`` and ``res_gate.*`` state-dict keys so a
  checkpoint converter is a prefix rename plus squeezing Conv1d kernels ``(out, in, 1) -> (out, in)``;
* the language half (:class:`WordPixelAttention`) lets every word gather pixels with multi-head cross
  attention and adds the result to the word features through a zero-initialised per-channel scale, so
  a pretrained language encoder is untouched at step 0;
* :class:`WordPixelAlignment` runs both halves on the *pre-update* features of a stage.

Shapes: ``B`` batch, ``HW`` pixels of the stage (flattened), ``C`` stage channels, ``T`` tokens,
``D_text`` width of the language encoder. ``m`` is the token mask (1 real token, 0 padding).
"""
import math

import mindspore as ms
from mindspore import nn, ops
from src.errors import ConfigError

from src.models.cost import CostGeometry, PartCost, attention_flops, dense_flops, total
from src.models.layers import GELU, AccurateTanh, InstanceNormOverPixels, softmax_fp32
from src.models.registry import FUSIONS

__all__ = [
    "AccurateTanh",
    "InstanceNormOverPixels",
    "PixelWordAttention",
    "WordPixelAttention",
    "WordPixelAlignment",
]

# Additive bias given to padded words before the softmax over words (docs/method.md: (m - 1) * 1e4).
_MASK_BIAS = 1e4


class ImageLanguageAttention(nn.Cell):
    """Single-head attention of pixels (queries) over words (keys/values), the ``G`` term of docs/method.md.

    ``q = IN(Linear(V))``, ``k = Linear(L) * m``, ``v = Linear(L) * m``,
    ``A = softmax_words(q k^T / sqrt(C) + (m - 1) * 1e4)``, ``G = IN(Linear(A v))``.
    Attribute names mirror LAVT's ``image_lang_att`` (``f_query``, ``f_key``, ``f_value``, ``W``).
    """

    def __init__(self, dim, text_dim):
        super().__init__()
        self.dim = dim
        self.scale = 1.0 / math.sqrt(dim)
        self.f_query = nn.SequentialCell([nn.Dense(dim, dim), InstanceNormOverPixels()])
        self.f_key = nn.Dense(text_dim, dim)
        self.f_value = nn.Dense(text_dim, dim)
        self.W = nn.SequentialCell([nn.Dense(dim, dim), InstanceNormOverPixels()])  # pylint: disable=invalid-name

    def attention(self, vis, lang, attention_mask):
        """-> (A (B, HW, T) pixel-to-word attention, values (B, T, C)); the diagnostics read A v."""
        # vis: (B, HW, C); lang: (B, T, D_text); attention_mask: (B, T) float
        word_weight = attention_mask.expand_dims(-1)  # (B, T, 1): padded words contribute nothing
        query = self.f_query(vis)  # (B, HW, C)
        key = self.f_key(lang) * word_weight  # (B, T, C)
        value = self.f_value(lang) * word_weight  # (B, T, C)
        logits = ops.bmm(query, key.transpose(0, 2, 1)) * self.scale  # (B, HW, T)
        logits = logits + ((attention_mask - 1.0) * _MASK_BIAS).expand_dims(1)  # padded words -> -1e4
        attn = softmax_fp32(logits)  # (B, HW, T), sums to 1 over words; float32 inside under AMP
        return attn, value

    def construct(self, vis, lang, attention_mask):
        attn, value = self.attention(vis, lang, attention_mask)
        gathered = ops.bmm(attn, value)  # (B, HW, C)
        return self.W(gathered)  # (B, HW, C)


class PixelWordAttention(nn.Cell):
    """Vision half of WPA: pixels attend to words, then a gated residual update of the visual features.

    ::

        F  = GELU(project_mm(GELU(vis_project(V)) * G))     # aligned feature of the stage (goes to S_o)
        V' = V + tanh(res_gate_2(ReLU(res_gate_0(F)))) * F  # both gate Linears without bias

    GELU is the exact erf form (LAVT uses PyTorch's default ``nn.GELU()``).

    Parameter names (LAVT key on the right, ``layers.i.`` prefix dropped):
    ``vis_project.0`` <- ``fusion.vis_project.0``, ``image_lang_att.*`` <- ``fusion.image_lang_att.*``,
    ``project_mm.0`` <- ``fusion.project_mm.0``, ``res_gate.{0,2}`` <- ``res_gate.{0,2}``.

    Args:
        dim: channels ``C`` of the visual stage.
        text_dim: width ``D_text`` of the word features.
        dropout: dropout after the two GELUs (LAVT uses 0.0).

    Inputs:
        vis ``(B, HW, C)``, lang ``(B, T, D_text)``, attention_mask ``(B, T)`` (any real or int dtype, 1/0).

    Returns:
        ``(vis_out (B, HW, C), aligned (B, HW, C))``: ``V'`` and ``F``.
    """

    def __init__(self, dim, text_dim, dropout=0.0):
        super().__init__()
        self.vis_project = nn.SequentialCell(
            [nn.Dense(dim, dim), GELU(), nn.Dropout(p=dropout)]
        )
        self.image_lang_att = ImageLanguageAttention(dim, text_dim)
        self.project_mm = nn.SequentialCell(
            [nn.Dense(dim, dim), GELU(), nn.Dropout(p=dropout)]
        )
        self.res_gate = nn.SequentialCell(
            [nn.Dense(dim, dim, has_bias=False), nn.ReLU(), nn.Dense(dim, dim, has_bias=False), AccurateTanh()]
        )

    def construct(self, vis, lang, attention_mask):
        # vis: (B, HW, C); lang: (B, T, D_text); attention_mask: (B, T)
        attention_mask = attention_mask.astype(vis.dtype)
        vis_proj = self.vis_project(vis)  # (B, HW, C)
        lang_ctx = self.image_lang_att(vis, lang, attention_mask)  # (B, HW, C), the G term
        aligned = self.project_mm(vis_proj * lang_ctx)  # (B, HW, C), F
        vis_out = vis + self.res_gate(aligned) * aligned  # (B, HW, C), V'
        return vis_out, aligned


class WordPixelAttention(nn.Cell):
    """Language half of WPA: words attend to pixels with multi-head cross attention.

    ::

        H  = dense(MultiHead(query(L), key(V), value(V)))   # queries are words, keys/values pixels
        L' = L + alpha * LayerNorm(H) * m                   # alpha: (D_text,), zero at init

    The LayerNorm normalises the update, not the residual stream: with ``alpha = 0`` the words pass
    through bit for bit, so the interleaved encoder is exactly the pretrained BERT at step 0. (A first
    version computed ``LN(L + alpha * H)``; MiniLM's last LayerNorm has gamma ~0.65, so that
    re-normalisation rescaled the words fed to the next BERT group ~2.3x at initialisation.)
    The key and value projections map the ``C`` visual channels to ``D_text``; ``num_heads`` must divide
    ``D_text``. The LayerNorm uses eps 1e-12, BERT's value. Padded words receive no update.

    Inputs:
        vis ``(B, HW, C)``, lang ``(B, T, D_text)``, attention_mask ``(B, T)``.

    Returns:
        lang_out ``(B, T, D_text)``.
    """

    def __init__(self, text_dim, dim, num_heads=8, layer_norm_eps=1e-12, attn_dropout=0.0):
        super().__init__()
        if text_dim % num_heads != 0:
            raise ConfigError(f"num_heads={num_heads} must divide text_dim={text_dim} (config: model.wpa.word_heads)")
        self.num_heads = num_heads
        self.head_dim = text_dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Dense(text_dim, text_dim)
        self.key = nn.Dense(dim, text_dim)
        self.value = nn.Dense(dim, text_dim)
        self.dense = nn.Dense(text_dim, text_dim)
        self.alpha = ms.Parameter(ops.zeros((text_dim,), ms.float32), name="alpha")
        self.layer_norm = nn.LayerNorm((text_dim,), epsilon=layer_norm_eps)
        self.attn_dropout = nn.Dropout(p=attn_dropout)
        self.scores = ops.BatchMatMul(transpose_b=True)

    def _split_heads(self, x):
        # (B, S, D_text) -> (B, heads, S, head_dim)
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, vis, lang, attention_mask):
        # vis: (B, HW, C); lang: (B, T, D_text); attention_mask: (B, T)
        batch, num_words, text_dim = lang.shape
        channels = vis.shape[2]
        heads, head_dim = self.num_heads, self.head_dim
        attention_mask = attention_mask.astype(lang.dtype)
        query = self._split_heads(self.query(lang))  # (B, h, T, d)
        # The key and value projections are applied on the word side instead of to every pixel (same
        # function, reassociated): q.(W_k v + b_k) = (q W_k).v + q.b_k, and, as each attention row sums to
        # s (1 without dropout), sum_j a_j (W_v v_j + b_v) = W_v (sum_j a_j v_j) + s b_v. This avoids
        # the (B, HW, D_text) key and value maps and their head transposes: at 480x480 stage 1 they are
        # 14400 x 768 each, ~5.7 GFLOPs, more than the rest of the layer (docs/performance.md).
        key_weight = self.key.weight.reshape(heads, head_dim, channels)  # (h, d, C)
        query_vis = ops.matmul(query, key_weight)  # (B, h, T, C)
        query_bias = ops.matmul(query, self.key.bias.reshape(heads, head_dim, 1))  # (B, h, T, 1)
        logits = self.scores(query_vis.reshape(batch, heads * num_words, channels), vis)  # (B, h*T, HW)
        logits = (logits.reshape(batch, heads, num_words, -1) + query_bias) * self.scale  # (B, h, T, HW)
        attn = self.attn_dropout(softmax_fp32(logits))  # every pixel is real: no key mask; float32 inside under AMP
        pooled = ops.bmm(attn.reshape(batch, heads * num_words, -1), vis)  # (B, h*T, C)
        value_weight = self.value.weight.reshape(heads, head_dim, channels).transpose(0, 2, 1)  # (h, C, d)
        context = ops.matmul(pooled.reshape(batch, heads, num_words, channels), value_weight)  # (B, h, T, d)
        context = context + attn.sum(axis=-1, keepdims=True) * self.value.bias.reshape(heads, 1, head_dim)
        context = context.transpose(0, 2, 1, 3).reshape(batch, num_words, text_dim)  # (B, T, D_text)
        update = self.layer_norm(self.dense(context))  # (B, T, D_text), LN(H)
        return lang + self.alpha * update * attention_mask.expand_dims(-1)  # (B, T, D_text), L'


@FUSIONS.register("wpa")
class WordPixelAlignment(nn.Cell):
    """Both halves of WPA for one encoder stage; each reads the pre-update ``V`` and ``L``.

    Args:
        dim: stage channels ``C``.
        text_dim: word feature width ``D_text``.
        num_heads: heads of the language half (must divide ``text_dim``).
        bidirectional: if False the language half is not built and ``L`` is returned unchanged
            (the LAVT-style one-way ablation, config ``wpa.bidirectional``).

    Inputs:
        vis ``(B, HW, C)``, lang ``(B, T, D_text)``, attention_mask ``(B, T)``.

    Returns:
        ``(vis_out (B, HW, C), aligned (B, HW, C), lang_out (B, T, D_text))`` = ``(V', F, L')``.
    """

    def __init__(self, dim, text_dim, num_heads=8, bidirectional=True, dropout=0.0):
        super().__init__()
        self.bidirectional = bidirectional
        self.pixel_word_attn = PixelWordAttention(dim, text_dim, dropout=dropout)
        if bidirectional:
            self.word_pixel_attn = WordPixelAttention(text_dim, dim, num_heads=num_heads)
        else:
            self.word_pixel_attn = None

    @classmethod
    def from_config(cls, cfg, stage: int, visual_dim: int, text_dim: int) -> "WordPixelAlignment":
        """From a Config: the `model.wpa` section; the same module at every stage."""
        wpa = cfg.model.wpa
        return cls(visual_dim, text_dim, num_heads=wpa.word_heads, bidirectional=wpa.bidirectional)

    @staticmethod
    def analytic_cost(model_cfg, geometry: CostGeometry) -> PartCost:
        """WPA at all four stages (src/models/cost.py). The language half is counted as computed: its key and
        value projections act on the word side (each head's query through the key weight, the attention-pooled
        pixels through the value weight), not on every pixel (see WordPixelAttention)."""
        bidirectional, heads = model_cfg.wpa.bidirectional, model_cfg.wpa.word_heads
        t, tokens = geometry.text_dim, geometry.tokens
        stages = []
        for c, (h, w) in zip(geometry.channels, geometry.sizes):
            n = h * w
            flops = (4 * dense_flops(n, c, c)                      # vis_project, f_query, W, project_mm
                     + 2 * dense_flops(n, c, c)                    # res_gate.0, res_gate.2
                     + 2 * dense_flops(tokens, t, c)               # f_key, f_value
                     + attention_flops(n, tokens, c))              # pixels attend to words
            kept = 13 * n * c + n * tokens                         # pixel->word half (see PixelWordAttention)
            params = 4 * (c * c + c) + 2 * c * c + 2 * (t * c + c)  # vis_project, f_query, W, project_mm, gates, f_key/f_value
            if bidirectional:
                flops += (2 * dense_flops(tokens, t, t)            # query, dense
                          + dense_flops(tokens, t, c)              # queries through the key weight, per head
                          + dense_flops(tokens, c, t)              # pooled pixels through the value weight
                          + 2 * 2 * heads * tokens * n * c)        # scores and pooling, per head over C
                kept += heads * tokens * n                         # word->pixel: softmax output (reads V, counted above)
                params += 2 * (t * t + t) + 2 * (c * t + t) + t + 2 * t  # query, dense, key, value, alpha, LN
            stages.append(PartCost(flops, kept, kept, params))
        return total(stages)

    def construct(self, vis, lang, attention_mask):
        vis_out, aligned = self.pixel_word_attn(vis, lang, attention_mask)
        if self.bidirectional:
            lang_out = self.word_pixel_attn(vis, lang, attention_mask)
        else:
            lang_out = lang
        return vis_out, aligned, lang_out
