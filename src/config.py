"""Typed configuration: one schema, one YAML loader, model-zoo style command-line overrides.

The schema is a tree of dataclasses. `load_config(path, argv)` reads the YAML file, applies the
`--key=value` / `--key value` overrides from `argv`, checks every key and type against the schema
and returns a `Config`. Nothing here runs at import time, so any module (and any test or notebook)
can import this one freely.

Override keys are dotted paths (`--model.swin.depths=[2,2,6,2]`) or, for convenience, a leaf name
that is unique in the whole tree (`--data_root=/data` means `--data.data_root=/data`). An unknown
key is an error that lists the nearest valid keys.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import yaml

from src.arch.bert import BertConfig  # no MindSpore import: the schema derives model.bert from it


from src.errors import ConfigError  # noqa: E402,F401  (re-exported: callers import it from here)


# ----------------------------------------------------------------------------------------------
# Schema. Defaults are the paper configuration (docs/method.md); default_config.yaml
# spells the same values out so users see them in one file.
# ----------------------------------------------------------------------------------------------
@dataclass
class SwinSection:
    # One of tiny/small/base/large; embed_dim/depths/num_heads left null take the preset's values.
    preset: str = "base"
    embed_dim: Optional[int] = None
    depths: Optional[List[int]] = None
    num_heads: Optional[List[int]] = None
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3
    patch_norm: bool = True
    # Swin's absolute position embedding (`ape`), learned, one per patch of model.image_size: off in the
    # released Swin-B (the paper configuration); the quickstart's from-scratch Swin measures it.
    ape: bool = False
    # "patch": Swin's 4x4 patch projection (the released checkpoints). "conv": an overlapping convolutional
    # stem with the same output grid (src/models/swin.py, ConvStem), for a Swin trained from scratch.
    stem: str = "patch"
    # A checkpoint written by tools/convert_swin.py; empty = random initialisation.
    pretrained: str = ""
    # Stages (0-based, as in depths) whose blocks recompute their activations in the backward instead of keeping
    # them (MindSpore's Cell.recompute): less training memory for one more forward of those blocks, the same
    # loss and gradients. [2] = the deepest stage, 18 of Swin-B's 24 blocks (docs/performance.md, "Training memory").
    recompute_stages: List[int] = field(default_factory=list)


@dataclass
class ConvNetSection:
    # model.image_encoder: convnet only (src/models/convnet.py): channels and residual blocks of the 4 stages.
    widths: List[int] = field(default_factory=lambda: [32, 64, 128, 256])
    depths: List[int] = field(default_factory=lambda: [2, 2, 2, 2])
    # An encoder checkpoint written by tools/pretrain_visual.py; empty = random initialisation.
    pretrained: str = ""


@dataclass
class BertSection(BertConfig):
    """BERT's architecture (`BertConfig`'s fields and defaults, named as in HF config.json) plus where to load
    it from. With `pretrained` set, the checkpoint carries its own architecture and vocabulary and the
    architecture fields here are ignored in favour of the checkpoint's."""

    where: ClassVar[str] = "model.bert"
    # A checkpoint written by tools/convert_bert.py; empty = random initialisation.
    pretrained: str = ""
    # WordPiece vocabulary; empty = the one stored beside `pretrained`.
    vocab_path: str = ""

    def architecture(self) -> BertConfig:
        """The architecture fields as a BertConfig (ignoring `pretrained`; see `src.models.bert.bert_config_from`)."""
        return BertConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BertConfig)})


@dataclass
class WPASection:
    # true: BERT runs in 4 layer groups interleaved with the Swin stages and words attend to
    # pixels (CoupAlign). false: LAVT-style one-way fusion (all of BERT first).
    bidirectional: bool = True
    word_heads: int = 8


@dataclass
class MSDeformSection:
    """The deformable-attention encoder of the "msdeform" pixel decoder (read only when it is chosen)."""
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_points: int = 4
    encoder_ffn_dim: int = 1024
    # Recompute each deformable attention's sampling in the backward instead of keeping the gathered
    # neighbours: less training memory, one more gather per layer (docs/performance.md).
    recompute_sampling: bool = False


