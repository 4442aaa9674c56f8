"""Convert PyTorch Swin Transformer weights to a MindSpore checkpoint for ``src.models.swin.SwinTransformer``.

Accepted source layouts (detected automatically, or forced with ``--layout``):

* official (microsoft/Swin-Transformer releases such as ``swin_base_patch4_window12_384_22k.pth``, and the
  segmentation Swin): weights nested under ``"model"``; ``layers.i.downsample`` is the patch merging AFTER
  stage i; a final ``norm`` (classification) or per-stage ``norm0..norm3`` (segmentation); ``head.*``.
* timm >= 0.9: ``layers.i.downsample`` is the merging at the START of stage i, i.e. the official
  ``layers.(i-1).downsample``; final ``norm``; ``head.fc.*``. ``layers_i`` (feature-extractor naming) is
  accepted as ``layers.i``.

What the conversion does: strips a ``module.``/``backbone.``/``model.`` prefix, drops the classifier head and
the ``relative_position_index``/``attn_mask`` buffers, renumbers timm's downsample layers, renames a final
``norm.*`` to ``norm{last}.*`` when the checkpoint has no per-stage norm for the last stage (the other stage
norms then stay at their initialisation: weight 1, bias 0), and resizes every ``relative_position_bias_table``
with bicubic interpolation when the checkpoint's window differs from ``window_size``. The bicubic kernel is
our own NumPy implementation of ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``
(Keys cubic, A = -0.75, half-pixel centres, clamped borders, no antialiasing), the resize used by the
official Swin code; ``tests/test_swin.py`` checks it against torch.

Usage::

    python tools/convert_swin.py --src swin_base_patch4_window12_384_22k.pth --dst swin_base.ckpt \\
        --preset base --window_size 12
    python tools/convert_swin.py --src tiny.pth --dst tiny.ckpt --embed_dim 32 --depths 2,2,2,2 \\
        --num_heads 1,2,4,8 --window_size 7
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

if __name__ == "__main__":  # allow `python tools/convert_swin.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.engine.checkpoint import CheckpointMismatchError  # noqa: E402  (no MindSpore import)

__all__ = [
    "ConversionReport",
    "convert_swin_state_dict",
    "resize_relative_position_bias_table",
    "bicubic_resize_matrix",
    "detect_layout",
    "swin_param_shapes",
    "main",
]

_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")
_DOWNSAMPLE_RE = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
_LAYER_RE = re.compile(r"^layers\.(\d+)\.")


@dataclasses.dataclass
class ConversionReport:
    """What the conversion changed and how the result compares with the target model's parameters."""

    layout: str = "unknown"
    stripped_prefix: Optional[str] = None
    dropped: List[str] = dataclasses.field(default_factory=list)
    renamed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    resized: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)
    missing: List[str] = dataclasses.field(default_factory=list)
    unexpected: List[str] = dataclasses.field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = dataclasses.field(default_factory=list)
    compared: bool = False

    def format(self, max_items: int = 20) -> str:
        """Human-readable multi-line summary."""

        def block(title, items):
            lines = [f"{title}: {len(items)}"]
            for item in items[:max_items]:
                lines.append(f"    {item}")
            if len(items) > max_items:
                lines.append(f"    ... ({len(items) - max_items} more)")
            return lines

        lines = [f"Swin conversion report (source layout: {self.layout})"]
        if self.stripped_prefix:
            lines.append(f"  stripped key prefix: {self.stripped_prefix!r}")
        lines += ["  " + s for s in block("dropped (head / buffers / outside the backbone)", self.dropped)]
        renamed = [f"{a} -> {b}" for a, b in self.renamed]
        lines += ["  " + s for s in block("renamed", renamed)]
        resized = [f"{k}: {tuple(a)} -> {tuple(b)}" for k, a, b in self.resized]
        lines += ["  " + s for s in block("relative position tables resized (bicubic, torch-compatible)",
                                          resized)]
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.compared:
            lines += ["  " + s for s in block("MISSING in checkpoint (kept at model init)", self.missing)]
            lines += ["  " + s for s in block("UNEXPECTED (not in model)", self.unexpected)]
            mism = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            lines += ["  " + s for s in block("SHAPE MISMATCH", mism)]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Bicubic resize of relative position bias tables
