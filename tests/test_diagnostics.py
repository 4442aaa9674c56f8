"""Training-health diagnostics: they flag deliberately collapsed models and pass healthy ones."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from src.engine import diagnostics
from src.models.coupalign import CoupAlign
from src.models.criterion import CoupAlignCriterion
from test_coupalign import IMAGE, TOKENS, VOCAB, tiny_config

PAIRS = 4


def _probe(seed=0):
    """PAIRS images, each shown twice with two different random sentences and two target boxes."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((PAIRS, 3, IMAGE, IMAGE)).astype(np.float32).repeat(2, axis=0)
    ids = rng.integers(1, VOCAB, (2 * PAIRS, TOKENS)).astype(np.int32)
    mask = np.ones((2 * PAIRS, TOKENS), np.int32)
    mask[1::2, 6:] = 0
    ids[mask == 0] = 0
    target = np.zeros((2 * PAIRS, IMAGE, IMAGE), np.float32)
    target[0::2, 4:30, 4:30] = 1
    target[1::2, 34:60, 30:62] = 1
    return diagnostics.ProbeSet(images, ids, mask, target, np.arange(PAIRS).repeat(2))


class _DistinctProposals(nn.Cell):
    """A mask generator that is healthy by construction: N fixed, well-separated query vectors plus an
    image-dependent shift, the same tensor layout as MaskedTransformerDecoder's output."""

    def __init__(self, num_queries, dim, stages):
        super().__init__()
        rng = np.random.default_rng(5)
        self.queries = Parameter(Tensor(3.0 * rng.standard_normal((num_queries, dim)).astype(np.float32)), name="q")
        self.stages = stages

    def construct(self, multi_scale, pixel_embed):
        shift = pixel_embed.mean(axis=(2, 3)).expand_dims(1)  # (B, 1, D)
        embeds = self.queries.expand_dims(0) + shift  # (B, N, D)
        return ops.stack([embeds] * self.stages)


@pytest.fixture(scope="module")
def probe():
    return _probe()


def _sma_text_wpa_warnings(metrics):
    return [k for k in diagnostics.collapsed_parts(metrics) if k != "aux_chance_ratio"]


def test_healthy_model_passes(probe):
    ms.set_seed(0)
    cfg = tiny_config()
    net = CoupAlign(cfg)
    net.transformer_decoder = _DistinctProposals(8, 32, cfg.model.mask_generator.decoder_layers + 1)
    proj = net.head.sentence_proj.weight
    proj.set_data(proj * 40.0)  # decisive weights that depend on the sentence
    metrics = diagnostics.collect(net, probe, CoupAlignCriterion.from_config(cfg))
    assert set(metrics) >= {"sma_entropy", "mask_embed_cosine", "target_embed_cross_cosine", "top_proposal_changes",
                            "sentence_cross_cosine", "aux_chance_ratio"}
    assert sum(k.startswith("token_self_similarity_") for k in metrics) == 4  # one per BERT layer
    assert sum(k.startswith("wpa_lang_spread_") for k in metrics) == 4  # one per stage
    assert not _sma_text_wpa_warnings(metrics), diagnostics.format_report(metrics)
    assert metrics["sma_entropy"] < 0.5 and metrics["top_proposal_changes"] >= 0.5
    assert 0 <= metrics["selection_accuracy"] <= 1 and 0 <= metrics["oracle_iou"] <= 1
    assert "gate" not in metrics  # the mixture head has none


def test_selection_at_the_stride4_grid():
    """Target cells (0-1, 0-1) of a 4 x 4 grid; proposals: those cells (IoU 1), half of them (0.5), elsewhere (0).
    Sample 0 weights the wrong one most, sample 1 the right one."""
    target = np.zeros((2, 16, 16), np.float32)
    target[:, :8, :8] = 1  # -> stride-4 labels: cells (0-1, 0-1)
    proposals = np.full((2, 3, 4, 4), -1.0, np.float32)
    proposals[:, 0, :2, :2] = 1
    proposals[:, 1, :2, :1] = 1
    proposals[:, 2, 2:, 2:] = 1
    weights = np.array([[0.2, 0.1, 0.7], [0.5, 0.3, 0.2]], np.float32)
    chosen = diagnostics._selections(weights, proposals, Tensor(target))
    assert [c["selection_correct"] for c in chosen] == [0.0, 1.0]
    assert [c["iou_best"] for c in chosen] == [1.0, 1.0] and chosen[0]["iou_top"] == 0.0
    swapped = diagnostics._selections(weights[:, ::-1].copy(), proposals, Tensor(target))  # a broken input
    assert [c["selection_correct"] for c in swapped] == [1.0, 0.0]


