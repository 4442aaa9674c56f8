"""Benchmark CoupAlign on this machine and against the PyTorch reference encoders, in one process.

    python tools/benchmark.py [--config C] [--image_size S] [--batch_size B] [--steps K] [--json OUT.json]
        [--warmup N] [--train_warmup N] [--skip_reference] [--skip_train] [--skip_data] [--parts]
        [--isa_compare] [--memory_estimate] [--threads N] [--peak_n N] [--data_root DIR] [--data_images N]
        [any config override, e.g. --model.swin.pretrained= --data.num_workers=2]

Prints one table and writes the same numbers as JSON (``--json``):

* parameters (counted on the built model) and FLOPs of one forward, computed analytically from the
  configuration per model part (see "What the FLOPs count" below);
* forward latency at batch 1 and training throughput at ``--batch_size`` (images/s) of CoupAlign in
  graph mode: median of ``--steps`` calls after ``--warmup`` (``--train_warmup``) calls; the graph
  compilation time is the first call minus the steady (median) call;
* the reference, same process, same thread count: timm's ``SwinTransformer`` of the same variant and
  size plus Hugging Face's ``BertModel`` of the same size (random weights, PyTorch eager), forward and
  forward+backward, against our Swin + our BERT (graph mode) timed the same way; ours / theirs;
* the machine's fp32 matmul peak measured now (a large square matmul in MindSpore and in PyTorch, the
  larger counts) and the share of it the full forward reaches (analytic FLOPs / forward time / peak);
* peak resident memory (``ru_maxrss``) after our model's measurements and at the end, and the share of
  the machine's CPU that other processes used meanwhile (a disturbed run is flagged);
* the data pipeline (``create_refer_dataset``, train=True, the configured workers) in images/s against
  what training consumes, and the host overhead of a training step: the Trainer's loop (dataset
  iterator -> TrainStep -> loss read) against the compiled TrainStep on fixed tensors;
* with ``--parts``: forward time of encoders + WPA, pixel decoder, and transformer decoder + SMA, each
  compiled alone and fed the previous part's outputs, against its analytic FLOPs (where the time goes);
* with ``--isa_compare``: the whole-model forward (and, unless ``--skip_reference``, the encoder
  comparison) with ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``=ALL``, each in a fresh process, because oneDNN
  reads the variable once when it loads;
* with ``--memory_estimate``: the analytic training memory of the configuration (no timing).

What the FLOPs count: 2 FLOPs per multiply-add of every matrix product (dense layers, attention
scores, attention-weighted sums, the multi-scale deformable attention's weighted sum of samples,
mask-embedding x pixel-embedding products) and of every convolution. Not counted: normalisations,
softmax, activations, element-wise adds/multiplies, bias adds, embedding look-ups, position
encodings, bilinear sampling (the 4-tap interpolation of deformable attention), resizing, and the
loss. Attention over zero-padded Swin windows is counted as computed (padded tokens included). A
training step is about 3x the forward (backward = 2 matmuls per forward matmul); the table reports the forward.
tests/test_benchmark.py checks the Swin and BERT counts against torch.utils.flop_counter.
Each part states its own analytic cost beside its class (`SwinTransformer.analytic_flops` /
`analytic_activations` and its blocks', `bert_flops` / `bert_activations`, `sma_flops`, the registered parts'
`analytic_cost`, src/models/cost.py); this script sums them per part, measures and prints.

Pretrained checkpoints that do not exist are dropped with a note (timing does not depend on weight
values), and the data pipeline's workers are capped at the core count (MindSpore's limit). Every
timing run whose numbers are reported should hold the machine alone (on a shared machine, serialise the
timing runs, e.g. with ``flock <lock file> python tools/benchmark.py ...``). docs/performance.md holds measured
results.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src.config import Config, load_config, num_other_objects, num_proposal_classes  # noqa: E402  (no MindSpore import)
from src.models.cost import CostGeometry, PartCost  # noqa: E402  (no MindSpore import)
from src.arch.swin import swin_arch  # noqa: E402  (no MindSpore import)
from src.utils.runtime import available_cpus  # noqa: E402  (imports MindSpore lazily)

NUM_STAGES = 4
BYTES_FP32 = 4


# ================================================================================================
# Analytic FLOPs: each part states its own beside its class; here they are summed per part
# ================================================================================================
def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def part_costs(model_cfg, bert_config, height: int, width: int) -> "OrderedDict[str, PartCost]":
    """The registered parts' own analytic costs (`analytic_cost` beside each class, src/models/cost.py):
    'wpa' (the fusion module at the four stages), 'pixel_decoder', 'transformer_decoder' (zero without
    SMA). Importing the registries loads MindSpore; callers set the CPU environment first (main())."""
    from src.models.registry import FUSIONS, PIXEL_DECODERS, TRANSFORMER_DECODERS
    from src.models.swin import SwinTransformer

    if model_cfg.image_encoder != "swin":  # every count below reads the Swin's geometry
        raise NotImplementedError(f"tools/benchmark.py's analytic counts cover the Swin image encoder only; "
                                  f"model.image_encoder = {model_cfg.image_encoder!r} has none (train.py logs its measured step time)")
    arch = swin_arch(model_cfg.swin)
    geometry = CostGeometry(tuple(SwinTransformer.stage_sizes(height, width, arch["patch_size"])),
                            tuple(arch["embed_dim"] * 2 ** i for i in range(NUM_STAGES)),
                            bert_config.hidden_size, model_cfg.max_tokens)
    mg = model_cfg.mask_generator
    chosen = [("wpa", FUSIONS, model_cfg.fusion), ("pixel_decoder", PIXEL_DECODERS, mg.pixel_decoder)]
    if model_cfg.sma.enabled:
        chosen.append(("transformer_decoder", TRANSFORMER_DECODERS, mg.transformer_decoder))
    parts = OrderedDict(transformer_decoder=PartCost(0, 0, 0, 0))
    for part, registry, name in chosen:
        cls = registry.get(name)
        if not hasattr(cls, "analytic_cost"):
            raise NotImplementedError(f"the {registry.kind} '{name}' ({cls.__module__}.{cls.__name__}) has no "
                                      "analytic_cost(model_cfg, geometry) -> PartCost; add one (src/models/cost.py) "
                                      "for the analytic FLOPs, memory and parameter counts of tools/benchmark.py")
        parts[part] = cls.analytic_cost(model_cfg, geometry)
    return OrderedDict((part, parts[part]) for part in ("wpa", "pixel_decoder", "transformer_decoder"))


def coupalign_flops(model_cfg, bert_config, height: int, width: int, batch: int = 1, training: bool = False
                    ) -> "OrderedDict[str, int]":
    """Analytic FLOPs of CoupAlign per part: swin (`SwinTransformer.analytic_flops`), bert (`bert_flops`,
    src/models/bert.py), wpa, pixel_decoder, transformer_decoder (`part_costs`), sma (`sma_flops`,
    src/models/sma.py).

    `training=False` is `CoupAlign.construct` (SMA once, on the last decoder output); `training=True`
    is the forward of a training step with deep supervision (SMA on every decoder output).
    """
    from src.models.bert import bert_flops
    from src.models.sma import sma_flops
    from src.models.swin import SwinTransformer

    arch = swin_arch(model_cfg.swin)
    sizes = SwinTransformer.stage_sizes(height, width, arch["patch_size"])
    mg = model_cfg.mask_generator
    parts = OrderedDict()
    parts["swin"] = sum(SwinTransformer.analytic_flops(arch, height, width).values())
    parts["bert"] = bert_flops(bert_config, model_cfg.max_tokens)
    costs = part_costs(model_cfg, bert_config, height, width)
    for name in ("wpa", "pixel_decoder", "transformer_decoder"):
        parts[name] = costs[name].flops
    stride4_pixels = sizes[0][0] * sizes[0][1]
    stages = mg.decoder_layers + 1 if (model_cfg.sma.enabled and training and model_cfg.sma.deep_supervision) else 1
    parts["sma"] = stages * sma_flops(bert_config.hidden_size, mg.mask_dim, mg.num_queries, stride4_pixels,
                                      model_cfg.sma.enabled)
    return OrderedDict((k, v * batch) for k, v in parts.items())


# ================================================================================================
# Analytic training memory: each part's own activations, summed; parameters counted on the built model
# ================================================================================================
def activation_elements(model_cfg, bert_config, height: int, width: int) -> "OrderedDict[str, int]":
    """fp32 elements kept from the forward for the backward of one image, per model part, plus
    'largest_layer': the most any single layer (a Swin block, a WPA, a deformable encoder layer, ...)
    keeps, which is not part of the sum. Each part counts its own (`SwinTransformer.analytic_activations`,
    `bert_activations` in src/models/bert.py, the registered parts' `analytic_cost`).

    Accounting rule (one pass over each module's forward): a dense layer or convolution keeps its
    input; LayerNorm/GroupNorm/instance norm keep their input (or the centred input); GELU keeps its
    input, ReLU and softmax their output; a product of two activations keeps both; additions,
    reshapes and transposes keep nothing (but a transposed copy that feeds a matmul is that matmul's
    input and is counted once). A tensor read by several consumers is counted once. Dropout masks,
    per-row statistics and anything of size O(tokens) or O(channels) are ignored.
    """
    from src.models.bert import bert_activations
    from src.models.swin import SwinTransformer

    arch = swin_arch(model_cfg.swin)
    out = OrderedDict()
    # model.swin.recompute_stages: those stages' blocks keep their inputs only.
    out["swin"], largest_block = SwinTransformer.analytic_activations(
        arch, height, width, getattr(model_cfg.swin, "recompute_stages", ()))
    layers = [largest_block]  # per-layer amounts, for the largest one
    out["bert"] = bert_activations(bert_config, model_cfg.max_tokens)
    # --- the registered parts: fusion (WPA), pixel decoder, transformer decoder ---
    for name, cost in part_costs(model_cfg, bert_config, height, width).items():
        out[name] = cost.activations
        layers.append(cost.largest_layer)
    mg = model_cfg.mask_generator
    h4, w4 = SwinTransformer.stage_sizes(height, width, arch["patch_size"])[0]
    supervised = (mg.decoder_layers + 1) if (model_cfg.sma.enabled and model_cfg.sma.deep_supervision) else 1
    # Loss at input resolution on every supervised stage: upsampled logits, CE and Dice terms (~6 maps).
    out["sma_and_loss"] = supervised * (h4 * w4 + 6 * height * width)
    out["largest_layer"] = max(layers)
    return out


def loss_activation_elements(cfg: Config, height: int, width: int) -> "OrderedDict[str, int]":
    """fp32 elements the loss terms of ``cfg.loss.terms`` keep for the backward, per image, beyond the referring
    loss (`activation_elements`' "sma_and_loss"); the same accounting rule. Each term counts its own
    (`LossTerm.activation_elements`, src/models/losses/); the proposals' matching, which the proposal terms share,
    is counted once ("proposal_matching")."""
    from src.models.losses.matching import ProposalMatcher
    from src.models.registry import LOSS_TERMS

    out = OrderedDict()
    terms = [LOSS_TERMS.get(name) for name in cfg.loss.terms]
    if any(term.uses_matching for term in terms):
        out["proposal_matching"] = ProposalMatcher.activation_elements(cfg, height, width)
    for name, term in zip(cfg.loss.terms, terms):
        elements = term.activation_elements(cfg, height, width)
        if elements:
            out[name] = elements
    return out


def training_memory_estimate(cfg: Config, bert_config, batch: int, height: Optional[int] = None,
                             width: Optional[int] = None, num_params: Optional[int] = None) -> "OrderedDict":
    """Bytes of one device's training step (fp32): parameters, gradients, AdamW's two moments,
    activations kept for the backward (`activation_elements` + `loss_activation_elements`, x batch), and the
    backward's working set: while a layer's backward runs, the gradients of its saved tensors exist next to
    them, so one more copy of the largest layer's activations. `num_params` defaults to `parameter_count`
    (which builds the model).

    A lower bound, not a prediction: it assumes every buffer is freed as soon as its last reader ran (perfect
    reuse by liveness) and counts no workspace, no fragmentation, no compiled-graph or runtime memory. The
    measured peak of one real step: tools/memory_probe.py."""
    height = height or cfg.model.image_size
    width = width or cfg.model.image_size
    params = num_params if num_params is not None else parameter_count(cfg, bert_config)
    acts = activation_elements(cfg.model, bert_config, height, width)
    largest_layer = acts.pop("largest_layer")
    acts.update(loss_activation_elements(cfg, height, width))
    out = OrderedDict()
    out["parameters"] = params * BYTES_FP32
    out["gradients"] = params * BYTES_FP32
    out["adamw_moments"] = 2 * params * BYTES_FP32
    for name, elements in acts.items():
        out[f"activations.{name}"] = elements * batch * BYTES_FP32
    activation_total = sum(acts.values()) * batch * BYTES_FP32
    out["activations"] = activation_total
    out["backward_working_set"] = largest_layer * batch * BYTES_FP32
    out["total"] = (out["parameters"] + out["gradients"] + out["adamw_moments"] + activation_total
                    + out["backward_working_set"])
    return out


def parameter_count(cfg: Config, bert_config) -> int:
    """Trainable parameters of CoupAlign, counted on the model built from `cfg` (random weights, nothing read
    from disk): whatever a part's Cells hold is counted, with no formula to keep in step with them."""
    from src.models.factory import create_model

    return count_parameters(create_model(cfg, load_pretrained=False, bert_config=bert_config))["total"]


# ================================================================================================
# Timing helpers
# ================================================================================================
def time_calls(call: Callable[[], object], steps: int, warmup: int) -> Dict[str, float]:
    """Runs `call` once (graph compilation happens here), `warmup` more times, then `steps` timed
    times. `call` must block until the result exists (read it back to the host).

    Returns first_s (first call), median_s, mean_s, min_s over the timed calls and compile_s =
    first_s - median_s (the cost of the first call beyond a steady one: graph compilation and
    first-touch allocation)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(warmup):
        call()
    times = []
    for _ in range(max(1, steps)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"first_s": first, "median_s": median, "mean_s": statistics.fmean(times), "min_s": min(times),
            "compile_s": first - median, "runs": len(times)}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _process_tree_cpu_s() -> float:
    """CPU seconds used by this process, its reaped children and its live descendants."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "r", encoding="utf-8") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tick = os.sysconf("SC_CLK_TCK")
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in parents.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    return total + sum(parents[pid][1] for pid in mine if pid != os.getpid()) / tick


def cpu_snapshot() -> Tuple[float, float, float]:
    """(machine busy CPU seconds, this process tree's CPU seconds, wall time), for `background_cpu_share`."""
    with open("/proc/stat", "r", encoding="utf-8") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return busy, _process_tree_cpu_s(), time.time()


def background_cpu_share(start: Tuple[float, float, float]) -> float:
    """Share of the machine's CPU time used by processes outside this benchmark since `start`: a
    measurement taken while this is more than a few percent was disturbed (timings too high)."""
    busy0, own0, wall0 = start
    busy1, own1, wall1 = cpu_snapshot()
    other = max(0.0, (busy1 - busy0) - (own1 - own0))
    return other / max(1e-9, (wall1 - wall0) * (os.cpu_count() or 1))


# ================================================================================================
# Inputs and models
# ================================================================================================
def random_batch(batch: int, image_size: int, tokens: int, vocab_size: int, seed: int = 0, other_objects: int = 0,
                 num_classes: int = 0):
    """NumPy inputs of the model's signature: a normalised-looking image, token ids with the second
    half of the rows padded after 60% of the tokens, a rectangular target mask and, with `other_objects`
    K > 0, (B, K, S, S) masks of other objects; with `num_classes` C > 0, (B, 1 + K) object categories (both
    zero-size otherwise: the train step's inputs are fixed, src/models/outputs.py)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    input_ids = rng.integers(1, vocab_size, (batch, tokens)).astype(np.int32)
    attention_mask = np.ones((batch, tokens), np.int32)
    cut = max(2, int(0.6 * tokens))
    attention_mask[batch // 2:, cut:] = 0
    input_ids[attention_mask == 0] = 0
    target = np.zeros((batch, image_size, image_size), np.float32)
    target[:, image_size // 4: 3 * image_size // 4, image_size // 3: 2 * image_size // 3] = 1.0
    others = np.zeros((batch, other_objects, image_size, image_size), np.uint8)  # (B, K, S, S); zero-size when K = 0
    if other_objects:  # one other object per sample
        others[:, 0, : image_size // 4, : image_size // 4] = 1
    categories = np.zeros((batch, 0), np.int32)  # (B, 0) without a category head
    if num_classes:  # the referent is class 0, the other object class 1 (or 0 with one class), slots "no object"
        categories = np.full((batch, 1 + other_objects), num_classes, np.int32)
        categories[:, 0] = 0
        if other_objects:
            categories[:, 1] = min(1, num_classes - 1)
    return image, input_ids, attention_mask, target, others, categories


def without_missing_checkpoints(cfg: Config) -> List[str]:
    """Timing does not depend on weight values: a configured pretrained file that does not exist is
    dropped (random initialisation, same architecture for Swin; BERT then takes the model.bert
    fields). Returns notes about what was dropped."""
    notes = []
    if cfg.model.swin.pretrained and not os.path.isfile(cfg.model.swin.pretrained):
        notes.append(f"model.swin.pretrained={cfg.model.swin.pretrained} not found: random Swin weights")
        cfg.model.swin.pretrained = ""
    if cfg.model.bert.pretrained and not os.path.isfile(cfg.model.bert.pretrained):
        notes.append(f"model.bert.pretrained={cfg.model.bert.pretrained} not found: random BERT built from "
                     f"the model.bert fields")
        cfg.model.bert.pretrained = ""
    return notes


def count_parameters(model) -> "OrderedDict[str, int]":
    """Parameters of the built CoupAlign per top-level part, and the total."""
    parts = OrderedDict((name, 0) for name in ("swin", "bert", "wpa", "pixel_decoder", "transformer_decoder", "head"))
    for param in model.trainable_params():
        top = param.name.split(".", 1)[0]
        parts[top] = parts.get(top, 0) + int(param.size)
    parts["total"] = sum(parts.values())
    return parts


def build_train_step(cfg: Config, model, optimizer: str = "adamw"):
    """The Trainer's compiled step (src.engine.train_step.build_train_step) on a poly schedule long enough
    that the lr never reaches zero while timing."""
    from src.engine.optimizer import PolyLR
    from src.engine.train_step import build_train_step as build

    tc = cfg.train
    return build(cfg, model, PolyLR(tc.lr, 10 ** 6, tc.lr_power, tc.warmup_steps), optimizer=optimizer)


def _ms_cells():
    """Small graph-mode Cells used for timing (defined lazily: MindSpore loads after the env is set)."""
    import mindspore as ms
    from mindspore import nn, ops

    class EncodePart(nn.Cell):
        """Swin + BERT with WPA at every stage -> (F1..F4, word features)."""

        def __init__(self, model):
            super().__init__(auto_prefix=False)
            self.model = model

        def construct(self, image, input_ids, attention_mask):
            features, words = self.model.encode(image, input_ids, attention_mask)
            return features[0], features[1], features[2], features[3], words

    class PixelDecoderPart(nn.Cell):
        """F1..F4 -> (P, the three coarse maps)."""

        def __init__(self, model):
            super().__init__(auto_prefix=False)
            self.pixel_decoder = model.pixel_decoder

        def construct(self, f1, f2, f3, f4):
            pixel_embed, multi_scale = self.pixel_decoder((f1, f2, f3, f4))
            return pixel_embed, multi_scale[0], multi_scale[1], multi_scale[2]

    class HeadPart(nn.Cell):
        """The rest of CoupAlign.construct: transformer decoder, SMA (or the no-SMA head), upsampling."""

        def __init__(self, model, image_size):
            super().__init__(auto_prefix=False)
            self.model = model
            self.image_size = image_size

        def construct(self, pixel_embed, m0, m1, m2, words, attention_mask):
            sentence = self.model.sentence_feature(words, attention_mask)
            mask_embeds = self.model.generate_masks((m0, m1, m2), pixel_embed)
            return self.model.predict(sentence, pixel_embed, mask_embeds, words, attention_mask,
                                      self.image_size, self.image_size)

    class Encoders(nn.Cell):
        """Our Swin + our BERT as two separate encoders (no fusion): the counterpart of timm + HF."""

        def __init__(self, swin, bert):
            super().__init__()
            self.swin = swin
            self.bert = bert

        def construct(self, image, input_ids, attention_mask):
            maps = self.swin(image)
            words = self.bert(input_ids, attention_mask)
            loss = words.mean()
            for feature in maps:
                loss = loss + feature.mean()
            return loss

    class GradOnly(nn.Cell):
        """Forward + backward to every parameter, no optimizer (what the PyTorch side does)."""

        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.net = net
            self.weights = ms.ParameterTuple(net.trainable_params())
            self.grad_fn = ms.value_and_grad(net, None, self.weights)

        def construct(self, image, input_ids, attention_mask):
            loss, grads = self.grad_fn(image, input_ids, attention_mask)
            return loss, grads

    class MatMul(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    return (EncodePart, PixelDecoderPart, HeadPart), Encoders, GradOnly, MatMul


# ================================================================================================
# Measurements
# ================================================================================================
def measure_forward(model, inputs, steps: int, warmup: int) -> Dict[str, float]:
    from mindspore import Tensor

    model.set_train(False)
    args = [Tensor(x) for x in inputs[:3]]
    return time_calls(lambda: model(*args).asnumpy(), steps, warmup)


def measure_train(step_cell, inputs, steps: int, warmup: int) -> Dict[str, float]:
    from mindspore import Tensor

    args = [Tensor(x) for x in inputs]
    return time_calls(lambda: step_cell(*args, update=True)[0].asnumpy(), steps, warmup)


def measure_parts(model, inputs, flops: Dict[str, int], args) -> Dict:
    """Forward time of the model's three stretches, each compiled on its own and fed the previous
    stretch's real outputs: encoders + WPA, pixel decoder, transformer decoder + SMA + upsampling.
    Their sum is close to, but not exactly, the full forward (three graphs instead of one)."""
    from mindspore import Tensor

    (EncodePart, PixelDecoderPart, HeadPart), _, _, _ = _ms_cells()
    model.set_train(False)
    image, input_ids, attention_mask = (Tensor(x) for x in inputs[:3])
    encode = EncodePart(model)
    decode = PixelDecoderPart(model)
    head = HeadPart(model, int(inputs[0].shape[-1]))
    for cell in (encode, decode, head):
        cell.set_train(False)
    *features, words = encode(image, input_ids, attention_mask)
    pixel_embed, *coarse = decode(*features)
    calls = [("encoders + WPA", lambda: encode(image, input_ids, attention_mask)[0].asnumpy(),
              flops["swin"] + flops["bert"] + flops["wpa"]),
             ("pixel decoder", lambda: decode(*features)[0].asnumpy(), flops["pixel_decoder"]),
             ("transformer decoder + SMA + upsampling",
              lambda: head(pixel_embed, *coarse, words, attention_mask).asnumpy(),
              flops["transformer_decoder"] + flops["sma"])]
    timings = OrderedDict((name, time_calls(call, args.steps, args.warmup)) for name, call, _ in calls)
    split = [(name, timings[name]["median_s"], part_flops) for name, _, part_flops in calls]
    return {"timings": timings, "split": split, "sum_s": sum(seconds for _, seconds, _ in split)}


def measure_encoders(cfg: Config, bert_config, image_size: int, tokens: int, threads: int,
                     steps: int, warmup: int) -> "OrderedDict[str, Dict[str, float]]":
    """Our Swin + BERT (graph mode) against timm's Swin + HF's BertModel (PyTorch eager), batch 1,
    forward (inference mode) and forward + backward (training mode, gradients of every parameter)."""
    import torch

    torch.set_num_threads(threads)
    inputs = random_batch(1, image_size, tokens, bert_config.vocab_size)[:3]
    out = OrderedDict()
    out.update(_time_our_encoders(cfg, bert_config, inputs, steps, warmup))
    out.update(_time_reference_encoders(cfg, bert_config, image_size, inputs, steps, warmup))
    return out


def _time_our_encoders(cfg: Config, bert_config, inputs, steps: int, warmup: int) -> Dict[str, Dict[str, float]]:
    from mindspore import Tensor

    from src.models.bert import BertModel
    from src.models.swin import SwinTransformer

    _, Encoders, GradOnly, _ = _ms_cells()
    encoders = Encoders(SwinTransformer(**swin_arch(cfg.model.swin)), BertModel(bert_config))
    args = [Tensor(x) for x in inputs]
    encoders.set_train(False)
    forward = time_calls(lambda: encoders(*args).asnumpy(), steps, warmup)
    encoders.set_train(True)
    with_grads = GradOnly(encoders)
    forward_backward = time_calls(lambda: with_grads(*args)[0].asnumpy(), steps, warmup)
    return {"ours_forward": forward, "ours_forward_backward": forward_backward}


def _time_reference_encoders(cfg: Config, bert_config, image_size: int, inputs, steps: int, warmup: int
                             ) -> Dict[str, Dict[str, float]]:
    import numpy as np
    import torch
    import transformers
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    arch = swin_arch(cfg.model.swin)
    # timm with the segmentation Swin's window semantics (never shrink the window, always shift).
    timm_swin = TimmSwin(img_size=image_size, patch_size=arch["patch_size"], embed_dim=arch["embed_dim"],
                         depths=tuple(arch["depths"]), num_heads=tuple(arch["num_heads"]),
                         window_size=arch["window_size"], mlp_ratio=arch["mlp_ratio"], qkv_bias=arch["qkv_bias"],
                         drop_path_rate=arch["drop_path_rate"], always_partition=True, num_classes=0)
    hf_config = transformers.BertConfig(
        vocab_size=bert_config.vocab_size, hidden_size=bert_config.hidden_size,
        num_hidden_layers=bert_config.num_hidden_layers, num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size, max_position_embeddings=bert_config.max_position_embeddings,
        type_vocab_size=bert_config.type_vocab_size, layer_norm_eps=bert_config.layer_norm_eps,
        hidden_dropout_prob=bert_config.hidden_dropout_prob,
        attention_probs_dropout_prob=bert_config.attention_probs_dropout_prob)
    hf_bert = transformers.BertModel(hf_config, add_pooling_layer=False)
    image, input_ids, attention_mask = inputs
    t_image = torch.from_numpy(image)
    t_ids = torch.from_numpy(input_ids.astype(np.int64))
    t_mask = torch.from_numpy(attention_mask.astype(np.int64))

    def loss():
        features = timm_swin.forward_features(t_image)
        words = hf_bert(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
        return features.mean() + words.mean()

    def forward():
        with torch.inference_mode():
            return float(loss())

    def forward_backward():
        for module in (timm_swin, hf_bert):
            module.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        return float(value.detach())

    timm_swin.eval(), hf_bert.eval()
    timed_forward = time_calls(forward, steps, warmup)
    timm_swin.train(), hf_bert.train()
    timed_forward_backward = time_calls(forward_backward, steps, warmup)
    return {"reference_forward": timed_forward, "reference_forward_backward": timed_forward_backward}


def measure_matmul_peak(n: int, repeats: int) -> Dict[str, float]:
    """fp32 FLOP/s of an n x n x n matmul in MindSpore (graph mode) and PyTorch; the larger is the peak."""
    import numpy as np
    import torch
    from mindspore import Tensor

    _, _, _, MatMul = _ms_cells()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    flops = 2.0 * n ** 3
    matmul = MatMul()
    ms_a, ms_b = Tensor(a), Tensor(b)
    ms_time = time_calls(lambda: matmul(ms_a, ms_b).asnumpy(), repeats, 1)["median_s"]
    t_a, t_b = torch.from_numpy(a), torch.from_numpy(b)
    torch_time = time_calls(lambda: torch.mm(t_a, t_b), repeats, 1)["median_s"]
    result = {"n": n, "mindspore_flops": flops / ms_time, "torch_flops": flops / torch_time}
    result["peak_flops"] = max(result["mindspore_flops"], result["torch_flops"])
    return result


def resolve_vocab(cfg: Config, refer, workdir: str) -> str:
    """The tokenizer's vocabulary: the configured one, the one beside the BERT checkpoint, or else a
    vocabulary written from the split's own words (ids then stay below any BERT vocab size)."""
    from src.models.bert import vocab_path_for

    if cfg.model.bert.vocab_path:
        return cfg.model.bert.vocab_path
    if cfg.model.bert.pretrained and os.path.isfile(vocab_path_for(cfg.model.bert.pretrained)):
        return vocab_path_for(cfg.model.bert.pretrained)
    words = set()
    for sample in refer.samples():
        words.update("".join(ch if ch.isalnum() else " " for ch in sample.text.lower()).split())
    path = os.path.join(workdir, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)) + "\n")
    return path


def prepare_training_data(cfg: Config, data_root: Optional[str], images: int, workdir: str):
    """(refer, tokenizer, data_root): the configured split of `data_root`, or a synthetic dataset of
    `images` images written into `workdir` by tools/make_synthetic_refer.py."""
    import dataclasses

    from src.data.base import build_dataset
    from src.data.tokenizer import BertTokenizer

    dataset, split_by = cfg.data.dataset, cfg.data.split_by
    if not data_root:
        data_root = os.path.join(workdir, "synthetic")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_synthetic_refer.py"), "--out", data_root,
                        "--images", str(images), "--seed", "0"], check=True, stdout=subprocess.DEVNULL)
        dataset, split_by = "refcoco", "unc"
    # The data keys chosen above (the synthetic tree is refcoco/unc whatever the config says) over the config's.
    data = dataclasses.replace(cfg.data, data_root=data_root, dataset=dataset, split_by=split_by)
    refer = build_dataset(dataclasses.replace(cfg, data=data), cfg.data.train_split)
    tokenizer = BertTokenizer(resolve_vocab(cfg, refer, workdir), max_tokens=cfg.model.max_tokens)
    return refer, tokenizer, data_root