# ---------------------------------------------------------------------------------------------------------
def _cubic_weights(t: float, a: float = -0.75) -> Tuple[float, float, float, float]:
    """Keys cubic convolution weights for the 4 taps at offsets -1, 0, 1, 2 from floor(x); t = frac(x)."""

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix M with ``resized = M @ signal`` along one axis.

    Matches PyTorch's bicubic ``interpolate(..., align_corners=False)``: source coordinate
    ``(dst + 0.5) * in/out - 0.5`` (not clamped), taps at floor-1..floor+2 clamped to the border.
    """
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for dst in range(out_size):
        src = scale * (dst + 0.5) - 0.5
        base = math.floor(src)
        for tap, weight in enumerate(_cubic_weights(src - base)):
            index = min(max(base - 1 + tap, 0), in_size - 1)
            matrix[dst, index] += weight
    return matrix


def resize_relative_position_bias_table(table: np.ndarray, new_window_size: int,
                                        name: str = "relative position table") -> np.ndarray:
    """Resize a ``((2W-1)^2, heads)`` table to ``((2W'-1)^2, heads)`` by bicubic interpolation per head.

    The table is a row-major (2W-1) x (2W-1) grid over (dy, dx) offsets for each head.
    """
    rows, heads = table.shape
    side = int(round(math.sqrt(rows)))
    if side * side != rows or side % 2 != 1:
        raise CheckpointMismatchError(f"{name} with {rows} rows is not a (2W-1)^2 grid")
    new_side = 2 * new_window_size - 1
    if new_side == side:
        return table.copy()
    grid = table.astype(np.float64).reshape(side, side, heads)
    rows_m = bicubic_resize_matrix(side, new_side)  # (S', S)
    resized = np.einsum("ij,jkh,lk->ilh", rows_m, grid, rows_m)  # (S', S', heads)
    return resized.reshape(new_side * new_side, heads).astype(table.dtype)


# ---------------------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------------------
def _block_dim(state: Mapping[str, np.ndarray], layer: int) -> Optional[int]:
    key = f"layers.{layer}.blocks.0.norm1.weight"
    return int(state[key].shape[0]) if key in state else None


def detect_layout(state: Mapping[str, np.ndarray]) -> str:
    """'official' (merging after stage i stored at layers.i) or 'timm' (stored at layers.(i+1)).

    Decided from the input width of the first merging layer: it consumes 4x the channels of the stage it
    follows. Falls back to index positions (official starts at 0, timm at 1) when widths are unavailable.
    """
    indices = sorted({int(m.group(1)) for k in state for m in [_DOWNSAMPLE_RE.match(k)] if m})
    if not indices:
        return "official"  # single stage or no merging: both layouts coincide
    first = indices[0]
    reduction = state.get(f"layers.{first}.downsample.reduction.weight")
    if reduction is not None:
        in_features = int(reduction.shape[1])
        own, prev = _block_dim(state, first), _block_dim(state, first - 1)
        if own is not None and in_features == 4 * own:
            return "official"
        if prev is not None and in_features == 4 * prev:
            return "timm"
    return "official" if first == 0 else "timm"


def _strip_prefix(state: Dict[str, np.ndarray], report: ConversionReport) -> Dict[str, np.ndarray]:
    if any(k.startswith("patch_embed.") for k in state):
        return state
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "patch_embed.") for k in state):
            report.stripped_prefix = prefix
            out = {}
            for key, value in state.items():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = value
                else:
                    report.dropped.append(key)
            return out
    return state


def convert_swin_state_dict(
        state: Mapping[str, np.ndarray],
        window_size: Optional[int] = None,
        expected_shapes: Optional[Mapping[str, Sequence[int]]] = None,
        layout: str = "auto",
) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Map a PyTorch Swin state dict (official or timm layout) to our ``SwinTransformer`` parameter names.

    Args:
        state: flat ``name -> array`` mapping (see ``src.utils.pth_reader.flatten_state_dict``).
        window_size: target window; relative position tables of another size are resized (bicubic).
            ``None`` keeps them as they are.
        expected_shapes: ``name -> shape`` of the target model (``swin_param_shapes(model)``); when given,
            the report lists missing / unexpected / shape-mismatched keys.
        layout: ``"auto"``, ``"official"`` or ``"timm"``.

    Returns:
        (params, report): converted ``name -> array`` (float arrays as float32) and a ``ConversionReport``.
    """
    if layout not in ("auto", "official", "timm"):
        raise ValueError(f"layout must be auto/official/timm, got {layout!r}")
    report = ConversionReport()
    work: Dict[str, np.ndarray] = {}
    for key, value in state.items():
        new_key = re.sub(r"^((?:[a-z_]+\.)?)layers_(\d+)\.", r"\1layers.\2.", key)
        if new_key != key:
            report.renamed.append((key, new_key))
        work[new_key] = np.asarray(value)
    work = _strip_prefix(work, report)

    kept: Dict[str, np.ndarray] = {}
    for key, value in work.items():
        if key.startswith("head.") or key.split(".")[-1] in _BUFFER_SUFFIXES:
            report.dropped.append(key)
        else:
            kept[key] = value

    report.layout = detect_layout(kept) if layout == "auto" else layout
    if report.layout == "timm":
        renumbered = {}
        for key, value in kept.items():
            match = _DOWNSAMPLE_RE.match(key)
            if match:
                index = int(match.group(1))
                if index == 0:
                    raise CheckpointMismatchError(f"timm layout has no merging at the start of stage 0, found {key}")
                new_key = f"layers.{index - 1}.downsample.{match.group(2)}"
                report.renamed.append((key, new_key))
                key = new_key
            renumbered[key] = value
        kept = renumbered

    # Number of stages: from the target model when known, else from the checkpoint's layer indices.
    if expected_shapes is not None:
        stage_norms = [k for k in expected_shapes if re.match(r"^norm\d+\.weight$", k)]
        num_layers = len(stage_norms)
    else:
        num_layers = 1 + max((int(m.group(1)) for k in kept for m in [_LAYER_RE.match(k)] if m), default=-1)
    last_norm = f"norm{num_layers - 1}"
    final_norm_keys = [k for k in kept if k.startswith("norm.")]
    if final_norm_keys and num_layers > 0:
        if f"{last_norm}.weight" in kept:
            for key in final_norm_keys:
                report.dropped.append(key)
                del kept[key]
            report.notes.append(f"checkpoint has both 'norm' and '{last_norm}'; kept '{last_norm}'")
        else:
            for key in final_norm_keys:
                new_key = last_norm + key[len("norm"):]
                kept[new_key] = kept.pop(key)
                report.renamed.append((key, new_key))
            report.notes.append(f"final classification 'norm' used as the last stage norm '{last_norm}'; "
                                f"other stage norms not in the checkpoint stay at init (weight 1, bias 0)")

    if window_size is not None:
        target_rows = (2 * window_size - 1) ** 2
        for key in sorted(kept):
            if key.endswith("relative_position_bias_table") and kept[key].shape[0] != target_rows:
                old_shape = kept[key].shape
                kept[key] = resize_relative_position_bias_table(kept[key], window_size, name=key)
                report.resized.append((key, tuple(old_shape), tuple(kept[key].shape)))

    params = {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v) for k, v in kept.items()}

    if expected_shapes is not None:
        report.compared = True
        expected = {k: tuple(int(d) for d in s) for k, s in expected_shapes.items()}
        report.missing = sorted(k for k in expected if k not in params)
        report.unexpected = sorted(k for k in params if k not in expected)
        report.mismatched = sorted((k, tuple(params[k].shape), expected[k]) for k in params
                                   if k in expected and tuple(params[k].shape) != expected[k])
    return params, report


def swin_param_shapes(model) -> Dict[str, Tuple[int, ...]]:
    """``name -> shape`` of every Parameter of a MindSpore model (the converter's target)."""
    return {p.name: tuple(p.shape) for p in model.get_parameters()}


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def _int_list(text: str) -> Tuple[int, ...]:
    return tuple(int(v) for v in re.split(r"[,\s]+", text.strip()) if v)


def _load_source(path: str) -> Dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file  # optional dependency, only for this input type
        return dict(load_file(path))
    from src.utils.pth_reader import flatten_state_dict, load_pth
    return flatten_state_dict(load_pth(path, unknown_globals="stub"), source=path)


def _tolerated_missing(missing: Sequence[str], num_layers: int) -> bool:
    """Missing keys are acceptable only for stage norms a classification checkpoint cannot have."""
    allowed = {f"norm{i}.{p}" for i in range(num_layers - 1) for p in ("weight", "bias")}
    return all(k in allowed for k in missing)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="PyTorch checkpoint (.pth/.bin zip, or .safetensors)")
    parser.add_argument("--dst", required=True, help="output MindSpore checkpoint (.ckpt)")
    parser.add_argument("--preset", default="base", help="tiny | small | base | large")
    parser.add_argument("--window_size", type=int, default=12)
    parser.add_argument("--embed_dim", type=int, default=None, help="override the preset's embed_dim")
    parser.add_argument("--depths", type=_int_list, default=None, help="override, e.g. 2,2,18,2")
    parser.add_argument("--num_heads", type=_int_list, default=None, help="override, e.g. 4,8,16,32")
    parser.add_argument("--layout", default="auto", choices=("auto", "official", "timm"))
    parser.add_argument("--allow_partial", action="store_true",
                        help="write the checkpoint even with unexpected/mismatched/missing keys")
    args = parser.parse_args(argv)

    import mindspore as ms
    from src.models.swin import build_swin

    model = build_swin(args.preset, window_size=args.window_size, embed_dim=args.embed_dim,
                       depths=args.depths, num_heads=args.num_heads)
    state = _load_source(args.src)
    params, report = convert_swin_state_dict(state, window_size=args.window_size,
                                             expected_shapes=swin_param_shapes(model), layout=args.layout)
    print(report.format())
    problems = bool(report.unexpected or report.mismatched or
                    not _tolerated_missing(report.missing, model.num_layers))
    if problems and not args.allow_partial:
        print("error: checkpoint does not fit the model (see report); use --allow_partial to write anyway",
              file=sys.stderr)
        return 2

    loaded = 0
    for param in model.get_parameters():
        value = params.get(param.name)
        if value is not None and tuple(value.shape) == tuple(param.shape):
            param.set_data(ms.Tensor(value, dtype=param.dtype))
            loaded += 1
    ms.save_checkpoint(model, args.dst)
    print(f"wrote {args.dst}: {loaded} parameters from the checkpoint, "
          f"{len(list(model.get_parameters())) - loaded} at initialisation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
