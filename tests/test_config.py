"""The config loader: YAML -> typed Config, overrides, errors that name the key."""
import os
import subprocess
import sys

import pytest

from src.config import Config, ConfigError, config_from_dict, load_config, parse_value, resolve_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = ["default_config.yaml"] + [os.path.join("configs", f) for f in sorted(os.listdir(os.path.join(ROOT, "configs")))]


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_shipped_config_loads(path):
    cfg = load_config(os.path.join(ROOT, path))
    assert isinstance(cfg, Config)
    assert cfg.model.image_size > 0 and cfg.model.max_tokens > 0


def test_default_config_is_the_paper_configuration():
    cfg = load_config(os.path.join(ROOT, "default_config.yaml"))
    assert (cfg.model.image_size, cfg.model.max_tokens) == (480, 20)
    assert cfg.model.swin.preset == "base" and cfg.model.swin.window_size == 12
    assert cfg.model.swin.drop_path_rate == pytest.approx(0.3)
    assert cfg.model.mask_generator.num_queries == 100
    assert cfg.model.mask_generator.decoder_layers == 9
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.lr_power, cfg.train.epochs) == (5e-5, 0.01, 0.9, 40)
    assert (cfg.loss.ce_weight_bg, cfg.loss.ce_weight_fg, cfg.loss.weights["aux_contrast"]) == (0.9, 1.1, 0.1)
    assert cfg.loss.terms == ["referring", "aux_contrast", "proposal_masks", "proposal_selection"]


def test_base_inheritance_overrides_only_what_differs():
    cfg = load_config(os.path.join(ROOT, "configs", "refcocog_umd.yaml"))
    assert (cfg.data.dataset, cfg.data.split_by) == ("refcocog", "umd")
    assert cfg.model.swin.pretrained.endswith("swin_base_patch4_window12_384_22k.ckpt")  # from the base


def test_overrides_nested_lists_bools_numbers_and_leaf_aliases(tmp_path):
    argv = ["--model.swin.depths=[2,2,6,2]", "--model.wpa.bidirectional=False", "--train.lr", "1e-4",
            "--data_root=/data/refer", "--dataset", "refcocog", "--train.batch_size=2", "--model.sma.enabled=true"]
    cfg = load_config(os.path.join(ROOT, "default_config.yaml"), argv)
    assert cfg.model.swin.depths == [2, 2, 6, 2]
    assert cfg.model.wpa.bidirectional is False and cfg.model.sma.enabled is True
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 2
    assert cfg.data.data_root == "/data/refer" and cfg.data.dataset == "refcocog"


def test_config_path_in_argv_wins(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 7\n")
    assert load_config(None, [f"--config_path={p}"]).seed == 7


def test_unknown_key_lists_nearest_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["--model.swin.window=7"])
    assert "model.swin.window_size" in str(e.value)
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    msg = str(e.value)
    assert str(p) in msg and "train.learning_rate" in msg


