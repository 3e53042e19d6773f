"""Export of the modern recipe's model: a transformers folder that `AutoModelForMaskedLM` loads offline as
`ModernBertForMaskedLM`, whose logits on text the tests have not seen (longer than the local window, through both
kinds of layer) are ours within 1e-4 in fp32, and whose tokenizer gives our ids, for each tokenizer kind."""

import dataclasses
import json

import pytest
import torch

from bertpipe.modern_model import ModernBertConfig, ModernBertForMaskedLM
from bertpipe.settings import TokenizerSettings
from bertpipe.stages.export import export
from bertpipe.stages.tokenizer import train
from bertpipe.tokenizer_folder import Tokenizer
from bertpipe.train import checkpoint

pytestmark = pytest.mark.slow

# Not from the sample: text no tokenizer or model here was made from, long enough to pass the window of 16 tokens.
UNSEEN = ["The lighthouse keeper logged every passing freighter, the colour of its funnel and the hour it rounded "
          "the headland, in a ledger that now fills three shelves of the harbour museum.",
          "Quantum dots emit light whose wavelength depends on their size: smaller dots glow blue, larger ones red."]


@pytest.fixture(scope="module", params=[("sentencepiece", "unigram"), ("wordpiece", None)],
                ids=lambda p: "-".join(filter(None, p)))
def exported(request, tmp_path_factory, sample_corpus):
    kind, model_type = request.param
    folder = tmp_path_factory.mktemp(f"export-modern-{kind}")
    train([sample_corpus], folder / "tokenizer",
          TokenizerSettings(kind=kind, model_type=model_type or "unigram", vocab_size=2000))
    tokenizer = Tokenizer(folder / "tokenizer")
    # Four layers: 0 and 3 global, 1 and 2 local with a window of 16 tokens.
    config = ModernBertConfig(vocab_size=tokenizer.vocab_size + 7, hidden_size=64, num_layers=4,
                              num_attention_heads=4, intermediate_size=96, max_position_embeddings=128,
                              hidden_dropout=0.0, attention_dropout=0.0, layernorm_epsilon=1e-5, local_attention=16,
                              global_attn_every_n_layers=3)
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(config)
    with torch.no_grad():  # a trained model's weights are not at their initial values; attention far from uniform
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    checkpoint.save(folder / "checkpoints", 7, {"recipe": "modern", "model": model.state_dict(), "iteration": 7,
                                                "model_config": dataclasses.asdict(config)}, keep_last=1)
    export(folder / "checkpoints", folder / "tokenizer", folder / "hf")
    return folder, model.eval(), tokenizer


def test_automodel_loads_a_modernbert_whose_config_states_the_layer_kinds(exported):
    import transformers

    folder, _, _ = exported
    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder / "hf", local_files_only=True)
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    stored = json.loads((folder / "hf/config.json").read_text())
    assert stored["model_type"] == "modernbert"
    assert stored["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert stored["local_attention"] == 16
    names = {path.name for path in (folder / "hf").iterdir()}
    assert {"model.safetensors", "tokenizer.json"} <= names and not any(n.endswith((".bin", ".pt")) for n in names)
    card = (folder / "hf/README.md").read_text()
    assert "AutoModelForMaskedLM" in card and "next-sentence" not in card and "modernbert" in card


def test_exported_logits_and_token_ids_are_ours_on_unseen_text(exported):
    import transformers

    folder, model, tokenizer = exported
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "hf", local_files_only=True)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder / "hf", local_files_only=True,
                                                           attn_implementation="sdpa").eval()
    for text in UNSEEN:
        ours = [tokenizer.cls_id, *tokenizer.encode_flat([text])[0].tolist(), tokenizer.sep_id]
        encoded = hf_tokenizer(text)
        assert encoded["input_ids"] == ours and "token_type_ids" not in encoded
        assert len(ours) > 2 * 16, "longer than the window, so the local layers see part of the text"
        ids = torch.tensor(ours)
        with torch.no_grad():
            expected = model(ids, [len(ours)], torch.arange(len(ours)))
            got = hf(input_ids=ids[None], attention_mask=torch.ones(1, len(ours), dtype=torch.long)).logits[0]
        assert torch.allclose(got[:, :tokenizer.vocab_size], expected[:, :tokenizer.vocab_size], atol=1e-4), \
            (got - expected).abs().max()
    fill = transformers.pipeline("fill-mask", model=str(folder / "hf"), tokenizer=str(folder / "hf"))
    assert len(fill(f"The lighthouse keeper logged every passing {hf_tokenizer.mask_token}.")) == 5
