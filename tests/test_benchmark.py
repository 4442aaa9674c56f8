"""The analytic costs that tools/benchmark.py sums (each part's own, beside its class: `SwinTransformer.analytic_flops`,
`bert_flops`, ...) against PyTorch's FlopCounterMode (the oracle) on timm's Swin and HF's BERT, the parameter
count of the built model against a hand formula (the oracle), the memory estimate's bookkeeping, and a smoke run
of the command line at a tiny size.

Oracle set-up. FlopCounterMode counts 2 FLOPs per multiply-add of the matmul, convolution and
attention operators it sees, the same convention as the analytic counter. PyTorch's fused CPU
attention kernel (`scaled_dot_product_attention` -> `_scaled_dot_product_flash_attention_for_cpu`)
has no FLOP formula registered, so timm's fused attention is switched off and HF's BERT runs its
"eager" attention: the scores and the weighted sum are then plain matmuls the counter sees. Both
counts are exact, so the tolerance (0.1%) is far below what a missing layer, stage, patch embedding
or padded window would change (the smallest of those, the patch embedding, is 1.3% of the tiny Swin at 224).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from timm.models.swin_transformer import SwinTransformer as TimmSwin
from torch.utils.flop_counter import FlopCounterMode

from src.config import config_from_dict, load_config
from src.arch.swin import swin_arch
from src.models.bert import BertConfig, bert_flops
from src.models.swin import ConvStem, SwinTransformer
from tools.benchmark import (SIGNED_FIELDS, activation_elements, coupalign_flops, loss_activation_elements, parameter_count,
                             part_costs, training_memory_estimate)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOP_TOL = 1e-3
TINY_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def oracle_flops(model: torch.nn.Module, *args, **kwargs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops()


def timm_swin(height: int, width: int, window: int) -> torch.nn.Module:
    """timm's Swin with the segmentation Swin's window semantics and unfused (countable) attention."""
    model = TimmSwin(img_size=(height, width), window_size=window, always_partition=True, num_classes=0,
                     **TINY_SWIN).eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


@pytest.mark.parametrize("height,width,window", [
    (224, 224, 7),   # no padding anywhere
    (160, 160, 7),   # maps 40, 20, 10, 5: every stage padded up to the window
    (168, 136, 12),  # non-square, odd sizes merged with padding (21x17 -> 11x9 -> 6x5)
])
def test_swin_flops_match_flop_counter(height, width, window):
    model = timm_swin(height, width, window)
    expected = oracle_flops(model.forward_features, torch.zeros(1, 3, height, width))
    arch = dict(TINY_SWIN, window_size=window, patch_size=4, mlp_ratio=4.0)
    counted = sum(SwinTransformer.analytic_flops(arch, height, width).values())
    assert abs(counted - expected) <= FLOP_TOL * expected, (counted, expected)


def test_swin_flops_per_stage_is_not_a_lucky_total():
    """Each stage alone against the oracle run stage by stage (a wrong stage cannot hide in the sum)."""
    model = timm_swin(224, 224, 7)
    arch = dict(TINY_SWIN, window_size=7, patch_size=4, mlp_ratio=4.0)
    ours = SwinTransformer.analytic_flops(arch, 224, 224)
    x = torch.zeros(1, 3, 224, 224)
    expected = {"patch_embed": oracle_flops(model.patch_embed, x)}
    with torch.no_grad():
        tokens = model.patch_embed(x)
    for i, stage in enumerate(model.layers):
        # timm's stage i starts with the merging that our counter books at the end of stage i-1.
        if i > 0:
            expected[f"stage{i - 1}"] += oracle_flops(stage.downsample, tokens)
        with torch.no_grad():
            merged = stage.downsample(tokens)
        expected[f"stage{i}"] = oracle_flops(stage.blocks, merged)
        with torch.no_grad():
            tokens = stage.blocks(merged)
    assert list(ours) == list(expected)
    for name, value in expected.items():
        assert abs(ours[name] - value) <= FLOP_TOL * value, (name, ours[name], value)


@pytest.mark.parametrize("height,width", [(64, 64), (66, 50)])
def test_conv_stem_flops_match_flop_counter(height, width):
    """model.swin.stem=conv: the analytic count of ConvStem (3x3 stride-2 convolutions, 1x1 projection) against
    PyTorch's counter on the same layers (norms and ReLU are not counted by either)."""
    arch = dict(swin_arch(config_from_dict(TINY_MODEL, {"model.swin.stem": "conv"}).model.swin))
    c = arch["embed_dim"]
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, c // 2, 3, 2, 1, bias=False), torch.nn.GroupNorm(8, c // 2),
                               torch.nn.ReLU(), torch.nn.Conv2d(c // 2, c, 3, 2, 1, bias=False),
                               torch.nn.GroupNorm(8, c), torch.nn.ReLU(), torch.nn.Conv2d(c, c, 1))
    x = torch.zeros(1, 3, height, width)
    assert stem(x).shape[2:] == SwinTransformer.stage_sizes(height, width)[0]
    assert ConvStem.analytic_cost(height, width, 3, c, arch["patch_size"])[0] == oracle_flops(stem, x)