@dataclass
class MaskGeneratorSection:
    # A registered pixel decoder (src/models/pixel_decoder.py): msdeform | fpn. Its own options live in the
    # sub-section of the same name (model.mask_generator.msdeform.*), read only when it is chosen.
    pixel_decoder: str = "msdeform"
    conv_dim: int = 256
    mask_dim: int = 256
    msdeform: MSDeformSection = field(default_factory=MSDeformSection)
    # A registered transformer decoder that turns the multi-scale features into the N proposals' mask
    # embeddings (src/models/transformer_decoder.py): masked_attention (Mask2Former's).
    transformer_decoder: str = "masked_attention"
    num_queries: int = 100
    decoder_layers: int = 9
    decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    # Object categories the proposals are classified into (Mask2Former's class head on the mask
    # embeddings, trained on the categories of instances.json; one more class = "no object").
    # 0 = no category head (the proposals are class-agnostic). Needs loss.proposal_loss=matched.
    num_classes: int = 0


@dataclass
class SMASection:
    # false: the "no SMA" ablation, logits = Linear(sentence) . pixel embeddings.
    enabled: bool = True
    weighting: str = "softmax"  # softmax | sigmoid
    sentence_pool: str = "cls"  # cls | mean
    deep_supervision: bool = True
    # true: each proposal's score also sees where its mask lies and how large it is (centroid x, y and
    # area of sigmoid(Q_n . P), no gradient through them), so that "left", "top", "big" can choose among
    # proposals (docs/developer.md, "Design decisions"). false: the paper's scores Q_n . g only.
    mask_geometry: bool = False
    # > 0: the proposals read the words (cross-attention) and each other (self-attention) in this many
    # layers before they are scored, so that a score can depend on the other objects a sentence names
    # ("left of the blue square"). 0: the paper's scores Q_n . g (src/models/sma.py, ProposalReasoning).
    reasoning_layers: int = 0
    # Inference only (eval, infer, export): the mask of the single highest-scoring proposal instead of the
    # weighted mix a = sum_n w_n Q_n, which blurs the mask when the weights are not one-hot. Training
    # always supervises the mix (the paper's SMA); false keeps the paper's inference.
    select_at_inference: bool = False
    # The registered SMA head (src/models/registry.py, SMA_HEADS): mixture (the paper read literally: the output
    # is the sentence-weighted mix of the proposals, M = (sum_n w_n Q_n) . P) or coupled (SMA's selected masks
    # added to the word-pixel path through a zero-initialised gate; src/models/coupled_head.py, docs/method.md).
    head: str = "mixture"
    # The proposal branch (transformer decoder inputs, the proposals' mask losses) reads the trunk's maps through a
    # gradient scale: 1.0 = full gradient; < 1 limits how much the proposals' losses shape the shared trunk
    # (encoders, WPA, pixel decoder), which the word-pixel path also reads.
    proposal_grad_scale: float = 1.0
    # head = coupled only: each proposal's score also gets beta * the word-pixel path's mean logit inside its mask
    # (beta learnable, 1 at init; no gradient through the read-out): the pixel path votes for the proposal it covers.
    pixel_agreement: bool = False


@dataclass
class ModelSection:
    image_size: int = 480
    max_tokens: int = 20
    # The registered fusion module run at every encoder stage (src/models/wpa.py): wpa (CoupAlign's
    # word-pixel alignment, options in model.wpa).
    fusion: str = "wpa"
    # The registered image encoder (src/models/registry.py, IMAGE_ENCODERS): swin (the paper's; model.swin) or
    # convnet (a small residual CNN, model.convnet, for encoders trained from scratch: research/NOTEBOOK.md, "Training health").
    image_encoder: str = "swin"
    swin: SwinSection = field(default_factory=SwinSection)
    convnet: ConvNetSection = field(default_factory=ConvNetSection)
    bert: BertSection = field(default_factory=BertSection)
    wpa: WPASection = field(default_factory=WPASection)
    mask_generator: MaskGeneratorSection = field(default_factory=MaskGeneratorSection)
    sma: SMASection = field(default_factory=SMASection)


