"""Stage `export`: a checkpoint as a HuggingFace transformers folder (`config.json`, `model.safetensors`, tokenizer
files) that `AutoModelForPreTraining.from_pretrained` (bert2019: BertForPreTraining) or
`AutoModelForMaskedLM.from_pretrained` (modern: ModernBertForMaskedLM) and `AutoTokenizer.from_pretrained` load
offline.

The weights map one to one (model_loading.py). The tokenizer becomes a HuggingFace fast tokenizer (`tokenizer.json`)
that gives the ids our tokenizer gives:
- SentencePiece: transformers' own SentencePiece conversion (the model's normalizer, dummy prefix and pieces);
- WordPiece: the same normalizer, pre-tokenizer and vocabulary as our Tokenizer.
Both add BERT's template ([CLS] A [SEP] B [SEP], token types 0/1; ModernBERT has no token types: 0 throughout,
and its tokenizer gives none). One difference is deliberate: the exported
tokenizer reads the text "[MASK]" (and the other special tokens) as the special token, as HuggingFace users expect
for fill-mask; our pipeline never does, so that an article's text cannot forge a mask.
"""

import json
import logging
from pathlib import Path

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_dir
from bertpipe.hashing import content_hash
from bertpipe.settings import MlflowSettings
from bertpipe.tokenizer_folder import SPECIAL_TOKENS, Tokenizer, read_vocab
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)


