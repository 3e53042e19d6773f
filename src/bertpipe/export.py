"""Stage `export`: a checkpoint as a HuggingFace transformers folder (`config.json`, `model.safetensors`, tokenizer
files) that `AutoModelForPreTraining.from_pretrained` and `AutoTokenizer.from_pretrained` load offline.

The weights need no conversion: our parameter names are `transformers.BertForPreTraining`'s (model.py). The
tokenizer becomes a HuggingFace fast tokenizer (`tokenizer.json`) that gives the ids our tokenizer gives:
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
from bertpipe.tokenizer import META, SPECIAL_TOKENS, Tokenizer, read_vocab

log = logging.getLogger(__name__)


def huggingface_config(model_config: dict):
    import transformers

    return transformers.BertConfig(
        vocab_size=model_config["vocab_size"], hidden_size=model_config["hidden_size"],
        num_hidden_layers=model_config["num_layers"], num_attention_heads=model_config["num_attention_heads"],
        intermediate_size=model_config["intermediate_size"], hidden_act="gelu",
        hidden_dropout_prob=model_config["hidden_dropout"], attention_probs_dropout_prob=model_config["attention_dropout"],
        max_position_embeddings=model_config["max_position_embeddings"],
        type_vocab_size=model_config["type_vocab_size"], layer_norm_eps=model_config["layernorm_epsilon"],
        initializer_range=model_config["initializer_range"], architectures=["BertForPreTraining"])


def huggingface_model(model, model_config: dict):
    """transformers.BertForPreTraining holding our model's weights (the decoder's bias is tied to ours)."""
    import transformers

    hf_model = transformers.BertForPreTraining(huggingface_config(model_config))
    missing, unexpected = hf_model.load_state_dict(model.state_dict(), strict=False)
    # HuggingFace keeps these as buffers or tied copies; everything else must map one to one.
    allowed = {"cls.predictions.decoder.bias", "bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}
    if unexpected or set(missing) - allowed:
        raise RuntimeError(f"parameter names differ from transformers': missing {missing}, unexpected {unexpected}")
    return hf_model.eval()


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

    from bertpipe.evaluate import load_model

    model, source, state = load_model(checkpoint_dir)
    hf_model = huggingface_model(model, state["model_config"])
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
