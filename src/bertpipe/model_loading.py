"""Our BERT from a checkpoint, and as HuggingFace transformers' BertForPreTraining: the mapping lives here, beside
the model, for the export stage, the tests and the benches alike.

The weights need no conversion: our parameter names are `transformers.BertForPreTraining`'s (model.py)."""

from pathlib import Path

from bertpipe import BertpipeError
from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.train import checkpoint


def load_model(checkpoint_dir) -> tuple:
    """(our BERT in eval mode, the checkpoint folder read, its state) from a checkpoint folder or the newest
    checkpoint under a `checkpoints` folder."""
    source = Path(checkpoint_dir)
    if not (source / "state.pt").is_file():
        source = checkpoint.latest(source)
    if source is None:
        raise BertpipeError(f"{checkpoint_dir}: no checkpoint there; run the pretrain stage first")
    try:
        state = checkpoint.load(source)  # a file the file system fails to read stops here, naming it
    except checkpoint.CheckpointDamaged as error:
        raise BertpipeError(f"{source} does not load ({error}): the final checkpoint is damaged; train the phase "
                            "again (snakemake --forcerun pretrain), or name an older checkpoint folder") from None
    model = BertForPreTraining(BertConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval(), source, state


def huggingface_config(config: BertConfig, **extra):
    """transformers.BertConfig of our `config` (`extra`: further transformers settings, e.g. attn_implementation)."""
    import transformers

    return transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=config.hidden_dropout, attention_probs_dropout_prob=config.attention_dropout,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layernorm_epsilon, initializer_range=config.initializer_range,
        architectures=["BertForPreTraining"], **extra)


def huggingface_model(model: BertForPreTraining):
    """transformers.BertForPreTraining holding our model's weights (the decoder's bias is tied to ours)."""
    import transformers

    hf_model = transformers.BertForPreTraining(huggingface_config(model.config))
    missing, unexpected = hf_model.load_state_dict(model.state_dict(), strict=False)
    # HuggingFace keeps these as buffers or tied copies; everything else must map one to one.
    allowed = {"cls.predictions.decoder.bias", "bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}
    if unexpected or set(missing) - allowed:
        raise RuntimeError(f"parameter names differ from transformers': missing {missing}, unexpected {unexpected}")
    return hf_model.eval()
