"""Export: our checkpoint and tokenizer as a transformers folder that HuggingFace loads offline and that computes
what ours computes (logits within 1e-5, the same token ids), for each tokenizer kind."""

import json

import pytest
import torch

from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.settings import TokenizerSettings
from bertpipe.stages.export import export
from bertpipe.stages.tokenizer import train
from bertpipe.tokenizer_folder import Tokenizer
from bertpipe.train import checkpoint

pytestmark = pytest.mark.slow

TOKENIZERS = [("sentencepiece", "unigram"), ("sentencepiece", "bpe"), ("wordpiece", None)]


def sentences_of(corpus, limit=3000):
    found = []
    for shard in sorted(corpus.glob("*/shard-*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            found.extend(json.loads(line)["text"].split("\n"))
    return found[:limit]


@pytest.fixture(scope="module", params=TOKENIZERS, ids=lambda p: "-".join(filter(None, p)))
def exported(request, tmp_path_factory, sample_corpus):
    kind, model_type = request.param
    folder = tmp_path_factory.mktemp(f"export-{kind}")
    train([sample_corpus], folder / "tokenizer",
          TokenizerSettings(kind=kind, model_type=model_type or "unigram", vocab_size=2000))
    vocab_size = Tokenizer(folder / "tokenizer").vocab_size
    config = BertConfig(vocab_size=vocab_size + 7, hidden_size=64, num_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    with torch.no_grad():  # a trained model's biases and LayerNorms are not at their initial values
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    import dataclasses

    checkpoint.save(folder / "checkpoints", 7, {"model": model.state_dict(), "iteration": 7,
                                                "model_config": dataclasses.asdict(config)}, keep_last=1)
    export(folder / "checkpoints", folder / "tokenizer", folder / "hf")
    return folder, model.eval(), config


def test_folder_has_config_safetensors_and_tokenizer_files_and_no_pickle(exported):
    folder, _, _ = exported
    names = {p.name for p in (folder / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    assert not list(folder.glob(".hf.tmp-*"))
    # What serving it needs, pinned to what wrote it (the registered model's requirements): no local build tag.
    import transformers

    requirements = json.loads((folder / "hf/bertpipe-export.json").read_text())["requirements"]
    assert f"transformers=={transformers.__version__}" in requirements and not any("+" in r for r in requirements)
    assert {r.split("==")[0] for r in requirements} == {"transformers", "tokenizers", "safetensors", "torch"}


def card_metadata(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_model_card_says_what_the_pipeline_recorded_in_huggingfaces_layout(exported):
    from bertpipe.stages.export import model_card

    folder, _, config = exported
    alone = (folder / "hf/README.md").read_text()  # exported by hand: no facts, and it says so
    assert card_metadata(alone)["pipeline_tag"] == "fill-mask" and "not recorded" in alone
    phase = {"seq_length": 128, "batch_size": 32, "gradient_accumulation_steps": 2, "train_iters": 900000}
    facts = {"name": "wiki-bert",
             "corpus": {"source": {"format": "wikipedia", "name": "Wikipedia enwiki 20261101",
                                   "license": "cc-by-sa-4.0", "dump": "enwiki/20261101"}, "parts": 2,
                        "split": "1000,1,1", "documents_in": 6512345, "documents_dropped": 12,
                        "splits": {name: {"documents": count, "sentences": 10 * count} for name, count in
                                   (("train", 6500000), ("valid", 6000), ("test", 6333))}},
             "phases": [{"step": 900000, "phase": phase, "precision": "fp16", "processes": 64,
                         "device": "NVIDIA H200", "seconds": 7200.0, "mlflow_run_id": "abc"}],
             "tfrecords": [{"instances": 123456789, "real_tokens": 9876543210,
                            "per_shard": [{"spec": {"seq_length": 128, "dupe_factor": 5}}]}],
             "evaluation": {"test_sequences": 4096, "test_perplexity": 3.25, "test_mlm_accuracy": 0.71,
                            "test_nsp_accuracy": 0.97},
             "lineage": {"tokenizer content hash": "0123abcd"}}
    card = model_card({"step": 900000, "checkpoint": "ckpt/step-00900000", "tokenizer": "wordpiece",
                       "vocab_size": 30522, "parameters": 336000000}, vars(config) | {"vocab_size": 30522}, facts)
    metadata = card_metadata(card)
    assert metadata["license"] == "cc-by-sa-4.0" and metadata["library_name"] == "transformers"
    (result,) = metadata["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"] if m["type"] == "perplexity"} == {"perplexity": 3.25}
    assert "Wikimedia dump `enwiki/20261101`: 2 parts, 6,512,345 articles (12 dropped as too short), about " \
           "1,975,308,642 tokens in the train split." in card
    assert "| 1 | 900,000 | 4,096 | 128 | fp16 | 64 x NVIDIA H200 | 2.00 h |" in card  # 32 x 2 x 64 sequences
    assert "123,456,789 training instances" in card and "masked-LM perplexity 3.250" in card
    assert "tokenizer content hash: `0123abcd`" in card and "# wiki-bert" in card and "CC BY-SA 4.0" in card
    assert 'pipeline("fill-mask"' in card and "## Limits" in card


def test_the_model_card_of_your_own_corpus_names_it_and_not_wikipedia(exported):
    from bertpipe.stages.export import model_card

    _, _, config = exported
    facts = {"name": "notes-bert",
             "corpus": {"source": {"format": "plain_text", "name": "Ward notes 2025", "license": "other"},
                        "parts": 3, "files": 1200, "bytes": 5 * 2**20, "split": "98,1,1", "documents_in": 5000,
                        "documents_dropped": 7, "bad_input": {"not_json": 0, "no_text": 0, "not_utf8": 2,
                                                              "empty_files": 1},
                        "splits": {name: {"documents": count, "sentences": 10 * count} for name, count in
                                   (("train", 4900), ("valid", 48), ("test", 45))}},
             "tfrecords": [{"instances": 900, "real_tokens": 115000,
                            "per_shard": [{"seq_length": 128, "features": ["input_ids", "document_lengths"]}]}],
             "evaluation": {"test_sequences": 40, "test_perplexity": 30.5, "test_mlm_accuracy": 0.3}}
    card = model_card({"step": 100, "checkpoint": "ckpt/step-00000100", "tokenizer": "sentencepiece",
                       "vocab_size": 4000, "parameters": 1000000, "recipe": "modern"},
                      vars(config) | {"vocab_size": 4000}, facts)
    metadata = card_metadata(card)
    assert "wikipedia" not in card.lower() and "datasets" not in metadata and metadata["license"] == "other"
    assert metadata["model-index"][0]["results"][0]["dataset"]["name"] == "Ward notes 2025, test split"
    assert ("- Ward notes 2025 (source.format plain_text): 1,200 files, 5.0 MB, 5,000 documents (7 dropped as too "
            "short; bad input left out: 2 not_utf8, 1 empty_files), 115,000 tokens in the train split.") in card
    assert "on packed sequences of Ward notes 2025" in card and "- Ward notes 2025 only:" in card


def test_huggingface_model_gives_our_logits(exported, monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, model, config = exported
    theirs = transformers.AutoModelForPreTraining.from_pretrained(folder / "hf").eval()
    assert type(theirs).__name__ == "BertForPreTraining"
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (3, 40), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    segments = (torch.arange(40) >= 20).long().expand(3, -1) * mask
    positions = torch.tensor([[1, 5, 9], [2, 3, 29], [10, 20, 39]])
    with torch.no_grad():
        our_mlm, our_nsp = model(ids, segments, mask, positions)
        out = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask)
    their_mlm = torch.gather(out.prediction_logits, 1, positions[:, :, None].expand(-1, -1, config.vocab_size))
    torch.testing.assert_close(our_mlm, their_mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_nsp, out.seq_relationship_logits, atol=1e-5, rtol=1e-5)


def test_huggingface_tokenizer_gives_our_ids(exported, sample_corpus, monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, _, _ = exported
    ours = Tokenizer(folder / "tokenizer")
    theirs = transformers.AutoTokenizer.from_pretrained(folder / "hf")
    sentences = sentences_of(sample_corpus) + ["  Two  spaces,\ttabs and ÜNICODE ﬁ ligatures — ½ café. ", "x"]
    assert theirs(sentences, add_special_tokens=False)["input_ids"] == ours.encode(sentences)
    pair = theirs(sentences[0], sentences[1])
    a, b = ours.encode(sentences[:2])
    assert pair["input_ids"] == [ours.cls_id, *a, ours.sep_id, *b, ours.sep_id]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # HuggingFace users write [MASK] for fill-mask: the exported tokenizer reads it as the special token.
    assert ours.mask_id in theirs("the [MASK] sat")["input_ids"]


@pytest.mark.parametrize("stage", ["export", "evaluate"])
def test_a_final_checkpoint_that_does_not_load_stops_export_and_evaluate_naming_it(exported, tmp_path, stage,
                                                                                   capsys):
    from tests.conftest import bertpipe_in_process

    folder, _, _ = exported
    damaged = tmp_path / "checkpoints/step-00000007"
    damaged.mkdir(parents=True)
    data = (folder / "checkpoints/step-00000007/state.pt").read_bytes()
    (damaged / "state.pt").write_bytes(data[:len(data) // 3])
    arguments = {"export": ["--tokenizer", folder / "tokenizer", "--out", tmp_path / "hf"],
                 "evaluate": ["--test-data", tmp_path / "none.tfrecord", "--tokenizer", folder / "tokenizer", "--out",
                              tmp_path / "metrics.json", "--fill-mask", tmp_path / "fill-mask.html"]}[stage]
    status, _, err = bertpipe_in_process(capsys, stage, "--checkpoint", tmp_path / "checkpoints", *arguments)
    assert status == 1 and f"{damaged} does not load" in err and "Traceback" not in err
    assert not {"hf", "metrics.json", "fill-mask.html"} & {path.name for path in tmp_path.iterdir()}


def test_a_missing_model_card_fact_is_named(exported, tmp_path, capsys):
    from tests.conftest import bertpipe_in_process

    folder, _, _ = exported
    status, _, err = bertpipe_in_process(capsys, "export", "--checkpoint", folder / "checkpoints", "--tokenizer",
                                         folder / "tokenizer", "--out", tmp_path / "hf", "--evaluation",
                                         tmp_path / "absent.json")
    assert status == 1 and "absent.json: not a readable JSON file for the model card" in err
    assert not (tmp_path / "hf").exists()