def test_wrong_type_names_key_and_expected_type(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  batch_size: four\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size.*expected int"):
        load_config(str(p))
    with pytest.raises(ConfigError, match=r"model\.swin\.depths\[1\].*expected int"):
        load_config(None, ["--model.swin.depths=[2,x,6,2]"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_config(None, ["--distribute=1"])


def test_choices_and_ambiguous_leaf():
    with pytest.raises(ConfigError, match="device_target"):
        load_config(None, ["--device_target=TPU"])
    with pytest.raises(ConfigError, match="ambiguous.*train.batch_size"):
        resolve_key("batch_size")
    with pytest.raises(ConfigError, match="positive"):
        load_config(None, ["--train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"data\.max_bad_samples.*>= 0"):
        load_config(None, ["--data.max_bad_samples=-1"])
    for key in ("train.text_encoder_lr_scale", "train.image_encoder_lr_scale"):
        assert getattr(load_config(None, [f"--{key}=0"]).train, key.split(".")[1]) == 0.0  # 0 freezes: allowed
        with pytest.raises(ConfigError, match=rf"{key} ?' = -0.1; expected a multiplier"):
            load_config(None, [f"--{key}=-0.1"])


def test_the_grounding_control_beside_the_split_excludes_swapping_the_split_itself():
    assert load_config(None, ["--eval.control_output_dir=out/control"]).eval.control_output_dir.endswith("out/control")
    with pytest.raises(ConfigError, match="control_output_dir.*swap_sentences"):
        load_config(None, ["--eval.control_output_dir=out/control", "--eval.swap_sentences=true"])


def test_recompute_sampling_needs_the_deformable_decoder():
    cfg = load_config(None, ["--model.mask_generator.recompute_sampling=true"])
    assert cfg.model.mask_generator.msdeform.recompute_sampling is True
    with pytest.raises(ConfigError, match="recompute_sampling.*msdeform"):
        load_config(None, ["--model.mask_generator.recompute_sampling=true",
                           "--model.mask_generator.pixel_decoder=fpn"])


def test_parse_value():
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("3") == 3 and parse_value("3.5") == 3.5 and parse_value("1e-5") == 1e-5
    assert parse_value("[1, 2]") == [1, 2] and parse_value("null") is None
    assert parse_value("refcoco+") == "refcoco+" and parse_value("/a/b.yaml") == "/a/b.yaml"


def test_importing_entry_modules_parses_nothing():
    # Import must have no side effects on argv: a bogus flag would make an import-time parser fail.
    code = "import sys; sys.argv=['x','--bogus']; import src.config, src.utils.runtime; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    assert "mindspore" not in subprocess.run(
        [sys.executable, "-c", "import sys, src.config, src.utils.runtime; print(sorted(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60).stdout


def test_cpu_env_default_never_overrides_user_value():
    code = ("import os; os.environ['ONEDNN_MAX_CPU_ISA']='AVX512_CORE';"
            "from src.utils.runtime import apply_cpu_env_defaults; apply_cpu_env_defaults();"
            "print(os.environ['ONEDNN_MAX_CPU_ISA'])")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "AVX512_CORE"
    code2 = "import os; from src.utils.runtime import apply_cpu_env_defaults; apply_cpu_env_defaults(); print(os.environ['ONEDNN_MAX_CPU_ISA'])"
    out2 = subprocess.run([sys.executable, "-c", code2], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert out2.stdout.strip() == "AVX2"


def test_moved_keys_load_under_their_old_names():
    # Configs stored in checkpoints before the msdeform options moved into their own section still load.
    old = config_from_dict({"model": {"mask_generator": {"encoder_layers": 2, "recompute_sampling": True}}})
    assert old.model.mask_generator.msdeform.encoder_layers == 2
    assert old.model.mask_generator.msdeform.recompute_sampling is True
    by_override = load_config(None, ["--model.mask_generator.encoder_heads=4"])
    assert by_override.model.mask_generator.msdeform.encoder_heads == 4
    with pytest.raises(ConfigError, match="both set"):
        config_from_dict({"model": {"mask_generator": {"encoder_layers": 2, "msdeform": {"encoder_layers": 3}}}})


def test_bert_section_is_bert_config_with_its_checks_named_by_key():
    cfg = config_from_dict({"model": {"bert": {"hidden_size": 64, "num_attention_heads": 4}}})
    assert cfg.model.bert.architecture().hidden_size == 64
    with pytest.raises(ConfigError, match="model.bert.hidden_size .*divisible"):
        config_from_dict({"model": {"bert": {"hidden_size": 30, "num_attention_heads": 4}}})


def test_onednn_isa_cap_is_set_for_the_cpu_target_only(monkeypatch):
    """Issue 22, finding 10: ONEDNN_MAX_CPU_ISA names an x86 ISA for the CPU backend's oneDNN; an Ascend or GPU run
    (default_config.yaml is Ascend) must not get it. Read from the command line before MindSpore loads."""
    import platform

    from src.utils.runtime import apply_cpu_env_defaults

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the cap is set on x86-64 only")
    default = os.path.join(ROOT, "default_config.yaml")
    for argv, expected in (([], "AVX2"), (["--config_path", default], None),
                           (["--config_path", default, "--device_target=CPU"], "AVX2"),
                           ([f"--config_path={os.path.join(ROOT, 'configs', 'quickstart_cpu.yaml')}", "--x=1"], "AVX2"),
                           (["--config_path", os.path.join(ROOT, "configs", "quickstart_cpu.yaml"),
                             "--device_target", "GPU"], None)):
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        apply_cpu_env_defaults(argv)
        assert os.environ.get("ONEDNN_MAX_CPU_ISA") == expected, argv


def test_diagnostics_are_off_on_devices_unless_asked():
    """Issue 22, finding 8: rank 0 alone would run them in PyNative on top of the training memory."""
    from src.engine.trainer import diagnostics_wanted

    default = os.path.join(ROOT, "default_config.yaml")
    assert not diagnostics_wanted(load_config(default))  # Ascend
    assert diagnostics_wanted(load_config(default, ["--train.diagnostics_on_device=true"]))
    assert diagnostics_wanted(load_config(default, ["--device_target=CPU"]))
    assert not diagnostics_wanted(load_config(default, ["--device_target=CPU", "--train.diagnostics_pairs=0"]))
    assert load_config(default).train.diagnostics_batch_size == 16
    with pytest.raises(ConfigError, match="diagnostics_batch_size"):
        load_config(default, ["--train.diagnostics_batch_size=0"])


# ------------------------------------------------------------------------------------ configs of earlier versions
def test_an_old_loss_section_loads_as_the_terms_it_trained_with():
    """Checkpoints store their whole config: one written before loss.terms (switches and *_weight keys, the class
    and SMA-map losses implied by the model) must load as the same sum of terms and weights."""
    from src.config import config_from_dict

    old = {"model": {"sma": {"head": "coupled"}, "mask_generator": {"num_classes": 6}},
           "loss": {"aux_enabled": True, "aux_weight": 0.2, "proposal_loss": "matched", "proposal_targets": "all_objects",
                    "proposal_weight": 1.0, "sma_ce_weight": 0.5, "match_score_weight": 0.0, "class_weight": 0.4,
                    "pixel_class_weight": 0.0, "sma_map_weight": 1.0}}
    cfg = config_from_dict(old)
    assert cfg.loss.terms == ["referring", "aux_contrast", "proposal_masks", "proposal_selection", "proposal_class",
                              "sma_map"]
    assert cfg.loss.weights == {"aux_contrast": 0.2, "proposal_masks": 1.0, "proposal_selection": 0.5,
                                "proposal_class": 0.4, "sma_map": 1.0}
    lavt = config_from_dict({"model": {"sma": {"enabled": False}}, "loss": {"aux_enabled": False, "proposal_loss": "none"}})
    assert lavt.loss.terms == ["referring"]
    mixture = config_from_dict({"loss": {"proposal_loss": "matched"}})  # no category head, the mixture head
    assert mixture.loss.terms == ["referring", "aux_contrast", "proposal_masks", "proposal_selection"]


@pytest.mark.parametrize("key,value", [("loss.proposal_loss", "weighted"), ("loss.proposal_targets", "referent"),
                                       ("loss.match_score_weight", 1.0), ("loss.pixel_class_weight", 0.5),
                                       ("model.sma.weighting", "sigmoid"), ("model.sma.select_at_inference", True)])
def test_a_removed_option_loads_at_todays_value_and_is_refused_otherwise(key, value):
    from src.config import config_from_dict
    from src.config.legacy import REMOVED_OPTIONS

    section, *middle, leaf = key.split(".")

    def tree(v):
        node = {leaf: v}
        for part in reversed(middle):
            node = {part: node}
        return {section: node}

    if key in REMOVED_OPTIONS:  # today's value: accepted, the key dropped, the same config as without it
        assert config_from_dict(tree(REMOVED_OPTIONS[key][0])).to_dict() == config_from_dict({}).to_dict()
    with pytest.raises(ConfigError, match=f"'{key}' = .*removed"):
        config_from_dict(tree(value), source="old.yaml")


def test_an_old_loss_key_on_the_command_line_names_todays_key():
    from src.config import load_config

    with pytest.raises(ConfigError, match=r"'loss.aux_weight' is now 'loss.weights.aux_contrast'"):
        load_config(None, ["--loss.aux_weight=0.2"])
    with pytest.raises(ConfigError, match=r"now the list loss.terms"):
        load_config(None, ["--loss.aux_enabled=false"])
    cfg = load_config(None, ["--loss.weights.aux_contrast=0.2", "--loss.terms=[referring,aux_contrast]"])
    assert cfg.loss.weights["aux_contrast"] == 0.2 and cfg.loss.terms == ["referring", "aux_contrast"]
    with pytest.raises(ConfigError, match=r"'loss.weights.aux_contrast' = -1"):
        load_config(None, ["--loss.weights.aux_contrast=-1"])


def test_a_weight_for_no_term_is_refused_with_the_nearest_name():
    from src.config import config_from_dict
    from src.models.criterion import CoupAlignCriterion

    with pytest.raises(ConfigError, match=r"loss.weights.aux_contrst.*did you mean 'aux_contrast'"):
        CoupAlignCriterion.from_config(config_from_dict({"loss": {"weights": {"aux_contrst": 0.2}}}))
    with pytest.raises(ConfigError, match=r"unknown loss term 'referrin'.*did you mean 'referring'"):
        CoupAlignCriterion.from_config(config_from_dict({"loss": {"terms": ["referrin"]}}))


def test_validate_every_validates_every_kth_epoch_and_always_at_the_end():
    from src.engine.trainer import validation_due

    cfg = config_from_dict({"train": {"epochs": 4, "validate_every": 2}})
    due = [epoch for epoch in range(1, 5) if validation_due(cfg.train, epoch, True, epoch == 4)]
    assert due == [2, 4]
    cfg = config_from_dict({"train": {"epochs": 5, "validate_every": 2}})
    assert [e for e in range(1, 6) if validation_due(cfg.train, e, True, e == 5)] == [2, 4, 5]  # the last epoch too
    assert validation_due(cfg.train, 1, False, True)  # max_steps ended the run mid-epoch
    assert not validation_due(cfg.train, 2, False, False)  # a resumed run's partial pass is no epoch end
    cfg = config_from_dict({"train": {"validate": False}})
    assert not validation_due(cfg.train, 1, True, True)
    with pytest.raises(ConfigError, match="train.validate_every"):
        config_from_dict({"train": {"validate_every": 0}})