def make_train_dataset(cfg: Config, refer, tokenizer, image_size: int, batch: int, workers: int):
    from src.data.dataset import create_refer_dataset

    return create_refer_dataset(refer, tokenizer, image_size, batch, train=True, num_workers=workers, seed=cfg.seed,
                                max_other_objects=num_other_objects(cfg), num_classes=num_proposal_classes(cfg))


def model_columns(dataset) -> List[int]:
    """Positions of the train step's inputs among the dataset's columns (the pipeline may carry more,
    e.g. a bad-sample flag)."""
    names = dataset.get_col_names()
    return [names.index(name) for name in ("image", "input_ids", "attention_mask", "mask", "others", "categories")]


def epochs_for(dataset, batches: int) -> int:
    return _ceil_div(batches, max(1, dataset.get_dataset_size())) + 1


def measure_data_pipeline(dataset, batch: int, batches: int) -> Dict[str, float]:
    """Images/s delivered by the pipeline alone; the first batch (worker start-up) is not timed."""
    iterator = dataset.create_tuple_iterator(num_epochs=epochs_for(dataset, batches + 1), output_numpy=True)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    iterator.stop()
    return {"batches": batches, "seconds": elapsed, "images_per_s": batches * batch / elapsed}


def measure_host_overhead(step_cell, dataset, fixed_inputs, steps: int) -> Dict[str, float]:
    """Host overhead of a training step: the Trainer's loop (next batch from the dataset iterator ->
    TrainStep -> read the three losses and the finite flag) against the same compiled TrainStep on
    fixed tensors (loss read only).

    Three blocks of `steps` steps: fixed tensors, the loop, fixed tensors again. The fixed-tensor
    blocks run while no iterator exists, so they are free of the data workers' CPU use (which is part
    of the overhead being measured); bracketing the loop by them cancels slow drift of the step time.
    The first batch (worker start-up) is not timed.
    """
    from mindspore import Tensor

    fixed = [Tensor(x) for x in fixed_inputs]

    def fixed_block() -> List[float]:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step_cell(*fixed, update=True)[0].asnumpy()
            times.append(time.perf_counter() - start)
        return times

    before = fixed_block()
    columns = model_columns(dataset)
    iterator = dataset.create_tuple_iterator(num_epochs=epochs_for(dataset, steps + 1))
    first = next(iterator)
    step_cell(*[first[c] for c in columns], update=True)[0].asnumpy()  # same shapes as the fixed tensors
    wait, compute = [], []
    for _ in range(steps):
        start = time.perf_counter()
        row = next(iterator)
        inputs = [row[c] for c in columns]
        fetched = time.perf_counter()
        *values, finite = step_cell(*inputs, update=True)
        losses = [float(v.asnumpy()) for v in values]
        bool(finite.asnumpy())
        done = time.perf_counter()
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"non-finite loss in the host-overhead loop: {losses}")
        wait.append(fetched - start)
        compute.append(done - fetched)
    iterator.stop()
    after = fixed_block()
    loop = [w + c for w, c in zip(wait, compute)]
    pure_mean = statistics.fmean(before + after)
    loop_mean = statistics.fmean(loop)
    return {"steps": steps, "loop_mean_s": loop_mean, "loop_median_s": statistics.median(loop),
            "data_wait_mean_s": statistics.fmean(wait), "step_call_mean_s": statistics.fmean(compute),
            "pure_before_mean_s": statistics.fmean(before), "pure_after_mean_s": statistics.fmean(after),
            "pure_step_mean_s": pure_mean, "overhead_fraction": (loop_mean - pure_mean) / loop_mean}