def fast_tokenizer(folder, token_types: bool = True):
    """Our tokenizer folder as a `tokenizers.Tokenizer` with BERT's special tokens and template (the second
    segment's token type 1, or 0 without `token_types`)."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

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
        single="[CLS]:0 $A:0 [SEP]:0", pair=f"[CLS]:0 $A:0 [SEP]:0 $B:{int(token_types)} [SEP]:{int(token_types)}",
        special_tokens=[("[CLS]", ours.cls_id), ("[SEP]", ours.sep_id)])
    return tokenizer, ours


def model_card(summary: dict, model_config: dict, facts: dict) -> str:
    """`README.md` of the exported folder in HuggingFace's model-card layout (a YAML metadata header, then the
    sections): `facts` are what the pipeline knows of the model, each optional: "corpus" (corpus stats: the source,
    its files, documents and splits), "phases" (each phase's done file), "tfrecords" (the phases' train TFRecord
    stats), "evaluation" (evaluate's metrics), "lineage" (content hashes and commit), "name"."""
    import yaml

    corpus, evaluation = facts.get("corpus"), facts.get("evaluation")
    source = (corpus or {}).get("source") or {}
    wikipedia = source.get("format", "wikipedia") == "wikipedia"
    corpus_name = source.get("name") or ("English Wikipedia" if wikipedia else "its corpus")
    name = facts.get("name") or "bertpipe-bert"
    modern = summary.get("recipe") == "modern"
    metadata = {"language": ["en"], "license": source.get("license") or ("cc-by-sa-4.0" if wikipedia else "other"),
                "library_name": "transformers", "pipeline_tag": "fill-mask",
                "tags": ["modernbert" if modern else "bert", "fill-mask", "bertpipe"]}
    if wikipedia:
        metadata["datasets"] = ["wikipedia"]
    if evaluation:
        metadata["model-index"] = [{"name": name, "results": [{
            "task": {"type": "fill-mask", "name": "masked language modelling"},
            "dataset": {"type": "wikipedia" if wikipedia else source.get("format", "text"),
                        "name": f"{corpus_name}, test split"},
            "metrics": [{"type": "perplexity", "value": round(evaluation["test_perplexity"], 4)},
                        {"type": "accuracy", "name": "masked-LM accuracy",
                         "value": round(evaluation["test_mlm_accuracy"], 4)}] + (
                [{"type": "accuracy", "name": "next-sentence accuracy",
                  "value": round(evaluation["test_nsp_accuracy"], 4)}] if "test_nsp_accuracy" in evaluation
                else [])}]}]
    unknown = "not recorded (exported outside the workflow)"
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", "", f"# {name}", "",
             (f"ModernBERT (masked-LM head) pretrained from scratch on packed sequences of {corpus_name}, masks "
              "drawn as it trained, " if modern else
              f"BERT (masked-LM and next-sentence heads) pretrained from scratch on {corpus_name} ")
             + f"by bertpipe, step {summary['step']} of `{summary['checkpoint']}`.", "", "## Data", ""]
    if corpus:
        splits, unit = corpus["splits"], "articles" if wikipedia else "documents"
        dropped = f"{corpus['documents_dropped']:,} dropped as too short"
        bad = {kind: count for kind, count in (corpus.get("bad_input") or {}).items() if count}
        if bad:
            dropped += "; bad input left out: " + ", ".join(f"{count:,} {kind}" for kind, count in bad.items())
        tokens = _train_tokens(facts.get("tfrecords") or [])
        if "dump" in source:
            lines.append(f"- Wikimedia dump `{source['dump']}`: {corpus['parts']} parts, "
                         f"{corpus['documents_in']:,} articles ({dropped}){tokens}.")
        else:
            lines.append(f"- {corpus_name} (source.format {source.get('format')}): {corpus['files']:,} files, "
                         f"{corpus['bytes'] / 2**20:,.1f} MB, {corpus['documents_in']:,} documents ({dropped})"
                         f"{tokens}.")
        lines.append("- Split " + ", ".join(f"{split} {splits[split]['documents']:,} {unit} "
                                            f"({splits[split]['sentences']:,} sentences)" for split in splits)
                     + f" by a hash of each document's id (weights {corpus['split']}).")
    else:
        lines.append(f"- Corpus: {unknown}.")
    lengths = {}  # phases of the same length train on the same records: said once
    for records in facts.get("tfrecords") or []:
        shard = records["per_shard"][0]
        lengths.setdefault(shard["spec"]["seq_length"] if "spec" in shard else shard["seq_length"], records)
    for records in lengths.values():
        shard = records["per_shard"][0]  # the same settings in every shard of a length
        if "spec" in shard:
            lines.append(f"- Sequence length {shard['spec']['seq_length']}: {records['instances']:,} training "
                         f"instances, {records['real_tokens']:,} tokens that are not padding "
                         f"({shard['spec']['dupe_factor']} maskings of the text).")
        else:
            lines.append(f"- Sequence length {shard['seq_length']}: {records['instances']:,} packed sequences, "
                         f"{records['real_tokens']:,} tokens of text (masked anew in every epoch).")
    lines += [("- Licence: Wikipedia's text is CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/); "
               "this model is shared under the same licence." if wikipedia else
               f"- Licence of the corpus: {source.get('license') or 'not stated (config source.license)'}; the "
               "model's terms follow from it."), "", "## Tokenizer", "",
              f"{summary['tokenizer']}, {summary['vocab_size']:,} tokens, trained on the train split "
              "(`tokenizer.json` here, a HuggingFace fast tokenizer).", "", "## Architecture", "",
              "| setting | value |", "|---|---|"]
    for key in ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings",
                "vocab_size"):
        lines.append(f"| {key} | {model_config[key]:,} |")
    lines += [f"| parameters | {summary['parameters']:,} |", "", "## Training", ""]
    phases = facts.get("phases") or []
    if phases and all("phase" in done for done in phases):  # done files of older bertpipe versions lack it
        lines += ["| phase | steps | global batch | sequence length | precision | hardware | wall time |",
                  "|---|---|---|---|---|---|---|"]
        for number, done in enumerate(phases, 1):
            settings = done["phase"]
            batch = settings["batch_size"] * settings["gradient_accumulation_steps"] * done["processes"]
            lines.append(f"| {number} | {done['step']:,} | {batch:,} | {settings['seq_length']} | "
                         f"{done['precision']} | {done['processes']} x {done['device']} | "
                         f"{done['seconds'] / 3600:.2f} h |")
    else:
        lines.append(f"Phases: {unknown}.")
    lines += ["", "## Evaluation", ""]
    if evaluation:
        nsp = (f", next-sentence accuracy {evaluation['test_nsp_accuracy']:.3f}" if "test_nsp_accuracy" in evaluation
               else "")
        lines += [f"On the {evaluation['test_sequences']:,} sequences of the test split: masked-LM perplexity "
                  f"{evaluation['test_perplexity']:.3f}, masked-LM accuracy {evaluation['test_mlm_accuracy']:.3f}"
                  f"{nsp}."]
        if "test_common_mlm_accuracy" in evaluation:
            lines += ["", f"On the common test set ({evaluation['test_common_sequences']:,} packed sequences of the "
                          "test split under one fixed 15% mask, the same tokens whichever recipe trained the model): "
                          f"masked-LM perplexity {evaluation['test_common_perplexity']:.3f}, masked-LM accuracy "
                          f"{evaluation['test_common_mlm_accuracy']:.3f}."]
    else:
        lines.append(f"Test metrics: {unknown}.")
    lineage = facts.get("lineage") or {}
    lines += ["", "## Lineage", ""] + ([f"- {key}: `{value}`" for key, value in lineage.items()] or [f"- {unknown}"])
    auto = "AutoModelForMaskedLM" if modern else "AutoModelForPreTraining"
    lines += ["", "## How to load", "", "```python",
              f"from transformers import {auto}, AutoTokenizer, pipeline",
              "", f'model = {auto}.from_pretrained("path/to/this/folder")',
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
              'fill = pipeline("fill-mask", model="path/to/this/folder")',
              'fill("The capital of France is [MASK].")', "```", "", "## Limits", "",
              "- Pretrained only: fine-tune it before using it for a task"
              + ("." if modern else "; its next-sentence head is BERT's pretraining objective, not a classifier to "
                 "trust."),
              ("- English Wikipedia only, as of the dump's date: its topics, its style and its biases, nothing later."
               if wikipedia else f"- {corpus_name} only: its topics, its style and its biases."),
              "- A model trained on a small sample (the bundled demo) has learnt little beyond token frequencies: "
              "look at the evaluation above before using it."]
    return "\n".join(lines) + "\n"