@dataclass
class LossSection:
    ce_weight_bg: float = 0.9
    ce_weight_fg: float = 1.1
    dice_weight: float = 1.0
    aux_enabled: bool = True
    aux_weight: float = 0.1
    aux_temperature: float = 0.07
    aux_num_fg: int = 256
    aux_num_bg: int = 1024
    aux_hard_ratio: float = 0.5
    # The proposals' own signal (src/models/criterion.py; docs/developer.md "Design decisions", measured there):
    # none | weighted | matched. With "none" only the SMA-weighted sum is supervised, which collapses
    # (identical proposals, uniform weights). "matched" matches proposals one-to-one to objects and
    # puts a cross-entropy on the SMA scores toward the referent's proposal. Without SMA
    # (model.sma.enabled=false) there are no proposals and this is not used.
    proposal_loss: str = "matched"
    # matched only: "referent" (the best proposal) | "all_objects" (every annotated object of the
    # image; needs data.max_other_objects > 0).
    proposal_targets: str = "all_objects"
    proposal_weight: float = 1.0
    sma_ce_weight: float = 1.0
    # matched only: weight of -log(SMA weight) in the referent's matching cost (DETR's class cost).
    match_score_weight: float = 0.0
    # model.mask_generator.num_classes > 0 only: weight of the proposals' category cross-entropy (each
    # matched proposal toward its object's category, the others toward "no object" with weight
    # no_object_weight), and of the class cost -p(category) in the matching (Mask2Former: 2.0 and 0.1).
    class_weight: float = 2.0
    no_object_weight: float = 0.1
    # num_classes > 0 and all_objects only: weight of a category cross-entropy at every stride-4 pixel embedding
    # (the proposals' classifier applied to P; each cell labelled with the category of the object covering it,
    # background as "no object" weighted no_object_weight). 0 = off (the paper). A from-scratch Swin learned no
    # shape categories without it (research/NOTEBOOK.md, "Training health": research/tools/probe_categories.py).
    pixel_class_weight: float = 0.0
    # model.sma.head = coupled only: weight of CE + Dice on SMA's own map (the selected proposal masks), summed over
    # the decoder layers after the initial queries (src/models/coupled_head.py).
    sma_map_weight: float = 1.0


@dataclass
class DataSection:
    data_root: str = "data"
    dataset: str = "refcoco"  # a registered dataset (src/data/base.py, DATASETS): refcoco | refcoco+ | refcocog
    split_by: str = "unc"  # unc | umd | google
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 4
    # Training skips samples whose image or mask cannot be loaded (each is logged with the file and
    # field) and aborts once more than this many were skipped: a few bad files should not cost a
    # run, a broken data_root should stop it early. 0 = the first bad sample aborts.
    max_bad_samples: int = 100
    # Training loads the masks of up to this many other annotated objects of each image (largest
    # first) for loss.proposal_targets=all_objects. null = min(num_queries - 1, 15); 1 + this must not
    # exceed num_queries. Static shapes: every batch carries this many (zero-padded) masks.
    max_other_objects: Optional[int] = None


