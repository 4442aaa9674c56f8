"""Training-health diagnostics: is every alignment of CoupAlign doing its job?

A component test cannot show that the trained system uses its parts. These forward-only measurements
can; the trainer logs them at every validation (``train_log.jsonl``, ``curves.png``),
``tools/diagnose.py`` prints them for a checkpoint, and the tests check that they flag a deliberately
collapsed model. All are computed on a fixed probe set: pairs of samples that share an image and refer
to two different objects of it, so "does the choice follow the sentence" is measurable.

| key | what it measures | collapsed when |
|---|---|---|
| ``sma_entropy`` | entropy of the final SMA weights / ln N, mean over samples | > 0.95: uniform, SMA selects nothing |
| ``mask_embed_cosine`` | mean pairwise cosine of the N final mask embeddings of a sample | > 0.9: identical proposals |
| ``target_embed_cross_cosine`` | mean cosine of the target embedding a between samples of different images | > 0.98: a is a constant |
| ``top_proposal_changes`` | share of same-image pairs whose highest-weighted proposals differ, both chosen decisively (top weight >= 2/N) | < 0.5: the choice ignores the sentence |
| ``token_self_similarity_<l>`` | mean cosine between the real tokens of a sentence after text layer l | > 0.9: the tokens merged |
| ``sentence_cross_cosine`` | mean cosine of the sentence feature L_g between different sentences | > 0.98: one vector for every sentence |
| ``wpa_lang_spread_<i>`` | spread over pixels of WPA's language term (pixel-to-word attention ``A v``), std over pixels / std over words | < 0.05: every pixel reads the same words |
| ``aux_chance_ratio`` | auxiliary contrast loss / its chance value ln(1 + number of negatives) | > 0.9: fg and bg not separated |
| ``selection_accuracy`` | share of samples whose top-weighted proposal is the best one or within 0.05 IoU of it | no threshold: a measurement |
| ``oracle_iou`` | mean IoU of the best proposal (what a perfect selection would reach) | no threshold: a measurement |
| ``gate`` | the coupled head's gate alpha, the weight of SMA's map in the output (``model.sma.head: coupled``) | no threshold: a measurement |

The thresholds mark a collapse, not a target: the trained quickstart aims at an entropy <= 0.5 and a
mask-embedding cosine < 0.9 (issue #12). SMA keys are absent for the "no SMA" ablation, ``gate`` for the
mixture head. ``selection_accuracy`` and ``oracle_iou`` are the error decomposition of
src/engine/decomposition.py on the probe set, computed here at the stride-4 grid (proposal masks
``Q_n . P > 0`` against the target's stride-4 labels, `stride4_labels`: no upsampling in the training
loop); tools/decompose.py gives them per sample at input resolution.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import Tensor

from src.engine.decomposition import head_kind, proposal_ious, proposal_selection
from src.errors import DataError
from src.models.losses.functional import stride4_labels
from src.models.sma import pool_sentence
from src.models.transformer_decoder import proposal_logits

# key -> (comparison, threshold, the part named in the warning)
THRESHOLDS: Dict[str, Tuple[str, float, str]] = {
    "sma_entropy": (">", 0.95, "SMA: the proposal weights are uniform (it selects nothing)"),
    "mask_embed_cosine": (">", 0.9, "mask generator: the proposals are identical"),
    "target_embed_cross_cosine": (">", 0.98, "SMA: the target embedding is the same for every sample"),
    "top_proposal_changes": ("<", 0.5, "SMA: the chosen proposal does not follow the sentence"),
    "token_self_similarity": (">", 0.9, "text encoder: the tokens of a sentence have merged"),
    "sentence_cross_cosine": (">", 0.98, "text encoder: every sentence gives the same sentence feature"),
    "wpa_lang_spread": ("<", 0.05, "WPA: the pixel-to-word attention is flat (every pixel reads the same words)"),
    "aux_chance_ratio": (">", 0.9, "auxiliary contrast: at chance (foreground and background not separated)"),
}


class ProbeSet:
    """The fixed inputs of the diagnostics: ``2P`` samples, rows ``2p`` and ``2p + 1`` showing the same
    image with sentences of two different objects. Arrays: image (2P, 3, S, S) float32, input_ids and
    attention_mask (2P, T) int32, target (2P, S, S) float32, image_ids (2P,)."""

    def __init__(self, image, input_ids, attention_mask, target, image_ids):
        self.image = np.asarray(image, np.float32)
        self.input_ids = np.asarray(input_ids, np.int32)
        self.attention_mask = np.asarray(attention_mask, np.int32)
        self.target = np.asarray(target, np.float32)
        self.image_ids = np.asarray(image_ids)
        if len(self.image) % 2 or len(self.image) < 4:
            raise ValueError(f"a probe set needs an even number (>= 4) of samples, got {len(self.image)}")

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def from_refer(cls, refer, tokenizer, image_size: int, max_pairs: int = 32) -> "ProbeSet":
        """The first ``max_pairs`` images of the split holding two or more referred objects; for each,
        the first sentence of its first two refs."""
        from src.data.dataset import ReferSource

        by_image: Dict[int, List[int]] = {}
        for ref_index, ref in enumerate(refer.refs):
            by_image.setdefault(ref.image_id, []).append(ref_index)
        source = ReferSource(refer, tokenizer, image_size, train=False)
        rows = []
        for image_id in sorted(by_image):
            if len(rows) >= 2 * max_pairs:
                break
            if len(by_image[image_id]) < 2:
                continue
            for ref_index in by_image[image_id][:2]:
                index = refer.ref_sample_range(ref_index)[0]
                rows.append(source[index] + (image_id,))
        if len(rows) < 4:
            raise DataError(f"{refer!r} has fewer than 2 images with two referred objects: no probe pairs")
        columns = list(zip(*rows))
        return cls(np.stack(columns[0]), np.stack(columns[1]), np.stack(columns[2]), np.stack(columns[3]),
                   np.array(columns[-1]))


@contextlib.contextmanager
def _pynative():
    """The diagnostics call the model's parts one by one; PyNative runs them without compiling each."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