def measure_isa(argv_base: Sequence[str], isa_values: Sequence[str]) -> "OrderedDict[str, Dict]":
    """The whole-model forward (and the encoder comparison unless --skip_reference is in `argv_base`)
    under each ONEDNN_MAX_CPU_ISA value, each in a fresh process running this script --forward_only."""
    out = OrderedDict()
    for value in isa_values:
        with tempfile.TemporaryDirectory() as tmp:
            json_path = os.path.join(tmp, "isa.json")
            env = dict(os.environ, ONEDNN_MAX_CPU_ISA=value)
            cmd = [sys.executable, os.path.abspath(__file__), *argv_base, "--forward_only", "--json", json_path]
            code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
            if code != 0:
                why = f"killed by signal {-code} (9: most likely out of memory)" if code < 0 else f"exit {code}"
                raise RuntimeError(f"--isa_compare: the ONEDNN_MAX_CPU_ISA={value} run failed, {why}: "
                                   + " ".join(cmd))
            with open(json_path, "r", encoding="utf-8") as f:
                child = json.load(f)
            out[value] = {"forward": child["forward"], "background_cpu_share": child["setup"]["background_cpu_share"]}
            if "reference" in child:
                out[value]["reference"] = child["reference"]
    return out


# ================================================================================================
# Report
# ================================================================================================
# Results that may legitimately be zero or negative (a difference of two noisy timings).
SIGNED_FIELDS = ("compile_s", "overhead_fraction", "data_wait_mean_s", "background_cpu_share")


