"""The tokenizer stage with the real SentencePiece and HuggingFace tokenizers, on the bundled sample's corpus."""

import json

import pytest

from bertpipe import BertpipeError
from bertpipe.settings import TokenizerSettings
from bertpipe.stages.tokenizer import sample_sentences, train, train_shards
from bertpipe.tokenizer_folder import META, SPECIAL_TOKENS, Tokenizer
from tests.conftest import bertpipe_in_process


@pytest.mark.parametrize("kind, model_type", [("sentencepiece", "unigram"), ("sentencepiece", "bpe"),
                                              ("wordpiece", "unigram")])
def test_trained_tokenizer_has_special_tokens_at_fixed_ids_and_says_what_it_is(tmp_path, sample_corpus, kind,
                                                                                 model_type):
    meta = train([sample_corpus], tmp_path / "tok",
                 TokenizerSettings(kind=kind, model_type=model_type, vocab_size=4000, input_sentence_size=5000))
    assert meta["special_ids"] == {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    written = json.loads((tmp_path / "tok" / META).read_text())
    assert written["kind"] == kind and written["lowercase"] is True and written["vocab_size"] == meta["vocab_size"]
    assert 1000 < meta["vocab_size"] <= 4000
    tokenizer = Tokenizer(tmp_path / "tok")
    ids = tokenizer.encode(["Anarchism is a political philosophy.", "[MASK] [CLS] text"])
    assert all(ids) and all(0 <= i < tokenizer.vocab_size for s in ids for i in s)
    assert tokenizer.mask_id not in ids[1] and tokenizer.cls_id not in ids[1], "text never encodes to a special id"
    assert tokenizer.encode(["ANARCHISM"]) == tokenizer.encode(["anarchism"]), "lowercased"


def test_small_corpus_with_a_large_vocab_still_trains(tmp_path, sample_corpus):
    meta = train([sample_corpus], tmp_path / "tok", TokenizerSettings(vocab_size=100_000, input_sentence_size=3000))
    assert meta["vocab_size"] < 100_000 and meta["requested_vocab_size"] == 100_000


def test_sentence_sample_is_bounded_seeded_and_uniform(sample_corpus):
    shards = train_shards([sample_corpus])
    everything = sample_sentences(shards, 10**9, seed=1)
    sample = sample_sentences(shards, 500, seed=1)
    assert len(sample) == 500 and sample == sample_sentences(shards, 500, seed=1)
    assert sample != sample_sentences(shards, 500, seed=2)
    positions = sorted(everything.index(s) for s in sample)
    assert positions[len(positions) // 2] == pytest.approx(len(everything) / 2, rel=0.15), "not just the first lines"


def test_given_vocab_file_is_adopted_with_its_own_ids(tmp_path, sample_corpus):
    train([sample_corpus], tmp_path / "trained",
          TokenizerSettings(kind="wordpiece", vocab_size=3000, input_sentence_size=5000))
    tokens = (tmp_path / "trained/vocab.txt").read_text().splitlines()
    google_order = ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(google_order + [t for t in tokens if t not in SPECIAL_TOKENS]) + "\n")
    meta = train([], tmp_path / "adopted", TokenizerSettings(kind="wordpiece", vocab_file=vocab))
    assert meta["special_ids"] == {"[PAD]": 0, "[UNK]": 4, "[CLS]": 5, "[SEP]": 6, "[MASK]": 7}
    assert meta["trained"] is False
    adopted_tokens = vocab.read_text().splitlines()
    text = ["Anarchism is a political philosophy."]
    pieces = [adopted_tokens[i] for i in Tokenizer(tmp_path / "adopted").encode(text)[0]]
    assert pieces == [tokens[i] for i in Tokenizer(tmp_path / "trained").encode(text)[0]], "same pieces, own ids"
    assert "[UNK]" not in pieces


def test_vocab_file_missing_a_special_token_is_a_clear_error(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n##s\n")
    with pytest.raises(BertpipeError, match=r"vocab.txt: the vocab lacks the special token\(s\) \[MASK\]"):
        train([], tmp_path / "tok", TokenizerSettings(kind="wordpiece", vocab_file=vocab))
    assert not (tmp_path / "tok").exists()


def test_a_vocab_file_with_a_repeated_or_empty_line_is_refused_naming_the_lines(tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n##s\nthe\n\nend\n")
    status, _, err = bertpipe_in_process(capsys, "tokenizer", "--corpus", tmp_path, "--outdir", tmp_path / "tok",
                                         "--kind", "wordpiece", "--vocab-file", vocab)
    assert status == 1 and "Traceback" not in err
    assert f"{vocab}: line 8 repeats 'the' of line 6; line 9 is empty" in err
    assert not (tmp_path / "tok").exists()


def test_same_input_and_seed_give_identical_sentencepiece_files(tmp_path, sample_corpus):
    # Not so for WordPiece: HuggingFace's trainer breaks ties in hash-map order (huggingface/tokenizers#1794).
    for run in ("first", "second"):
        train([sample_corpus], tmp_path / run, TokenizerSettings(vocab_size=3000, input_sentence_size=5000, threads=2))
    for path in (tmp_path / "first").iterdir():
        assert path.read_bytes() == (tmp_path / "second" / path.name).read_bytes(), path.name


def test_a_vocab_smaller_than_the_alphabet_is_a_clear_error(sample_corpus, tmp_path):
    with pytest.raises(BertpipeError, match=r"tokenizer.vocab_size 80 is too small for the train split's alphabet: "
                                            r"\d+ pieces at tokenizer.character_coverage 0.9999"):
        train([sample_corpus], tmp_path / "tok", TokenizerSettings(vocab_size=80, input_sentence_size=3000))
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("lowercase", [True, False])
def test_tensorflow_texts_encoding_equals_huggingfaces(tmp_path, sample_corpus, lowercase):
    """encode_flat with TensorFlow Text's FastBertTokenizer (printable ASCII) gives HuggingFace's ids exactly: on every
    sentence of the sample's corpus (non-ASCII ones included, which stay with HuggingFace) and on the edges of
    BERT's basic tokenizer: punctuation, spaces, case, the 100-character word limit, words without pieces, tabs."""
    settings = TokenizerSettings(kind="wordpiece", vocab_size=3000, lowercase=lowercase, input_sentence_size=5000)
    train([sample_corpus], tmp_path / "tok", settings)
    slow, fast = Tokenizer(tmp_path / "tok"), Tokenizer(tmp_path / "tok", tensorflow_text=True)
    sentences = [s for shard in sorted(sample_corpus.glob("*/*.jsonl")) for line in shard.read_text().splitlines()
                 for s in json.loads(line)["text"].split("\n")]
    sentences += ["", "   ", "a" * 100, "a" * 101, "Xy" * 50 + " z", "[MASK] [CLS] text",
                  "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "Hello\tworld", "qqqqzzzz",
                  "ABC def 123 4.5e10 U.S.A.", "don't  stop--now", "caf\u00e9 \u2026 \u00b4"]
    assert any(not (s.isascii() and s.isprintable()) for s in sentences), "both paths are taken"
    ids, lengths = fast.encode_flat(sentences)
    expected = slow.encode(sentences)
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]
