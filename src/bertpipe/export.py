"""Stage `export`: a checkpoint as a HuggingFace transformers folder (`config.json`, `model.safetensors`, tokenizer
files) that `AutoModelForPreTraining.from_pretrained` and `AutoTokenizer.from_pretrained` load offline.

The weights map one to one (pretrained.py). The tokenizer becomes a HuggingFace fast tokenizer (`tokenizer.json`)
that gives the ids our tokenizer gives:
- SentencePiece: transformers' own SentencePiece conversion (the model's normalizer, dummy prefix and pieces);
- WordPiece: the same normalizer, pre-tokenizer and vocabulary as our Tokenizer.
Both add BERT's template ([CLS] A [SEP] B [SEP], token types 0/1). One difference is deliberate: the exported
tokenizer reads the text "[MASK]" (and the other special tokens) as the special token, as HuggingFace users expect
for fill-mask; our pipeline never does, so that an article's text cannot forge a mask.
"""

import json
import logging
from pathlib import Path

from bertpipe.atomic import atomic_dir
from bertpipe.pretrained import huggingface_model, load_model
from bertpipe.tokenizer import SPECIAL_TOKENS, Tokenizer, read_vocab

log = logging.getLogger(__name__)


def fast_tokenizer(folder):
    """Our tokenizer folder as a `tokenizers.Tokenizer` with BERT's special tokens and template."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ours = Tokenizer(folder)
    if ours.kind == "sentencepiece":
        from sentencepiece import sentencepiece_model_pb2
        from transformers.convert_slow_tokenizer import SpmConverter

        proto = sentencepiece_model_pb2.ModelProto.FromString((Path(folder) / "spm.model").read_bytes())
        if proto.trainer_spec.model_type == 1:  # unigram: pieces with their scores
            vocab = [(piece.piece, piece.score) for piece in proto.pieces]
        else:  # bpe: merges are rebuilt from the scores
            vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
        tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    else:
        vocab = read_vocab(Path(folder) / "vocab.txt")
        lowercase = ours.meta["lowercase"]
        tokenizer = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ours.cls_id), ("[SEP]", ours.sep_id)])
    return tokenizer, ours


def export(checkpoint_dir, tokenizer_dir, out) -> dict:
    """Write the HuggingFace folder `out`; returns what was exported (for the stage's stats)."""
    import transformers

    model, source, state = load_model(checkpoint_dir)
    hf_model = huggingface_model(model)
    tokenizer, ours = fast_tokenizer(tokenizer_dir)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        model_max_length=state["model_config"]["max_position_embeddings"])
    summary = {"checkpoint": str(source), "step": state["iteration"], "tokenizer": ours.kind,
               "vocab_size": ours.vocab_size, "parameters": sum(p.numel() for p in model.parameters())}
    with atomic_dir(out) as temp:
        hf_model.save_pretrained(temp, safe_serialization=True)
        hf_tokenizer.save_pretrained(temp)
        (temp / "bertpipe-export.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("%s: step %d of %s as a transformers folder", out, state["iteration"], source)
    return summary