def test_coupled_head_reports_its_gate(probe):
    ms.set_seed(0)
    net = CoupAlign(tiny_config(**{"sma.head": "coupled"}))
    net.head.gate.set_data(Tensor(0.25, ms.float32))
    metrics = diagnostics.collect(net, probe)
    assert metrics["gate"] == pytest.approx(0.25)
    assert 0 <= metrics["selection_accuracy"] <= 1 and 0 <= metrics["oracle_iou"] <= 1


def test_collapsed_model_is_flagged_by_part(probe):
    ms.set_seed(0)
    net = CoupAlign(tiny_config())
    decoder = net.transformer_decoder
    for table in (decoder.query_feat, decoder.query_embed):  # identical queries
        first = table.asnumpy()[:1]
        table.set_data(Tensor(np.repeat(first, table.shape[0], axis=0)))
    out_norm = net.bert.encoder.layer[-1].output.LayerNorm  # every token -> the same vector
    out_norm.weight.set_data(ops.zeros_like(out_norm.weight))
    out_norm.bias.set_data(Tensor(np.linspace(-1, 1, out_norm.bias.shape[0]).astype(np.float32)))
    metrics = diagnostics.collect(net, probe)
    flagged = diagnostics.collapsed_parts(metrics)
    assert "mask_embed_cosine" in flagged and "sma_entropy" in flagged
    assert "top_proposal_changes" in flagged  # uniform weights: argmax never follows the sentence
    assert "token_self_similarity_3" in flagged and "sentence_cross_cosine" in flagged
    assert "wpa_lang_spread_3" in flagged  # identical words: the last stage's pixels cannot tell them apart
    assert "token_self_similarity_0" not in flagged  # the earlier layers are not blamed
    report = diagnostics.format_report(metrics)
    assert "WARNING mask generator: the proposals are identical" in report
    assert "WARNING text encoder: the tokens of a sentence have merged" in report


def test_flat_word_attention_is_flagged(probe):
    ms.set_seed(0)
    net = CoupAlign(tiny_config())
    for stage in net.wpa:  # zero query projection: every pixel gets the same (uniform) word attention
        query = stage.pixel_word_attn.image_lang_att.f_query[0]
        query.weight.set_data(ops.zeros_like(query.weight))
        query.bias.set_data(ops.zeros_like(query.bias))
    metrics = diagnostics.collect(net, probe)
    assert all(metrics[f"wpa_lang_spread_{i}"] < 1e-4 for i in range(4))
    assert {f"wpa_lang_spread_{i}" for i in range(4)} <= set(diagnostics.collapsed_parts(metrics))


def test_aux_chance_ratio_is_one_at_chance_and_small_when_separated(probe):
    crit = CoupAlignCriterion.from_config(tiny_config()).term("aux_contrast")
    target = Tensor(probe.target[:2])
    anchor = np.ones((2, 32), np.float32)
    constant = Tensor(np.ones((2, 32, 16, 16), np.float32))
    assert diagnostics._aux_chance_ratio(crit, constant, Tensor(anchor), target) == pytest.approx(1.0, rel=1e-5)
    fg = diagnostics.stride4_labels(target, 16, 16).asnumpy()[:, None]  # (2, 1, 16, 16)
    separated = Tensor((np.where(fg > 0, 1.0, -1.0) * np.ones((2, 32, 16, 16))).astype(np.float32))
    assert diagnostics._aux_chance_ratio(crit, separated, Tensor(anchor), target) < 0.01