def _train_tokens(tfrecords: list) -> str:
    """", N tokens in the train split" from the first phase's train TFRecord stats (bert2019's hold the text
    dupe_factor times over, with its special tokens: about); "" without them."""
    if not tfrecords:
        return ""
    records = tfrecords[0]
    spec = records["per_shard"][0].get("spec")
    if spec is None:
        return f", {records['real_tokens']:,} tokens in the train split"
    return f", about {records['real_tokens'] // spec['dupe_factor']:,} tokens in the train split"


# What loading the folder needs, pinned to what wrote it (the registered model's requirements.txt, register.py).
SERVING_PACKAGES = ("transformers", "tokenizers", "safetensors", "torch")


def serving_requirements() -> list:
    """Pins of SERVING_PACKAGES as installed here, a local build tag such as +cpu dropped (pip then finds the same
    version for the machine that serves)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def export(checkpoint_dir, tokenizer_dir, out, facts: dict = None) -> dict:
    """Write the HuggingFace folder `out`, with its model card from `facts` (model_card); returns what was
    exported (for the stage's stats)."""
    import transformers

    from bertpipe.model_loading import huggingface_model, huggingface_modern_model, load_model

    model, source, state = load_model(checkpoint_dir)
    recipe = state.get("recipe", "bert2019")
    tokenizer, ours = fast_tokenizer(tokenizer_dir, token_types=recipe == "bert2019")
    hf_model = huggingface_modern_model(model, ours) if recipe == "modern" else huggingface_model(model)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=state["model_config"]["max_position_embeddings"],
        model_input_names=["input_ids", "attention_mask"] if recipe == "modern"
        else ["input_ids", "token_type_ids", "attention_mask"])
    summary = {"checkpoint": str(source), "step": state["iteration"], "recipe": recipe, "tokenizer": ours.kind,
               "vocab_size": ours.vocab_size, "parameters": sum(p.numel() for p in model.parameters()),
               "requirements": serving_requirements()}
    with atomic_dir(out) as temp:
        hf_model.save_pretrained(temp, safe_serialization=True)
        hf_tokenizer.save_pretrained(temp)
        (temp / "bertpipe-export.json").write_text(json.dumps(summary, indent=2) + "\n")
        (temp / "README.md").write_text(model_card(summary, state["model_config"], facts or {}))
    log.info("%s: step %d of %s as a transformers folder", out, state["iteration"], source)
    return summary


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a folder of checkpoints (newest)")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder")
    parser.add_argument("--out", required=True, help="the transformers folder to write")
    card = parser.add_argument_group("the model card's facts (the workflow gives them all; each is optional)")
    settings.add_arguments(card, MlflowSettings, only=("registered_model",))
    card.add_argument("--corpus-stats", help="the corpus stage's stats.json (the source, documents and splits)")
    card.add_argument("--training-done", nargs="+", help="each phase's done.json, in order")
    card.add_argument("--tfrecords-stats", nargs="+", help="each phase's train TFRecords stats.json, in order")
    card.add_argument("--evaluation", help="the evaluate stage's metrics.json")
    parser.set_defaults(run=run, label="out", inputs=("tokenizer",))


def run(args, _) -> Outcome:
    summary = export(args.checkpoint, args.tokenizer, args.out, card_facts(args))
    return Outcome(metrics=summary, tags={"checkpoint": summary["checkpoint"]},
                   artifacts=[(Path(args.out) / "config.json", None), (Path(args.out) / "README.md", None)])


def card_facts(args) -> dict:
    """The model card's facts, from the files the earlier stages wrote (each flag optional)."""
    def read(path):
        if not path:
            return None
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise BertpipeError(f"{path}: not a readable JSON file for the model card ({error}); run the stage that "
                                "writes it, or leave the flag out") from None

    phases = [read(path) for path in args.training_done or []]
    corpus = read(args.corpus_stats)
    return {"name": args.registered_model, "corpus": corpus,
            "evaluation": read(args.evaluation), "phases": phases,
            "tfrecords": [read(path) for path in args.tfrecords_stats or []],
            "lineage": {**({"corpus content hash": corpus["corpus_hash"]} if corpus else {}),
                        "tokenizer content hash": content_hash(args.tokenizer),
                        **({"code commit": args.git_commit} if args.git_commit else {}),
                        **({"training runs (MLflow)": ", ".join(str(p["mlflow_run_id"]) for p in phases)}
                           if phases else {})}}