@dataclass
class TrainSection:
    batch_size: int = 4  # per device; the LAVT recipe is 8 devices x 4 = 32
    epochs: int = 40
    lr: float = 5e-5
    weight_decay: float = 0.01
    lr_power: float = 0.9
    # Multiplier of lr for the text encoder's parameters (names "bert."). The paper trains everything
    # with one lr (1.0); a pretrained text encoder next to an image encoder trained from scratch
    # (the CPU quickstart) wants a smaller one.
    text_encoder_lr_scale: float = 1.0
    warmup_steps: int = 0
    grad_clip_norm: float = 0.0  # 0 = off
    accumulate_steps: int = 1
    # Mixed precision, set in place on the model's cells (src/models/amp.py, which defines each level): O0 float32;
    # O2 (the Ascend recipe) all float16 but the norms and the deformable sampling locations; O3 all float16.
    # Softmaxes, norm statistics, the heads and the loss stay float32 at every level. No O1 (amp.py says why).
    amp_level: str = "O0"  # O0 | O2 | O3
    loss_scale: float = 1.0  # 1 = off; > 1 = dynamic loss scaling starting there
    log_every: int = 50
    save_every_steps: int = 0  # 0 = only at epoch end
    keep_last: int = 3
    # Ranks other than 0 also save (to checkpoints/rank_<r>/): for checking that ranks stay identical.
    save_all_ranks: bool = False
    resume: bool = False
    validate: bool = True
    # Training-health diagnostics (src/engine/diagnostics.py) after every validation, on this many
    # same-image pairs of the validation split; 0 = off.
    diagnostics_pairs: int = 32
    # On Ascend/GPU the diagnostics (and the gradient shares that go with them) run only when this is true:
    # rank 0 alone runs them, in PyNative, on top of the training memory, while the other ranks wait in the
    # collective. The CPU ignores it.
    diagnostics_on_device: bool = False
    # Probe pairs per forward of the diagnostics (their memory grows with it).
    diagnostics_batch_size: int = 16
    max_steps: int = 0  # 0 = epochs decide


@dataclass
class EvalSection:
    split: str = "val"
    batch_size: int = 1
    output_dir: str = ""
    save_masks: bool = False
    visualize: int = 0
    # Grounding control: replace every sentence by one of another object in the same image.
    swap_sentences: bool = False
    skip_bad_samples: bool = False


@dataclass
class ExportSection:
    file_name: str = "coupalign"
    file_format: str = "MINDIR"  # MINDIR | AIR | ONNX
    batch_size: int = 1


@dataclass
class BackendSection:
    """How graphs are compiled and run on Ascend/GPU (applied by src/utils/runtime.py `setup_context`; on CPU each
    key set here is logged as ignored). configs/ascend_910.yaml sets them for the Ascend recipe."""
    # Graph compilation level (MindSpore's jit_level): "" = MindSpore's choice; O0 = only the passes needed for
    # correctness, kernel by kernel (the quickest and most robust compile); O1 = also common optimisations and
    # automatic operator fusion (faster steps, a longer compile).
    jit_level: str = ""
    # Ascend operator precision mode (mindspore.device_context.ascend.op_precision.precision_mode): "" = MindSpore
    # 2.10's default, must_keep_origin_dtype (every op in the dtype the graph gives it: float32 MatMuls at
    # amp_level O0). allow_fp32_to_fp16: float32 matrix ops run in float16, vector ops keep float32.
    precision_mode: str = ""
    # Keep compiled graphs on disk and reuse them when the network and its inputs are unchanged (MindSpore's
    # compile cache, MS_COMPILER_CACHE_ENABLE): a restarted or resumed run skips most of the compile.
    compile_cache: bool = False
    compile_cache_path: str = ""  # "" = <output_dir>/compile_cache