def _cosine_matrix(x: np.ndarray) -> np.ndarray:
    """(..., M, D) -> (..., M, M) cosine similarities."""
    unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return unit @ np.swapaxes(unit, -1, -2)


def _mean_off_diagonal(sim: np.ndarray, keep: Optional[np.ndarray] = None) -> float:
    """Mean of the off-diagonal entries of square (M, M) `sim`, optionally only where `keep` (M, M)."""
    mask = ~np.eye(sim.shape[-1], dtype=bool)
    if keep is not None:
        mask &= keep
    return float(sim[mask].mean()) if mask.any() else float("nan")


def token_self_similarity(words: np.ndarray, attention_mask: np.ndarray) -> float:
    """Mean over sentences of the mean pairwise cosine between their real tokens. words (B, T, D)."""
    values = []
    for row, mask in zip(words, attention_mask):
        real = row[mask > 0]
        if len(real) >= 2:
            values.append(_mean_off_diagonal(_cosine_matrix(real)))
    return float(np.mean(values)) if values else float("nan")


def _lang_spread(model, stage: int, vis, words, attention_mask) -> float:
    """std over pixels of A v (per channel) / std over real words of v, averaged over channels and samples."""
    cell = model.wpa[stage].pixel_word_attn.image_lang_att
    attn, value = cell.attention(vis, words, attention_mask.astype(vis.dtype))
    attn, value = attn.asnumpy(), value.asnumpy()  # (B, HW, T), (B, T, C)
    gathered = attn @ value  # (B, HW, C)
    mask = attention_mask.asnumpy() > 0
    spreads = []
    for b in range(gathered.shape[0]):
        over_words = value[b][mask[b]].std(axis=0).mean()
        spreads.append(gathered[b].std(axis=0).mean() / max(over_words, 1e-12))
    return float(np.mean(spreads))


def _aux_chance_ratio(aux, pixel_embed, target_embed, target) -> float:
    """The auxiliary contrast (`aux`, the criterion's aux_contrast term) over its chance value ln(1 + K_b) (every
    similarity equal)."""
    height, width = pixel_embed.shape[2], pixel_embed.shape[3]
    fg = stride4_labels(target, height, width).asnumpy().reshape(target.shape[0], -1)
    num_bg = np.minimum((1 - fg).sum(axis=1), aux.sampler.num_hard + aux.sampler.num_random_bg)
    keep = fg.sum(axis=1) > 0
    if not keep.any():
        return float("nan")
    chance = float(np.log1p(num_bg[keep]).mean())
    loss = float(aux.loss(pixel_embed, target_embed, target).asnumpy())
    return loss / chance


def collect(model, probe: ProbeSet, criterion=None, batch_size: int = 16) -> Dict[str, float]:
    """Every diagnostic of `model` on `probe` (see the module docstring); forward passes only.

    `criterion` (a CoupAlignCriterion) with the aux_contrast term adds ``aux_chance_ratio``. The model's train/eval
    state is restored.
    """
    was_training = model.training
    model.set_train(False)
    parts: Dict[str, list] = {}
    try:
        with _pynative():
            for start in range(0, len(probe), batch_size):
                stop = min(start + batch_size, len(probe))
                stop -= (stop - start) % 2  # keep the pairs together
                _collect_batch(model, probe, start, stop, criterion, parts)
    finally:
        model.set_train(was_training)
    return _summarise(parts, probe)