def test_bert_flops_match_flop_counter():
    config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=160, max_position_embeddings=64)
    hf_config = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                        intermediate_size=160, max_position_embeddings=64)
    hf_config._attn_implementation = "eager"  # noqa: SLF001 - the countable attention path
    model = transformers.BertModel(hf_config, add_pooling_layer=False).eval()
    batch, tokens = 2, 12
    ids = torch.randint(1, 500, (batch, tokens))
    expected = oracle_flops(model, input_ids=ids, attention_mask=torch.ones_like(ids))
    counted = bert_flops(config, tokens, batch=batch)
    assert abs(counted - expected) <= FLOP_TOL * expected, (counted, expected)
    # One layer fewer must be far outside the tolerance (the test can see a missing layer).
    assert abs(bert_flops(config, tokens, batch=batch, num_layers=2) - expected) > 0.2 * expected


def test_swin_stage_sizes_round_up_like_the_model():
    assert SwinTransformer.stage_sizes(480, 480) == [(120, 120), (60, 60), (30, 30), (15, 15)]
    assert SwinTransformer.stage_sizes(168, 136) == [(42, 34), (21, 17), (11, 9), (6, 5)]
    assert SwinTransformer.stage_sizes(130, 130) == [(33, 33), (17, 17), (9, 9), (5, 5)]  # input padded to the patch


TINY_MODEL = {
    "model": {
        "image_size": 64, "max_tokens": 8,
        "swin": {"preset": "", "embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8],
                 "window_size": 4},
        "bert": {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "intermediate_size": 64, "max_position_embeddings": 32},
        "wpa": {"word_heads": 4},
        "mask_generator": {"conv_dim": 32, "mask_dim": 32, "encoder_layers": 1, "encoder_heads": 4,
                           "encoder_ffn_dim": 64, "num_queries": 8, "decoder_layers": 2, "decoder_heads": 4,
                           "decoder_ffn_dim": 64},
    },
}


@pytest.mark.parametrize("overrides", [
    {},
    {"model.mask_generator.pixel_decoder": "fpn", "model.wpa.bidirectional": False},
    {"model.sma.enabled": False, "model.swin.qkv_bias": False},
    {"model.swin.stem": "conv"},
])
def test_parameter_count_matches_the_built_model(overrides):
    """The benchmark counts the built model's parameters; a hand formula per part (the oracle: the Swin's and
    BERT's below, the registered parts' `analytic_cost(...).params`) must give the same number."""
    from src.models.bert import bert_config_from

    cfg = config_from_dict(TINY_MODEL, overrides)
    bert = bert_config_from(cfg.model.bert)
    built = parameter_count(cfg, bert)
    assert hand_parameter_count(cfg.model, bert) == built
    assert training_memory_estimate(cfg, bert, batch=1)["parameters"] == 4 * built  # its default: the built count


