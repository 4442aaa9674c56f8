"""The configuration schema: a tree of dataclasses, one per section. Defaults are the paper configuration
(docs/method.md); default_config.yaml spells the same values out so users see them in one file. Reading,
overrides and checks live in src/config/loader.py and checks.py."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import yaml

from src.arch.bert import BertConfig  # no MindSpore import: the schema derives model.bert from it


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
    # 0 = no category head (the proposals are class-agnostic). The loss term proposal_class trains it.
    num_classes: int = 0


@dataclass
class SMASection:
    # false: the "no SMA" ablation, logits = Linear(sentence) . pixel embeddings.
    enabled: bool = True
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


# The loss terms summed into the total when `loss.terms` names none: the paper configuration's (the mixture SMA head,
# no category head). Each is a registered term (src/models/losses/, one file each).
DEFAULT_LOSS_TERMS = ("referring", "aux_contrast", "proposal_masks", "proposal_selection")


@dataclass
class LossSection:
    # The terms of the total loss, by name (src/models/losses/, registry LOSS_TERMS): referring (CE + Dice of the
    # output logits), aux_contrast (the auxiliary foreground/background pixel contrast), proposal_masks (CE + Dice of
    # each proposal toward the object matched to it), proposal_selection (cross-entropy of SMA's scores toward the
    # referent's proposal), proposal_class (the proposals' categories, Mask2Former's class loss; needs
    # model.mask_generator.num_classes > 0), sma_map (CE + Dice of SMA's own map; model.sma.head = coupled).
    # A term that needs a part the model lacks is an error when the criterion is built.
    terms: List[str] = field(default_factory=lambda: list(DEFAULT_LOSS_TERMS))
    # total = sum over `terms` of weight * term. A term not named here takes its own default (`default_weight`
    # beside its class); default_config.yaml spells every default out.
    weights: Dict[str, float] = field(default_factory=dict)
    # referring and sma_map: the cross-entropy's (background, foreground) class weights (LAVT) and the Dice weight.
    ce_weight_bg: float = 0.9
    ce_weight_fg: float = 1.1
    dice_weight: float = 1.0
    # aux_contrast: temperature, and the foreground / background pixels sampled per sample (half of the background
    # the hardest negatives).
    aux_temperature: float = 0.07
    aux_num_fg: int = 256
    aux_num_bg: int = 1024
    aux_hard_ratio: float = 0.5
    # proposal_class: the weight of the unmatched proposals' "no object" cross-entropy (Mask2Former's 0.1).
    no_object_weight: float = 0.1


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
    # first), the targets the proposals are matched to beside the referent. null = min(num_queries - 1, 15); 1 + this must not
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
    # Multiplier of lr for the image encoder's parameters (names "swin.", whichever encoder is registered). The paper
    # trains everything with one lr (1.0).
    image_encoder_lr_scale: float = 1.0
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
    # Validate after every this many epochs (with train.validate); the run's last epoch is always validated.
    validate_every: int = 1
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
    # eval.py also scores the grounding control of the split into this directory, in the same process: one model
    # load and one graph compile for both (the quickstart's control: 18 s so, ~40 s as an eval.py process of its own).
    control_output_dir: str = ""
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


# Values that must come from a fixed set; checked after every override. Names of registered parts (the
# pixel decoder, the fusion module, the dataset) are checked against their registry when the part is built.
CHOICES: Dict[str, Tuple[str, ...]] = {
    "device_target": ("Ascend", "GPU", "CPU"),
    "mode": ("graph", "pynative"),
    "model.swin.preset": ("tiny", "small", "base", "large", ""),
    "model.swin.stem": ("patch", "conv"),
    "model.sma.sentence_pool": ("cls", "mean"),
    "data.split_by": ("unc", "umd", "google"),
    "train.amp_level": ("O0", "O2", "O3"),  # no O1: AMP_O1_REASON
    "backend.jit_level": ("", "O0", "O1"),  # MindSpore 2.10 deprecates O2 (whole-graph sink)
    "backend.precision_mode": ("", "force_fp16", "allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype",
                               "force_fp32", "allow_fp32_to_bf16", "allow_mix_precision_fp16",
                               "allow_mix_precision_bf16"),
    "export.file_format": ("MINDIR", "AIR", "ONNX"),
}

# Why train.amp_level has no O1: said once, here, for the config check and src/models/amp.py.
AMP_O1_REASON = ("a float16 white list of Dense/Conv leaves float16 and float32 operands meeting in BatchMatMul, "
                 "which MindSpore does not promote; use 'O2' (the Ascend recipe) or 'O3' (src/models/amp.py)")