@dataclass
class Config:
    device_target: str = "CPU"  # Ascend | GPU | CPU
    # None: device 0 standalone; under msrun (or a rank table) each worker gets its own device (msrun
    # negotiates a free one, a rank table sets DEVICE_ID). An explicit value is used as given.
    device_id: Optional[int] = None
    mode: str = "graph"  # graph | pynative
    distribute: bool = False
    seed: int = 42
    output_dir: str = "outputs/run"
    # Trained weights for eval.py / infer.py / export.py (a train.py checkpoint or best.ckpt).
    checkpoint_path: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)
    backend: BackendSection = field(default_factory=BackendSection)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Keys that moved, old path -> new path. Configs stored in checkpoints written before the move (and users'
# files) still load; an override may use either name.
RENAMED_KEYS: Dict[str, str] = {
    f"model.mask_generator.{name}": f"model.mask_generator.msdeform.{name}"
    for name in ("encoder_layers", "encoder_heads", "encoder_points", "encoder_ffn_dim", "recompute_sampling")}

# Values that must come from a fixed set; checked after every override. Names of registered parts (the
# pixel decoder, the fusion module, the dataset) are checked against their registry when the part is built.
CHOICES: Dict[str, Tuple[str, ...]] = {
    "device_target": ("Ascend", "GPU", "CPU"),
    "mode": ("graph", "pynative"),
    "model.swin.preset": ("tiny", "small", "base", "large", ""),
    "model.swin.stem": ("patch", "conv"),
    "model.sma.weighting": ("softmax", "sigmoid"),
    "model.sma.sentence_pool": ("cls", "mean"),
    "loss.proposal_loss": ("none", "weighted", "matched"),
    "loss.proposal_targets": ("referent", "all_objects"),
    "data.split_by": ("unc", "umd", "google"),
    "train.amp_level": ("O0", "O2", "O3"),  # no O1: AMP_O1_REASON
    "backend.jit_level": ("", "O0", "O1"),  # MindSpore 2.10 deprecates O2 (whole-graph sink)
    "backend.precision_mode": ("", "force_fp16", "allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype",
                               "force_fp32", "allow_fp32_to_bf16", "allow_mix_precision_fp16",
                               "allow_mix_precision_bf16"),
    "export.file_format": ("MINDIR", "AIR", "ONNX"),
}


# ----------------------------------------------------------------------------------------------
# Schema introspection
# ----------------------------------------------------------------------------------------------
def _fields(cls) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def all_keys(cls=Config, prefix: str = "") -> Dict[str, Any]:
    """Every leaf key of the schema as a dotted path -> its type."""
    out = {}
    for name, tp in _fields(cls).items():
        path = prefix + name
        if _is_section(tp):
            out.update(all_keys(tp, path + "."))
        else:
            out[path] = tp
    return out


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Checks `value` against the annotation `tp`; converts only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema error, not a user error
        raise TypeError(f"unsupported schema type {tp} for {key}")
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, valid: Sequence[str]) -> ConfigError:
    """An error for `key` listing the valid keys nearest to it (by full path and by leaf name)."""
    leaf = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(key, valid, n=5, cutoff=0.5)
    by_leaf = [v for v in valid if difflib.SequenceMatcher(None, leaf, v.rsplit(".", 1)[-1]).ratio() >= 0.75]
    suggestions = list(dict.fromkeys(near + by_leaf))[:6]
    hint = f"; did you mean: {', '.join(suggestions)}" if suggestions else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


# ----------------------------------------------------------------------------------------------
# Building a Config from nested dicts
# ----------------------------------------------------------------------------------------------
def _build(cls, data: Dict[str, Any], prefix: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    fields = _fields(cls)
    valid = list(all_keys(Config))
    kwargs = {}
    for name, value in data.items():
        path = prefix + str(name)
        if name not in fields:
            err = _unknown_key(path, valid)
            raise ConfigError(f"{source}: {err}")
        tp = fields[name]
        if _is_section(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, path + ".", source)
        else:
            try:
                kwargs[name] = _coerce(value, tp, path)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a section's own check (BertSection: heads must divide the width)
        raise ConfigError(f"{source}: {e}") from None


def _set_path(tree: Dict[str, Any], path: str, value: Any) -> None:
    node = tree
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{path}': '{p}' is not a section")
    node[parts[-1]] = value


def resolve_key(key: str) -> str:
    """Maps an override key (dotted path, a path that moved, or a unique leaf name) to its full dotted path."""
    keys = all_keys(Config)
    key = RENAMED_KEYS.get(key, key)
    if key in keys:
        return key
    if "." not in key:
        matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"config key '{key}' is ambiguous; use one of: {', '.join(matches)}")
    raise _unknown_key(key, list(keys))


