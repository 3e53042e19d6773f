"""Our model from a checkpoint (either recipe's), and as HuggingFace transformers' model of the same architecture
(BertForPreTraining, ModernBertForMaskedLM): the mapping lives here, beside the models, for the export stage, the
tests and the benches alike.

The weights need no conversion: our parameter names are transformers' (model.py, modern_model.py)."""

from pathlib import Path

from bertpipe import BertpipeError
from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.modern_model import ModernBertConfig, ModernBertForMaskedLM, to_transformers_config
from bertpipe.train import checkpoint
from bertpipe.train.objectives import OBJECTIVES


def load_model(checkpoint_dir) -> tuple:
    """(our model in eval mode, the checkpoint folder read, its state) from a checkpoint folder or the newest
    checkpoint under a `checkpoints` folder. The state's `recipe` says which model (bert2019 for checkpoints
    that predate the modern recipe)."""
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
    objective = OBJECTIVES[state.get("recipe", "bert2019")]
    model = objective.model_class(objective.config_class(**state["model_config"]))
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


def huggingface_modern_config(config: ModernBertConfig, tokenizer, **extra):
    """transformers.ModernBertConfig of our `config`, with the special ids of `tokenizer` (tokenizer_folder)."""
    import transformers

    return transformers.ModernBertConfig(
        **to_transformers_config(config, pad_token_id=tokenizer.pad_id, cls_token_id=tokenizer.cls_id,
                                 sep_token_id=tokenizer.sep_id),
        architectures=["ModernBertForMaskedLM"], **extra)


def huggingface_modern_model(model: ModernBertForMaskedLM, tokenizer, **extra):
    """transformers.ModernBertForMaskedLM holding our model's weights: the same names, one to one."""
    import transformers

    hf_model = transformers.ModernBertForMaskedLM(huggingface_modern_config(model.config, tokenizer, **extra))
    hf_model.load_state_dict(model.state_dict(), strict=True)
    return hf_model.eval()