def _g(value: float) -> str:
    return f"{value / 1e9:,.2f} G"


def format_table(result: Dict) -> str:
    """The result as one two-column table (metric, value)."""
    rows: List[Tuple[str, str]] = []
    cfg = result["setup"]
    rows.append(("config", f"{cfg['config']} @ {cfg['image_size']}x{cfg['image_size']}, train batch "
                           f"{cfg['batch_size']}, {cfg['steps']} timed runs (median) after {cfg['warmup']} warm-up "
                           f"({cfg['train_warmup']} for training)"))
    rows.append(("machine", f"{cfg['threads']} threads (MindSpore and torch), ONEDNN_MAX_CPU_ISA="
                            f"{cfg['onednn_max_cpu_isa']}, MindSpore {cfg['mindspore']}, torch {cfg.get('torch', '-')}"))
    params, flops = result["parameters"], result["flops_forward"]
    for part in ("swin", "bert", "wpa", "pixel_decoder", "transformer_decoder", "head"):
        if part in params:
            flop_part = "sma" if part == "head" else part
            rows.append((f"  {part}", f"{params[part]:,} params, {_g(flops.get(flop_part, 0))}FLOPs/forward"))
    rows.append(("parameters / FLOPs per forward (batch 1)", f"{params['total']:,} / {_g(flops['total'])}FLOPs"))
    fwd = result["forward"]
    rows.append(("forward latency, batch 1", f"{fwd['median_s'] * 1e3:,.1f} ms (compile {fwd['compile_s']:.1f} s)"))
    if "parts" in result:
        parts = result["parts"]
        for name, seconds, part_flops in parts["split"]:
            rows.append((f"  {name}", f"{seconds * 1e3:,.1f} ms, {_g(part_flops)}FLOPs, "
                                      f"{part_flops / max(seconds, 1e-9) / 1e9:,.1f} GFLOP/s"))
        rows.append(("  (parts timed separately, sum)", f"{parts['sum_s'] * 1e3:,.1f} ms"))
    if "train" in result:
        tr = result["train"]
        rows.append((f"training step, batch {cfg['batch_size']}",
                     f"{tr['median_s'] * 1e3:,.1f} ms = {tr['images_per_s']:.2f} images/s (compile {tr['compile_s']:.1f} s)"))
    if "reference" in result:
        ref = result["reference"]
        for mode in ("forward", "forward_backward"):
            rows.append((f"encoders {mode.replace('_', '+')}: ours / timm+HF",
                         f"{ref['ours_' + mode]['median_s'] * 1e3:,.1f} / {ref['reference_' + mode]['median_s'] * 1e3:,.1f}"
                         f" ms = {ref['ratio_' + mode]:.2f}"))
    if "matmul_peak" in result:
        peak = result["matmul_peak"]
        rows.append((f"matmul peak fp32 (n={peak['n']})", f"MindSpore {peak['mindspore_flops'] / 1e9:,.1f}, torch "
                                                          f"{peak['torch_flops'] / 1e9:,.1f} GFLOP/s"))
        eff = result["efficiency"]
        rows.append(("full forward: achieved / share of peak",
                     f"{eff['forward_flops_per_s'] / 1e9:,.1f} GFLOP/s = {100 * eff['fraction_of_peak']:.1f}%"))
    mem = result["memory"]
    rows.append(("peak RSS after our model / at the end", f"{mem['peak_rss_mb_after_ours']:,.0f} / "
                                                           f"{mem['peak_rss_mb_end']:,.0f} MB"))
    if "data_pipeline" in result:
        data = result["data_pipeline"]
        versus = (f" = {data['ratio_to_training']:.1f}x what training consumes" if "ratio_to_training" in data
                  else " (no training step measured)")
        rows.append((f"data pipeline ({data['workers']} workers)", f"{data['images_per_s']:.1f} images/s{versus}"))
    if "host_overhead" in result:
        ho = result["host_overhead"]
        rows.append(("training loop vs compiled step",
                     f"{ho['loop_mean_s'] * 1e3:,.1f} vs {ho['pure_step_mean_s'] * 1e3:,.1f} ms/step (fixed tensors "
                     f"{ho['pure_before_mean_s'] * 1e3:,.1f} before, {ho['pure_after_mean_s'] * 1e3:,.1f} after): host "
                     f"overhead {100 * ho['overhead_fraction']:.1f}% (waiting for data {ho['data_wait_mean_s'] * 1e3:.1f} ms)"))
    if "isa" in result:
        for value, child in result["isa"].items():
            text = f"full forward {child['forward']['median_s'] * 1e3:,.1f} ms"
            if "reference" in child:
                ref = child["reference"]
                text += (f"; encoders fwd ours/timm+HF {ref['ours_forward']['median_s'] * 1e3:,.1f} / "
                         f"{ref['reference_forward']['median_s'] * 1e3:,.1f} ms, fwd+bwd "
                         f"{ref['ours_forward_backward']['median_s'] * 1e3:,.1f} / "
                         f"{ref['reference_forward_backward']['median_s'] * 1e3:,.1f} ms")
            text += f" (other processes {100 * child['background_cpu_share']:.0f}%)"
            rows.append((f"ONEDNN_MAX_CPU_ISA={value} (fresh process)", text))
    share = cfg.get("background_cpu_share")
    if share is not None:
        rows.append(("CPU used by other processes meanwhile", f"{100 * share:.1f}% of the machine"
                     + ("  (DISTURBED: timings too high)" if share > 0.05 else "")))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_memory_estimate(estimate: Dict, batch: int, capacity_gb: float) -> str:
    lines = [f"analytic training memory per device, batch {batch} (fp32): a LOWER BOUND (perfect buffer reuse, no "
             f"workspace or runtime memory); measure one real step with tools/memory_probe.py"]
    for name, value in estimate.items():
        lines.append(f"  {name:<34} {value / 2 ** 30:8.2f} GiB")
    lines.append(f"  {'share of a ' + str(int(capacity_gb)) + ' GB device':<34} "
                 f"{100 * estimate['total'] / (capacity_gb * 1e9):8.1f} %")
    return "\n".join(lines)


