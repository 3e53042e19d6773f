"""BERT for pretraining, as in the paper and google-research/bert: post-LayerNorm, exact GELU, learned positions,
token types, a pooler, the next-sentence head and the masked-LM head tied to the word embeddings.

Module and parameter names are those of HuggingFace's `BertForPreTraining`, so its state dict is ours, one to one
(`bert.encoder.layer.3.attention.self.query.weight`, `cls.predictions.transform.dense.bias`, ...).
The encoder computes on real tokens only (unpadded, as MosaicBERT and NVIDIA's BERT do): after the embeddings the
batch's real tokens are packed into one (tokens, width) matrix, the dense layers and LayerNorms run on it, and each
token attends to its own sequence's real tokens through `scaled_dot_product_attention`: on a CPU one call per
sequence at its real length (attention then costs the sum of the squared real lengths, not batch x length^2); on a
GPU one call for the batch with the padding masked (a kernel launch per sequence is expected to cost more than the
padding saves there; not measured yet). Padding costs nothing in the dense layers, which hold most of the FLOPs.
Under `torch.compile` the encoder runs padded instead, with the padding masked: the number of real tokens changes
every batch, and the compiled model would be compiled again for each new one.
The masked-LM head runs only at the masked positions (as NVIDIA's BERT does): the vocabulary projection, the
largest matmul of the model, shrinks from every token to the ~15% that are predicted, with the same loss.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from bertpipe.settings import ModelSettings


@dataclasses.dataclass
class BertConfig(ModelSettings):
    """The model's settings (settings.ModelSettings) and what the data fixes: the vocabulary and two token types."""

    vocab_size: int = dataclasses.field(default=None, kw_only=True)  # the tokenizer's, or more
    type_vocab_size: int = dataclasses.field(default=2, kw_only=True)
    initializer_range: float = dataclasses.field(default=0.02, kw_only=True)

    def __post_init__(self):
        if self.vocab_size is None:
            raise ValueError("vocab_size: give the tokenizer's vocabulary size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
                    + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(embedded))


class Tokens:
    """Where a padded batch's real tokens are (`attention_mask` 1), and attention among them. `packed` is
    (real tokens, ...) in the batch's order; `padded` is (batch, length, ...) with zeros at padding. Under
    torch.compile, or where nothing is padding, `packed` is the batch flattened: every token counts."""

    def __init__(self, attention_mask, unpad: bool = True):
        mask = attention_mask.bool()
        self.shape = mask.shape
        self.attend = mask[:, None, None, :]  # where a query may attend to a key: (batch, 1, 1, length)
        self.unpadded = unpad and not torch.compiler.is_compiling()
        if self.unpadded:  # one host synchronisation (nonzero), two on a CPU (the lengths)
            self.index = mask.flatten().nonzero().squeeze(1)
            if len(self.index) == mask.numel():  # nothing is padding: no packing, and no mask (the flash kernel)
                self.unpadded, self.attend = False, None
            else:
                self.per_sequence = attention_mask.device.type == "cpu"
                self.lengths = mask.sum(1).tolist() if self.per_sequence else None

    def pack(self, padded):
        flat = padded.flatten(0, 1)
        return flat.index_select(0, self.index) if self.unpadded else flat

    def unpack(self, packed):
        batch, length = self.shape
        if self.unpadded:
            packed = packed.new_zeros(batch * length, *packed.shape[1:]).index_copy(0, self.index, packed)
        return packed.view(batch, length, *packed.shape[1:])

    def attention(self, query, key, value, heads: int, dropout: float):
        """Each token's attention over the real tokens of its sequence: (tokens, width) -> (tokens, width)."""
        width = query.shape[-1]

        def heads_first(x):  # (batch, length, width) -> (batch, heads, length, width / heads)
            return x.view(x.shape[0], x.shape[1], heads, width // heads).transpose(1, 2)

        if self.unpadded and self.per_sequence:
            contexts = [F.scaled_dot_product_attention(*(heads_first(x[None]) for x in qkv), dropout_p=dropout)
                        for qkv in zip(*(x.split(self.lengths) for x in (query, key, value)))]
            return torch.cat([c[0].transpose(0, 1).reshape(-1, width) for c in contexts])
        context = F.scaled_dot_product_attention(*(heads_first(self.unpack(x)) for x in (query, key, value)),
                                                 attn_mask=self.attend, dropout_p=dropout)
        return self.pack(context.transpose(1, 2).reshape(*self.shape, width))


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_dropout

    def forward(self, hidden, tokens: Tokens):
        return tokens.attention(self.query(hidden), self.key(hidden), self.value(hidden), self.heads,
                                self.dropout if self.training else 0.0)


class Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = Output(config, config.hidden_size)

    def forward(self, hidden, tokens: Tokens):
        return self.output(self.self(hidden, tokens), hidden)


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden):
        return F.gelu(self.dense(hidden))  # exact (erf) GELU, as BERT