def _collect_batch(model, probe, start, stop, criterion, parts) -> None:
    image = Tensor(probe.image[start:stop])
    ids = Tensor(probe.input_ids[start:stop])
    mask = Tensor(probe.attention_mask[start:stop])
    features, words, trace = model.encode(image, ids, mask, trace=True)
    sentence, pixel_embed, mask_embeds = model.decode(features, words, mask)
    add = lambda key, value: parts.setdefault(key, []).append(value)  # noqa: E731
    np_mask = probe.attention_mask[start:stop]
    for layer, layer_words in enumerate(trace["layer_words"]):
        add(f"token_self_similarity_{layer}", token_self_similarity(layer_words.asnumpy(), np_mask))
    for stage, (vis, stage_words, _, _) in enumerate(trace["stage_inputs"]):
        add(f"wpa_lang_spread_{stage}", _lang_spread(model, stage, vis, stage_words, mask))
    add("sentence", pool_sentence(words, mask, model.sentence_pool).asnumpy())
    last = None if mask_embeds is None else mask_embeds[-1]
    # The class head's logits as at inference: the coupled head's weights include its objectness prior.
    class_logits = None if last is None else model.proposal_classes(last)  # (B, N, C + 1) or None
    _, weights, target_embed, _ = model.head.forward_with_scores(last, pixel_embed, sentence, words, mask,
                                                                 class_logits)
    add("target_embed", target_embed.asnumpy())
    if mask_embeds is not None:
        add("weights", weights.asnumpy())
        add("mask_embed", last.asnumpy())
        for chosen in _selections(weights.asnumpy(), proposal_logits(last, pixel_embed).asnumpy(),
                                  Tensor(probe.target[start:stop])):
            add("selection_correct", chosen["selection_correct"])
            add("oracle_iou", chosen["iou_best"])
    if head_kind(model) == "coupled":
        add("gate", float(model.head.gate.asnumpy()))
    if criterion is not None and "aux_contrast" in criterion.term_names:
        add("aux_chance_ratio", _aux_chance_ratio(criterion.term("aux_contrast"), pixel_embed, target_embed,
                                                  Tensor(probe.target[start:stop])))


def _selections(weights: np.ndarray, proposals: np.ndarray, target) -> List[Dict[str, float]]:
    """`proposal_selection` of every sample at the stride-4 grid: SMA's weights (B, N), proposal logits
    (B, N, h, w), the target at input resolution (B, H, W) Tensor, labelled per stride-4 cell."""
    labels = stride4_labels(target, proposals.shape[2], proposals.shape[3]).asnumpy() > 0.5  # (B, h, w)
    return [proposal_selection(w, proposal_ious(p > 0, t)) for w, p, t in zip(weights, proposals, labels)]


def _summarise(parts, probe: ProbeSet) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for key, values in parts.items():
        if key.startswith(("token_self_similarity_", "wpa_lang_spread_")) or key in ("aux_chance_ratio", "oracle_iou",
                                                                                     "gate"):
            out[key] = float(np.nanmean(values))
    if "selection_correct" in parts:
        out["selection_accuracy"] = float(np.mean(parts["selection_correct"]))
    images = probe.image_ids
    other_image = images[:, None] != images[None, :]
    out["sentence_cross_cosine"] = _mean_off_diagonal(_cosine_matrix(np.concatenate(parts["sentence"])))
    out["target_embed_cross_cosine"] = _mean_off_diagonal(
        _cosine_matrix(np.concatenate(parts["target_embed"])), other_image)
    if "weights" in parts:
        weights = np.concatenate(parts["weights"])  # (2P, N)
        num = weights.shape[1]
        entropy = -(weights * np.log(np.maximum(weights, 1e-12))).sum(axis=1) / math.log(num)
        out["sma_entropy"] = float(entropy.mean())
        embeds = np.concatenate(parts["mask_embed"])  # (2P, N, D)
        out["mask_embed_cosine"] = float(np.mean([_mean_off_diagonal(s) for s in _cosine_matrix(embeds)]))
        # With near-uniform weights the argmax is noise: a choice counts only when its weight is at least
        # twice the uniform 1/N.
        top = weights.argmax(axis=1)
        decisive = weights.max(axis=1) >= 2.0 / num
        out["top_proposal_changes"] = float(((top[0::2] != top[1::2]) & decisive[0::2] & decisive[1::2]).mean())
    return dict(sorted(out.items()))


def _beyond_threshold(metrics: Dict[str, float]):
    """(key, value, comparison, threshold, part) for every diagnostic past its collapse threshold."""
    for key, value in metrics.items():
        family = key.rstrip("0123456789").rstrip("_")
        if family not in THRESHOLDS or value is None or not math.isfinite(value):
            continue
        op, threshold, what = THRESHOLDS[family]
        if (op == ">" and value > threshold) or (op == "<" and value < threshold):
            yield key, value, op, threshold, what


def warnings_for(metrics: Dict[str, float]) -> List[str]:
    """One line per diagnostic beyond its collapse threshold, naming the part."""
    return [f"{what} [{key} = {value:.3f} {op} {threshold}]" for key, value, op, threshold, what in
            _beyond_threshold(metrics)]


def format_report(metrics: Dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    lines = [f"{k:<{width}}  {v:8.4f}" for k, v in metrics.items()]
    warnings = warnings_for(metrics)
    lines += [f"WARNING {w}" for w in warnings] or ["no collapse detected"]
    return "\n".join(lines)


def collapsed_parts(metrics: Dict[str, float]) -> Sequence[str]:
    """The metric keys beyond their thresholds (for tests and the ablation table)."""
    return [key for key, *_ in _beyond_threshold(metrics)]