# ================================================================================================
# Command line
# ================================================================================================
def parse_args(argv: Sequence[str]):
    parser = argparse.ArgumentParser(description="CoupAlign benchmark (see the module docstring).")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart_cpu.yaml"))
    parser.add_argument("--image_size", type=int, default=None, help="model.image_size (default: the config's)")
    parser.add_argument("--batch_size", type=int, default=None, help="training batch (default: train.batch_size)")
    parser.add_argument("--steps", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs after the first (compiling) call")
    parser.add_argument("--train_warmup", type=int, default=5,
                        help="untimed training steps after the first: the step time still falls over the first "
                             "few steps (~15%% on the quickstart)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for MindSpore and torch (all cores)")
    parser.add_argument("--peak_n", type=int, default=2048, help="side of the square matmul measuring the peak")
    parser.add_argument("--data_root", default=None, help="refer data for the pipeline (default: synthetic, generated)")
    parser.add_argument("--data_images", type=int, default=64, help="images of the generated synthetic dataset")
    parser.add_argument("--skip_reference", action="store_true", help="no timm + HF comparison")
    parser.add_argument("--skip_train", action="store_true", help="no training step (nor host overhead)")
    parser.add_argument("--skip_data", action="store_true", help="no data pipeline (nor host overhead)")
    parser.add_argument("--parts", action="store_true", help="also time the forward's three parts, each compiled alone")
    parser.add_argument("--isa_compare", action="store_true", help="forward (and encoders) with ONEDNN_MAX_CPU_ISA=AVX2 and ALL, fresh processes")
    parser.add_argument("--memory_estimate", action="store_true",
                        help="print the analytic training memory of the configuration at --batch_size and exit")
    parser.add_argument("--device_memory_gb", type=float, default=32.0, help="device size for --memory_estimate")
    parser.add_argument("--forward_only", action="store_true", help=argparse.SUPPRESS)  # --isa_compare's children
    args, overrides = parser.parse_known_args(argv)
    return args, overrides


def load_benchmark_config(args, overrides: Sequence[str]) -> Tuple[Config, List[str]]:
    # The benchmark measures the paper's Swin against timm: the quickstart config's CNN encoder is swapped for its
    # Swin section unless an override names the encoder (a non-Swin encoder then stops in part_costs, by name).
    cfg = load_config(args.config, ["--model.image_encoder=swin", *overrides])
    if args.image_size:
        cfg.model.image_size = args.image_size
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    cfg.device_target = "CPU"
    cfg.mode = "graph"
    return cfg, without_missing_checkpoints(cfg)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parse_args(argv)
    from src.utils.runtime import apply_cpu_env_defaults

    apply_cpu_env_defaults()  # before MindSpore loads (oneDNN reads its ISA cap once)
    cfg, notes = load_benchmark_config(args, overrides)

    import numpy as np
    import mindspore as ms

    from src.models.bert import bert_config_from

    threads = args.threads or available_cpus()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)
    bert_config = bert_config_from(cfg.model.bert)

    if args.memory_estimate:
        batch = cfg.train.batch_size
        estimate = training_memory_estimate(cfg, bert_config, batch)
        print(format_memory_estimate(estimate, batch, args.device_memory_gb))
        _write({"batch_size": batch, "image_size": cfg.model.image_size, "memory_estimate_bytes": estimate}, args.json)
        return 0

    isa = None
    if args.isa_compare:  # first, while this process holds no model: at 480 the children need the memory
        child_argv = _drop_option([a for a in argv if a not in ("--isa_compare", "--parts")], "--json")
        isa = measure_isa(child_argv, ("AVX2", "ALL"))
    with tempfile.TemporaryDirectory(prefix="coupalign_bench_") as workdir:
        result = run_benchmark(args, cfg, bert_config, threads, notes, workdir)
    if isa is not None:
        result["isa"] = isa
    if not args.forward_only:
        print(format_table(result))
    _write(result, args.json)
    return 0