class Output(nn.Module):
    """Projection, dropout, residual and LayerNorm (post-LN): after attention and after the feed-forward."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class Layer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config, config.intermediate_size)

    def forward(self, hidden, tokens: Tokens):
        attended = self.attention(hidden, tokens)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.unpad = True  # False: padding computed like real tokens, as under torch.compile (bench/unpad_bench.py)

    def forward(self, hidden, attention_mask):
        """(batch, length, width) embeddings -> (batch, length, width), computed on the real tokens only (zeros at
        padding where the batch is unpadded)."""
        tokens = Tokens(attention_mask, self.unpad)
        packed = tokens.pack(hidden)
        for layer in self.layer:
            packed = layer(packed, tokens)
        return tokens.unpack(packed)


class Pooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def forward(self, input_ids, token_type_ids, attention_mask):
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), attention_mask)
        return hidden, self.pooler(hidden)


class PredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, hidden):
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class LMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = PredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # weight tied to the embeddings
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden):
        return self.decoder(self.transform(hidden)) + self.bias


class PreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = LMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, masked_hidden, pooled):
        return self.predictions(masked_hidden), self.seq_relationship(pooled)


class BertForPreTraining(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = PreTrainingHeads(config)
        self.apply(self._init_weights)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def _init_weights(self, module):
        """BERT's initialisation: normal(0, 0.02) weights, zero biases, LayerNorm at identity."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, token_type_ids, attention_mask, masked_lm_positions):
        """Masked-LM logits at `masked_lm_positions` (batch, predictions, vocab) and next-sentence logits (batch, 2)."""
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        index = masked_lm_positions[:, :, None].expand(-1, -1, hidden.shape[-1])
        return self.cls(torch.gather(hidden, 1, index), pooled)


def pretraining_loss_sums(mlm_logits, nsp_logits, masked_lm_ids, masked_lm_weights, next_sentence_labels):
    """(masked-LM, next-sentence) cross-entropy summed over real predictions and sequences, in float32.

    Sums, not means: the trainer divides by the counts of the whole global batch, so that the loss (and gradient)
    is the same however the batch is cut into ranks and micro-batches. Over one batch, sum / count is Megatron's and
    Google's masked-LM loss, sum(loss * weight) / sum(weight)."""
    token_losses = F.cross_entropy(mlm_logits.float().flatten(0, 1), masked_lm_ids.flatten(), reduction="none")
    mlm = (token_losses * masked_lm_weights.flatten().float()).sum()
    nsp = F.cross_entropy(nsp_logits.float(), next_sentence_labels.flatten(), reduction="sum")
    return mlm, nsp


def flops_per_sequence(config: BertConfig, seq_length: int, predictions: int) -> float:
    """Model FLOPs of one training step (forward and backward, 3x the forward's) for one sequence: the matmuls
    of the encoder, attention scores and values, pooler and heads (masked-LM head at the predictions only)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_layers
    per_token = layers * (2 * 4 * h * h + 2 * 2 * h * i + 2 * 2 * seq_length * h)
    heads = predictions * (2 * h * h + 2 * h * config.vocab_size) + 2 * h * h + 2 * h * 2
    return 3.0 * (seq_length * per_token + heads)