def parse_value(text: str) -> Any:
    """Command-line text -> Python value: true/false/True/False, null, ints, floats, lists, else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.strip().startswith("["):
        # Lists of bare words, e.g. [tiny,base] or [true,false].
        return [parse_value(t) for t in text.strip()[1:-1].split(",") if t.strip()]
    return text


# Config keys that name files or directories. On the command line of a scripts/*.sh launcher they are
# relative to the directory the user ran the script from (ARGS_CWD_ENV), although the launcher runs
# Python from the repository root; paths inside config files stay relative to the working directory
# (the repository root for every launcher), as default_config.yaml's pretrained/... paths expect.
PATH_KEYS = ("output_dir", "checkpoint_path", "data.data_root", "model.swin.pretrained", "model.convnet.pretrained",
             "model.bert.pretrained", "model.bert.vocab_path", "eval.output_dir", "export.file_name",
             "backend.compile_cache_path")
ARGS_CWD_ENV = "COUPALIGN_ARGS_CWD"
# Names every entry script accepts: `--ckpt_file` is the model zoo's name for the trained weights.
GLOBAL_ALIASES = {"ckpt_file": "checkpoint_path"}


def _from_args_cwd(text: str) -> str:
    base = os.environ.get(ARGS_CWD_ENV)
    if not base or not text or os.path.isabs(text):
        return text
    return os.path.normpath(os.path.join(base, os.path.expanduser(text)))


def parse_overrides(argv: Sequence[str], aliases: Optional[Dict[str, str]] = None
                    ) -> Tuple[Optional[str], Dict[str, Any]]:
    """Splits argv into (config_path, {dotted_key: value}). Accepts --k=v and --k v. `aliases` maps a
    script's short names to full keys (export.py: batch_size -> export.batch_size); `GLOBAL_ALIASES`
    apply everywhere. Relative path values are resolved against $COUPALIGN_ARGS_CWD when it is set."""
    aliases = {**GLOBAL_ALIASES, **(aliases or {})}
    config_path = None
    overrides: Dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}': options are written --key=value")
        body = arg[2:]
        if "=" in body:
            key, text = body.split("=", 1)
        else:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"option '--{body}' has no value (write --{body}=VALUE)")
            key, text = body, args[i + 1]
            i += 1
        i += 1
        if key == "config_path":
            config_path = _from_args_cwd(text)
            continue
        key = resolve_key(aliases.get(key, key))
        if key in PATH_KEYS:
            text = _from_args_cwd(text)
        # A key of type str takes the text as written ("none" is a choice of loss.proposal_loss, not null).
        overrides[key] = text if all_keys().get(key) is str else parse_value(text)
    return config_path, overrides


# Why train.amp_level has no O1: said once, here, for the config check and src/models/amp.py.
AMP_O1_REASON = ("a float16 white list of Dense/Conv leaves float16 and float32 operands meeting in BatchMatMul, "
                 "which MindSpore does not promote; use 'O2' (the Ascend recipe) or 'O3' (src/models/amp.py)")


def _check_choices(cfg: Config) -> None:
    flat = _flatten(cfg.to_dict())
    if flat["train.amp_level"] == "O1":
        raise ConfigError(f"config key 'train.amp_level' = 'O1': not supported ({AMP_O1_REASON})")
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"config key '{key}' = {flat[key]!r}; expected one of {', '.join(map(repr, allowed))}")
    for key in ("train.batch_size", "train.epochs", "train.accumulate_steps", "train.keep_last",
                "train.diagnostics_batch_size", "model.image_size", "model.max_tokens", "model.mask_generator.num_queries"):
        if flat[key] < 1:
            raise ConfigError(f"config key '{key}' = {flat[key]}; expected a positive integer")
    for key in ("data.max_bad_samples", "data.num_workers", "train.warmup_steps", "train.max_steps",
                "model.sma.reasoning_layers",
                "train.diagnostics_pairs"):
        if flat[key] < 0:
            raise ConfigError(f"config key '{key}' = {flat[key]}; expected an integer >= 0")
    stages = flat["model.swin.recompute_stages"]
    if len(set(stages)) != len(stages) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 4
                                              for i in stages):
        raise ConfigError(f"config key 'model.swin.recompute_stages' = {stages!r}; expected distinct stage indices "
                          "0-3 (0-based, as model.swin.depths), e.g. [2] for the deepest stage")
    if not flat["train.loss_scale"] >= 1.0:
        raise ConfigError(f"config key 'train.loss_scale' = {flat['train.loss_scale']}; expected 1 (off) or more (the "
                          "initial dynamic loss scale, e.g. 1024 with train.amp_level O2)")
    if flat["model.mask_generator.num_classes"] < 0:
        raise ConfigError(f"config key 'model.mask_generator.num_classes' = {flat['model.mask_generator.num_classes']}; "
                          "expected an integer >= 0 (0 = no category head)")
    if flat["model.mask_generator.num_classes"] and not (flat["model.sma.enabled"] and
                                                         flat["loss.proposal_loss"] == "matched"):
        raise ConfigError("config key 'model.mask_generator.num_classes' > 0 classifies the matched proposals: it needs "
                          "model.sma.enabled=true and loss.proposal_loss='matched' (or set num_classes=0)")
    if flat["model.sma.head"] == "coupled" and (flat["model.sma.weighting"] != "softmax"
                                                 or flat["model.sma.select_at_inference"]):
        raise ConfigError("config key 'model.sma.head' = 'coupled' weights the proposals by a softmax and always adds "
                          "the word-pixel path: it needs model.sma.weighting='softmax' and "
                          "model.sma.select_at_inference=false")
    if not 0.0 <= flat["model.sma.proposal_grad_scale"] <= 1.0:
        raise ConfigError(f"config key 'model.sma.proposal_grad_scale' = {flat['model.sma.proposal_grad_scale']}; "
                          "expected a value in [0, 1]")
    if flat["model.sma.pixel_agreement"] and flat["model.sma.head"] != "coupled":
        raise ConfigError("config key 'model.sma.pixel_agreement' = True needs model.sma.head='coupled' (the word-pixel "
                          f"path it reads), got {flat['model.sma.head']!r}")
    if flat["loss.sma_map_weight"] < 0:
        raise ConfigError(f"config key 'loss.sma_map_weight' = {flat['loss.sma_map_weight']}; expected >= 0")
    if flat["model.image_encoder"] == "convnet":
        widths, depths = flat["model.convnet.widths"], flat["model.convnet.depths"]
        if len(widths) != 4 or len(depths) != 4 or min(depths) < 0 or any(w < 8 or w % 8 for w in widths):
            raise ConfigError(f"config keys 'model.convnet.widths' = {widths} and 'model.convnet.depths' = {depths}: "
                              "expected 4 widths, each a multiple of 8 (GroupNorm of 8 groups), and 4 depths >= 0")
    if flat["loss.pixel_class_weight"] < 0:
        raise ConfigError(f"config key 'loss.pixel_class_weight' = {flat['loss.pixel_class_weight']}; expected >= 0")
    if flat["loss.pixel_class_weight"] and not (flat["model.mask_generator.num_classes"] and
                                                flat["loss.proposal_targets"] == "all_objects"):
        raise ConfigError("config key 'loss.pixel_class_weight' > 0 labels every pixel with the category of its object: "
                          "it needs model.mask_generator.num_classes > 0 and loss.proposal_targets='all_objects' "
                          "(the categories and masks of every object of the image)")
    # The msdeform section is read only when that decoder is chosen (a config can switch decoders without
    # deleting it), except for an option that asks for something no other decoder does.
    if flat["model.mask_generator.msdeform.recompute_sampling"] and flat["model.mask_generator.pixel_decoder"] != "msdeform":
        raise ConfigError("config key 'model.mask_generator.msdeform.recompute_sampling' = True needs pixel_decoder "
                          f"'msdeform' (the deformable attention it recomputes), got "
                          f"{flat['model.mask_generator.pixel_decoder']!r}")


    proposal_loss = flat["loss.proposal_loss"]
    if proposal_loss == "matched" and flat["loss.proposal_targets"] == "all_objects" and flat["model.sma.enabled"]:
        others, queries = flat["data.max_other_objects"], flat["model.mask_generator.num_queries"]
        if others is None:
            others = min(queries - 1, 15)
            if others < 1:
                raise ConfigError("config key 'loss.proposal_targets' = 'all_objects' needs 2 or more proposals "
                                  f"(model.mask_generator.num_queries = {queries})")
        elif others < 1:
            raise ConfigError("config key 'loss.proposal_targets' = 'all_objects' needs data.max_other_objects >= 1 "
                              "(the other objects' masks); set it, or loss.proposal_targets=referent")
        if 1 + others > queries:
            raise ConfigError(f"config key 'data.max_other_objects' = {others}: 1 + {others} objects cannot be matched "
                              f"one-to-one to model.mask_generator.num_queries = {queries} proposals")


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _move_renamed(tree: Dict[str, Any], source: str) -> None:
    """Moves keys written under an old path (RENAMED_KEYS) to the new one, in place."""
    for old, new in RENAMED_KEYS.items():
        *parents, leaf = old.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        target = tree
        *new_parents, new_leaf = new.split(".")
        for part in new_parents:
            target = target.setdefault(part, {})
        if new_leaf in target and target[new_leaf] != value:
            raise ConfigError(f"{source}: '{old}' (the old name) and '{new}' are both set; keep '{new}'")
        target[new_leaf] = value


def config_from_dict(data: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None, source: str = "<dict>") -> Config:
    tree = yaml.safe_load(yaml.safe_dump(data or {}))  # deep copy of plain data
    _move_renamed(tree, source)
    for key, value in (overrides or {}).items():
        _set_path(tree, resolve_key(key), value)
    cfg = _build(Config, tree, "", source)
    _check_choices(cfg)
    return cfg


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str, _seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Reads a config file; a top-level `_base_: other.yaml` (relative to this file) is loaded first
    and this file's keys are merged over it, so variants state only what differs."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    real = os.path.realpath(path)
    if real in _seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    base = data.pop("_base_", None)
    if base:
        data = _merge(read_yaml(os.path.join(os.path.dirname(path), base), _seen + (real,)), data)
    return data


def load_config(path: Optional[str] = None, argv: Sequence[str] = (),
                aliases: Optional[Dict[str, str]] = None) -> Config:
    """YAML file (`path`, or `--config_path` in argv) + argv overrides -> validated Config."""
    argv_path, overrides = parse_overrides(argv, aliases)
    path = argv_path or path
    data = read_yaml(path) if path else {}
    return config_from_dict(data, overrides, path or "<defaults>")


def num_other_objects(cfg: Config) -> int:
    """How many other objects' masks a training batch carries (column ``others``): data.max_other_objects
    when the loss matches proposals to all objects, else 0."""
    if cfg.model.sma.enabled and cfg.loss.proposal_loss == "matched" and cfg.loss.proposal_targets == "all_objects":
        others = cfg.data.max_other_objects
        return min(cfg.model.mask_generator.num_queries - 1, 15) if others is None else others
    return 0


def num_proposal_classes(cfg: Config) -> int:
    """How many object categories the training batches label (column ``categories``): the category head's
    classes (the config check allows num_classes > 0 only with SMA and matched proposals)."""
    return cfg.model.mask_generator.num_classes


def main(argv: Sequence[str]) -> int:
    """``python -m src.config KEY [--config_path C] [--key=value ...]`` prints one resolved value (the
    launchers in scripts/ read output_dir with it). No MindSpore import: it answers in ~0.1 s."""
    import sys

    if not argv or argv[0].startswith("--"):
        print("usage: python -m src.config KEY [--config_path C] [--key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(None, argv[1:])
        value: Any = cfg.to_dict()
        for part in resolve_key(argv[0]).split("."):
            value = value[part]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("" if value is None else value)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