def run_benchmark(args, cfg: Config, bert_config, threads: int, notes: List[str], workdir: str) -> Dict:
    """Every measurement the flags ask for, in an order that keeps them apart: our model (forward,
    parts, training, host overhead), then the PyTorch reference, the matmul peak and the data
    pipeline alone."""
    import mindspore as ms

    from src.models.factory import create_model

    start_snapshot = cpu_snapshot()
    size, batch, tokens = cfg.model.image_size, cfg.train.batch_size, cfg.model.max_tokens
    result: Dict = OrderedDict()
    result["setup"] = {"config": os.path.relpath(args.config, ROOT) if args.config else "<defaults>",
                       "image_size": size, "batch_size": batch, "tokens": tokens, "steps": args.steps,
                       "warmup": args.warmup, "train_warmup": args.train_warmup, "threads": threads,
                       "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""), "mindspore": ms.__version__}
    result["notes"] = list(notes)

    # The dataset first: a data problem should fail before minutes of graph compilation.
    dataset, workers = None, min(cfg.data.num_workers, available_cpus())
    if not args.skip_data and not args.forward_only:
        if workers < cfg.data.num_workers:  # MindSpore refuses more parallel workers than cores
            result["notes"].append(f"data.num_workers={cfg.data.num_workers} capped at the {workers} cores")
        refer, tokenizer, _ = prepare_training_data(cfg, args.data_root, args.data_images, workdir)
        dataset = make_train_dataset(cfg, refer, tokenizer, size, batch, workers)
        result["setup"]["data_root"] = args.data_root or f"synthetic ({args.data_images} images)"

    model = create_model(cfg, load_pretrained=False)  # weights do not change the timing
    result["parameters"] = count_parameters(model)
    flops = coupalign_flops(cfg.model, bert_config, size, size)
    flops["total"] = sum(flops.values())
    result["flops_forward"] = flops

    forward_inputs = random_batch(1, size, tokens, bert_config.vocab_size, seed=cfg.seed)
    result["forward"] = measure_forward(model, forward_inputs, args.steps, args.warmup)
    print(f"forward: {result['forward']['median_s'] * 1e3:.1f} ms", flush=True)
    if args.forward_only:  # an --isa_compare child: our forward and, unless skipped, the encoders
        if not args.skip_reference:
            result["reference"] = measure_reference(cfg, bert_config, threads, args)
        result["setup"]["background_cpu_share"] = background_cpu_share(start_snapshot)
        return result

    if args.parts:
        result["parts"] = measure_parts(model, forward_inputs, flops, args)
    if not args.skip_train:
        model.set_train(True)
        step_cell = build_train_step(cfg, model)
        train_inputs = random_batch(batch, size, tokens, bert_config.vocab_size, seed=cfg.seed,
                                    other_objects=num_other_objects(cfg), num_classes=num_proposal_classes(cfg))
        train = measure_train(step_cell, train_inputs, args.steps, args.train_warmup)
        train["images_per_s"] = batch / train["median_s"]
        result["train"] = train
        print(f"train step: {train['median_s'] * 1e3:.1f} ms", flush=True)
        if dataset is not None:
            result["host_overhead"] = measure_host_overhead(step_cell, dataset, train_inputs, max(args.steps, 2))
        del step_cell
    result["memory"] = {"peak_rss_mb_after_ours": peak_rss_mb()}
    del model  # its compiled graphs hold gigabytes at large sizes; the reference needs the room
    gc.collect()

    if not args.skip_reference:
        import torch

        result["setup"]["torch"] = torch.__version__
        result["reference"] = measure_reference(cfg, bert_config, threads, args)
    peak = measure_matmul_peak(args.peak_n, max(3, args.steps))
    result["matmul_peak"] = peak
    achieved = flops["total"] / result["forward"]["median_s"]
    result["efficiency"] = {"forward_flops_per_s": achieved, "fraction_of_peak": achieved / peak["peak_flops"]}

    if dataset is not None:
        batches = max(4, min(dataset.get_dataset_size() - 1, 4 * args.steps))
        data = measure_data_pipeline(dataset, batch, batches)
        data["workers"] = workers
        if "train" in result:
            data["ratio_to_training"] = data["images_per_s"] / result["train"]["images_per_s"]
        result["data_pipeline"] = data
    result["memory"]["peak_rss_mb_end"] = peak_rss_mb()
    result["setup"]["background_cpu_share"] = background_cpu_share(start_snapshot)
    return result


def measure_reference(cfg: Config, bert_config, threads: int, args) -> Dict:
    """`measure_encoders` plus the ratios ours / theirs."""
    reference = measure_encoders(cfg, bert_config, cfg.model.image_size, cfg.model.max_tokens, threads,
                                 args.steps, args.warmup)
    for mode in ("forward", "forward_backward"):
        reference["ratio_" + mode] = reference["ours_" + mode]["median_s"] / reference["reference_" + mode]["median_s"]
    return reference


def _drop_option(argv: List[str], name: str) -> List[str]:
    """argv without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def _write(result: Dict, path: Optional[str]) -> None:
    if not path:
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
