"""Stage `tokenizer`: train SentencePiece (unigram or BPE) or WordPiece on the train split, or adopt a given vocab.txt.

Either way the tokenizer folder holds BERT's special tokens and a `bertpipe-tokenizer.json` that says what it is, so
later stages and the export need nothing else; tokenizer_folder.py reads it.

Training reads a bounded, seeded uniform sample of the train split's sentences (`input_sentence_size`, reservoir
sampling), so memory does not grow with the corpus.
"""

import json
import logging
import random
import re
from pathlib import Path

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_dir
from bertpipe.settings import TokenizerSettings
from bertpipe.stopping import interruptible
from bertpipe.tokenizer_folder import META, SPECIAL_TOKENS, Tokenizer, read_vocab
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)


def train_shards(corpus_parts) -> list:
    """The train split's shards of every corpus part, in a fixed order."""
    return sorted(p for folder in corpus_parts for p in Path(folder).glob("train/shard-*.jsonl"))


def sample_sentences(shards, size: int, seed: int) -> list:
    """A uniform sample of at most `size` sentences of the shards (reservoir sampling: memory bounded by `size`)."""
    rng = random.Random(seed)
    sample, seen = [], 0
    for shard in shards:
        with open(shard, encoding="utf-8") as f:
            for line in f:
                for sentence in json.loads(line)["text"].split("\n"):
                    seen += 1
                    if len(sample) < size:
                        sample.append(sentence)
                    else:
                        slot = rng.randrange(seen)
                        if slot < size:
                            sample[slot] = sentence
    if not sample:
        raise BertpipeError(f"no sentences in the train split ({len(shards)} shards); check the corpus stage's stats")
    log.info("sampled %d of %d sentences", len(sample), seen)
    return sample


def train(corpus_parts, outdir, settings) -> dict:
    """Build the tokenizer folder `outdir` from the corpus parts' train split (or from `settings.vocab_file`), with
    `settings` (settings.TokenizerSettings)."""
    kind, vocab_size, lowercase = settings.kind, settings.vocab_size, settings.lowercase
    vocab_file = settings.vocab_file
    with atomic_dir(outdir) as temp:
        if kind == "wordpiece" and vocab_file:
            meta = _adopt_vocab(Path(vocab_file), temp, lowercase)
        else:
            sentences = sample_sentences(train_shards(corpus_parts), settings.input_sentence_size, settings.seed)
            if kind == "sentencepiece":
                meta = _train_sentencepiece(sentences, temp, vocab_size, settings.model_type, lowercase,
                                            settings.character_coverage, settings.threads, settings.seed)
            elif kind == "wordpiece":
                meta = _train_wordpiece(sentences, temp, vocab_size, lowercase)
            else:
                raise BertpipeError(f"tokenizer kind {kind!r}: expected 'sentencepiece' or 'wordpiece'")
            meta["trained_on_sentences"] = len(sentences)
        meta["requested_vocab_size"] = vocab_size
        (temp / META).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("%s: %s, %d pieces", outdir, meta["kind"], meta["vocab_size"])
    return meta


def _train_sentencepiece(sentences, folder: Path, vocab_size, model_type, lowercase, character_coverage, threads,
                         seed):
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)  # unseeded, the same input gives another model each time
    try:
        interruptible(  # hours of native code at full scale, which a stop signal must not wait for
            spm.SentencePieceTrainer.train,
            sentence_iterator=iter(sentences),
            model_prefix=str(folder / "spm"),
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus yields fewer pieces instead of failing
            character_coverage=character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
            control_symbols=["[CLS]", "[SEP]", "[MASK]"],
            input_sentence_size=0,  # the sample is already bounded
            shuffle_input_sentence=False,
            num_threads=threads,
            minloglevel=1,
        )
    except RuntimeError as error:
        needed = re.search(r"required_chars\. \d+ vs (\d+)", str(error))
        if not needed:
            raise
        raise BertpipeError(f"tokenizer.vocab_size {vocab_size} is too small for the train split's alphabet: "
                            f"{needed.group(1)} pieces at tokenizer.character_coverage {character_coverage}, special "
                            "tokens included; raise vocab_size or lower character_coverage") from None
    # The model records the path it was trained to, here a temporary folder: keep only the name, so that the same
    # input and seed give the same bytes.
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString((folder / "spm.model").read_bytes())
    proto.trainer_spec.model_prefix = "spm"
    (folder / "spm.model").write_bytes(proto.SerializeToString())
    processor = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    return {"kind": "sentencepiece", "model_type": model_type, "lowercase": lowercase,
            "vocab_size": processor.get_piece_size(), "files": ["spm.model", "spm.vocab"],
            "special_ids": {token: processor.piece_to_id(token) for token in SPECIAL_TOKENS}}


def _train_wordpiece(sentences, folder: Path, vocab_size, lowercase):
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase, clean_text=True)
    interruptible(trainer.train_from_iterator, sentences, vocab_size=vocab_size,
                  special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    # The trainer lists pieces in hash-map order: the special tokens first, then the rest sorted, gives the same ids
    # for the same vocabulary. (On ties it may even pick other merges, so a retrained WordPiece vocabulary can differ
    # a little: huggingface/tokenizers#1794. SentencePiece, the default, is reproducible.)
    pieces = sorted(set(trainer.get_vocab()) - set(SPECIAL_TOKENS))
    (folder / "vocab.txt").write_text("".join(f"{piece}\n" for piece in (*SPECIAL_TOKENS, *pieces)), encoding="utf-8")
    return _wordpiece_meta(folder, lowercase, trained=True)


def _adopt_vocab(vocab_file: Path, folder: Path, lowercase: bool):
    if not vocab_file.is_file():
        raise BertpipeError(f"{vocab_file}: no such vocab file (tokenizer.vocab_file)")
    read_vocab(vocab_file)  # its faults named in the user's file, not in the copy
    (folder / "vocab.txt").write_bytes(vocab_file.read_bytes())
    return _wordpiece_meta(folder, lowercase, trained=False)


def _wordpiece_meta(folder: Path, lowercase: bool, trained: bool) -> dict:
    from tokenizers import BertWordPieceTokenizer

    vocab = read_vocab(folder / "vocab.txt")
    BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lowercase, strip_accents=lowercase).save(
        str(folder / "tokenizer.json"))
    return {"kind": "wordpiece", "lowercase": lowercase, "vocab_size": len(vocab), "trained": trained,
            "files": ["vocab.txt", "tokenizer.json"], "special_ids": {t: vocab[t] for t in SPECIAL_TOKENS}}


def add_arguments(parser) -> None:
    parser.add_argument("--corpus", nargs="+", required=True,
                        help="the corpus jobs' folders, or @FILE: those FILE lists, one a line")
    parser.add_argument("--outdir", required=True)
    settings.add_arguments(parser, TokenizerSettings)
    parser.set_defaults(run=run, label="outdir", inputs=("corpus", "vocab_file"))


def run(args, _) -> Outcome:
    meta = train(args.corpus, args.outdir, settings.from_args(TokenizerSettings, args))
    tokenizer = Tokenizer(args.outdir)
    return Outcome(metrics={**meta, "word_start_pieces": int(tokenizer.is_word_start.sum())},
                   artifacts=[(args.outdir, "tokenizer")])