def hand_parameter_count(model_cfg, bert_config) -> int:
    """CoupAlign's parameters by hand: Swin (stem, blocks, merging, stage norms), BERT, the registered parts'
    own `analytic_cost(...).params`, and the sentence projection of the mixture / no-SMA head."""
    arch = swin_arch(model_cfg.swin)
    c0, window, ratio, patch = arch["embed_dim"], arch["window_size"], arch["mlp_ratio"], arch["patch_size"]
    norm = 2 * c0 if arch["patch_norm"] else 0
    if arch["stem"] == "patch":
        swin = 3 * c0 * patch * patch + c0 + norm
    else:  # ConvStem: 3x3 stride-2 convolutions (no bias) + GroupNorm, then a 1x1 projection
        steps, channels, swin = patch.bit_length() - 1, 3, norm
        for j in range(steps):
            width_j = max(c0 // 2 ** (steps - 1 - j), 1)
            swin += channels * width_j * 9 + 2 * width_j
            channels = width_j
        swin += channels * c0 + c0
    for i, depth in enumerate(arch["depths"]):
        c, heads = c0 * 2 ** i, arch["num_heads"][i]
        hidden = int(c * ratio)
        block = (4 * c                                       # two LayerNorms
                 + (2 * window - 1) ** 2 * heads              # relative position table
                 + 3 * c * c + (3 * c if arch["qkv_bias"] else 0) + c * c + c
                 + c * hidden + hidden + hidden * c + c)
        swin += depth * block + 2 * c                         # + norm_i
        if i < 3:
            swin += 8 * c + 4 * c * 2 * c                     # merging norm (4C) + reduction 4C -> 2C
    h, inter = bert_config.hidden_size, bert_config.intermediate_size
    bert = ((bert_config.vocab_size + bert_config.max_position_embeddings + bert_config.type_vocab_size) * h + 2 * h
            + bert_config.num_hidden_layers * (4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h))
    registered = sum(cost.params for cost in part_costs(model_cfg, bert_config, patch * 32, patch * 32).values())
    mask_dim = model_cfg.mask_generator.mask_dim
    return swin + bert + registered + h * mask_dim + mask_dim


PAPER_PARAMETERS = 234_977_592  # the built model's count: tests/test_coupalign.py::test_paper_configuration_parameter_count


def test_paper_configuration_counts():
    """The paper configuration's analytic numbers (the README quotes the parameter count)."""
    cfg = load_config(os.path.join(ROOT, "default_config.yaml"),
                      ["--model.swin.pretrained=", "--model.bert.pretrained="])
    bert = BertConfig()
    assert hand_parameter_count(cfg.model, bert) == PAPER_PARAMETERS
    flops = coupalign_flops(cfg.model, bert, 480, 480)
    assert flops["swin"] == sum(SwinTransformer.analytic_flops(swin_arch(cfg.model.swin), 480, 480).values())
    training = coupalign_flops(cfg.model, bert, 480, 480, training=True)
    assert training["sma"] == (cfg.model.mask_generator.decoder_layers + 1) * flops["sma"]


def test_memory_estimate_bookkeeping():
    cfg = load_config(os.path.join(ROOT, "default_config.yaml"),
                      ["--model.swin.pretrained=", "--model.bert.pretrained="])
    bert = BertConfig()
    one = training_memory_estimate(cfg, bert, batch=1, num_params=PAPER_PARAMETERS)
    four = training_memory_estimate(cfg, bert, batch=4, num_params=PAPER_PARAMETERS)
    params = PAPER_PARAMETERS * 4
    assert one["parameters"] == one["gradients"] == params and one["adamw_moments"] == 2 * params
    assert four["activations"] == 4 * one["activations"]
    parts = activation_elements(cfg.model, bert, 480, 480)
    largest = parts.pop("largest_layer")
    losses = loss_activation_elements(cfg, 480, 480)
    # Every loss the default config turns on is counted (issue 22: the proposal loss was left out).
    assert set(losses) == {"proposal_matching", "aux_contrast"} and four["activations.proposal_matching"] > 0.6 * 2 ** 30
    assert four["activations"] == 4 * 4 * (sum(parts.values()) + sum(losses.values()))
    assert four["backward_working_set"] == 4 * 4 * largest and largest < max(parts.values())
    assert four["total"] == (4 * params + four["activations"] + four["backward_working_set"])
    assert all(v > 0 for v in parts.values())
    # model.swin.recompute_stages=[2]: the deepest stage's blocks keep their inputs only.
    cfg.model.swin.recompute_stages = [2]
    recomputed = training_memory_estimate(cfg, bert, batch=4, num_params=PAPER_PARAMETERS)
    assert recomputed["activations.swin"] < 0.5 * four["activations.swin"]
    assert recomputed["backward_working_set"] == four["backward_working_set"]


# ------------------------------------------------------------------------------------------------
# Smoke run of the command line (not a timing assertion)
# ------------------------------------------------------------------------------------------------
SMOKE_OVERRIDES = [
    "--model.image_size=64", "--model.max_tokens=8",
    "--model.swin.depths=[1,1,1,1]", "--model.swin.num_heads=[1,2,2,4]", "--model.swin.embed_dim=16",
    "--model.swin.window_size=4",
    "--model.bert.pretrained=", "--model.bert.hidden_size=32", "--model.bert.num_hidden_layers=4",
    "--model.bert.num_attention_heads=4", "--model.bert.intermediate_size=64", "--model.bert.vocab_size=1000",
    "--model.wpa.word_heads=4",
    "--model.mask_generator.conv_dim=16", "--model.mask_generator.mask_dim=16",
    "--model.mask_generator.num_queries=4", "--data.max_other_objects=3", "--model.mask_generator.decoder_layers=1",
    "--model.mask_generator.decoder_heads=2", "--model.mask_generator.decoder_ffn_dim=32",
    "--loss.aux_num_fg=8", "--loss.aux_num_bg=16", "--data.num_workers=2",
]

REQUIRED = [
    ("parameters", "total"), ("flops_forward", "total"), ("forward", "median_s"), ("forward", "compile_s"),
    ("train", "images_per_s"), ("train", "compile_s"),
    ("reference", "ratio_forward"), ("reference", "ratio_forward_backward"),
    ("matmul_peak", "mindspore_flops"), ("matmul_peak", "torch_flops"), ("matmul_peak", "peak_flops"),
    ("efficiency", "fraction_of_peak"), ("memory", "peak_rss_mb_after_ours"), ("memory", "peak_rss_mb_end"),
    ("data_pipeline", "images_per_s"), ("data_pipeline", "ratio_to_training"),
    ("host_overhead", "overhead_fraction"), ("host_overhead", "pure_step_mean_s"),
    ("setup", "background_cpu_share"),
]


def _numbers(tree, path=()):
    """Every numeric leaf of a JSON tree as (path, value)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, path + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _numbers(value, path + (index,))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


@pytest.mark.slow
def test_command_line_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--config",
           os.path.join(ROOT, "configs", "quickstart_cpu.yaml"), "--steps", "1", "--warmup", "0", "--train_warmup", "0", "--batch_size", "2",
           "--peak_n", "256", "--data_images", "12", "--json", str(out), *SMOKE_OVERRIDES]
    env = dict(os.environ, GLOG_v="3")
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters / FLOPs per forward" in proc.stdout and "matmul peak" in proc.stdout
    result = json.loads(out.read_text())
    for section, key in REQUIRED:
        assert key in result.get(section, {}), f"missing {section}.{key}"
    for path, value in _numbers(result):
        assert math.isfinite(value), f"{'.'.join(map(str, path))} = {value}"
        if path[-1] in ("warmup", "train_warmup"):  # settings, legitimately 0 here
            assert value == 0
        elif path[-1] not in SIGNED_FIELDS:
            assert value > 0, f"{'.'.join(map(str, path))} = {value}"
    assert result["flops_forward"]["total"] == sum(v for k, v in result["flops_forward"].items() if k != "total")
    assert result["parameters"]["total"] == sum(v for k, v in result["parameters"].items() if k != "total")
    ref = result["reference"]
    assert np.isclose(ref["ratio_forward"], ref["ours_forward"]["median_s"] / ref["reference_forward"]["median_s"])
    assert 0 < result["efficiency"]["fraction_of_peak"] < 1
    assert result["host_overhead"]["overhead_fraction"] < 1

