"""ModernBERT for masked-LM pretraining, as HuggingFace's `ModernBertForMaskedLM` defines it (transformers 5.x):
pre-LayerNorm without biases, rotary positions, a GeGLU feed-forward, attention alternating between global layers
(every `global_attn_every_n_layers`-th, from layer 0: the whole document) and local ones (a sliding window, keys at
most `local_attention // 2` positions away), each kind with its own rotary base, and a masked-LM head (dense, GELU,
LayerNorm) before a decoder tied to the token embeddings.

Module and parameter names are HuggingFace's, so our state dict is theirs, key for key (`model.layers.1.attn.Wqkv
.weight`, `model.final_norm.weight`, `head.dense.weight`, `decoder.bias`, ...) and the export is a copy;
`to_transformers_config` gives the `transformers.ModernBertConfig` that builds the same model there.

The input is unpadded and packed, as ModernBERT was trained: the batch is one row of real tokens, several documents
end to end, and `document_lengths` says where each ends. A token attends only to its own document, and its rotary
position counts from the document's start, so a document is computed as it would be alone. Attention goes through
`scaled_dot_product_attention`: on a CPU one call per document at its length (the window masked only where the
document outreaches it); on a GPU one call for the documents padded to the longest, the padding and the window
masked. The masked-LM head runs only at the masked positions: the vocabulary projection, the largest matmul of the
model, shrinks to the ~15-30% of tokens that are predicted, with the same loss.
"""

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bertpipe.settings import ModelSettings, ModernSettings

# HuggingFace's `initializer_cutoff_factor`: weights are drawn from a normal cut at this many standard deviations.
INITIALIZER_CUTOFF = 2.0


@dataclasses.dataclass
class ModernBertConfig(ModelSettings):
    """The model's settings (settings.ModelSettings) and ModernBERT's own: the vocabulary, which layers attend
    globally, the local window and the rotary bases. `hidden_dropout` drops after the embeddings and inside the
    feed-forward, `attention_dropout` the attention probabilities and the attention's output (HF's embedding_dropout,
    mlp_dropout and attention_dropout)."""

    vocab_size: int = dataclasses.field(default=None, kw_only=True)  # the tokenizer's, or more
    # ModernSettings' (config modern): the window (keys up to half of it away), every n-th layer global from layer 0
    local_attention: int = dataclasses.field(default=ModernSettings.local_attention, kw_only=True)
    global_attn_every_n_layers: int = dataclasses.field(default=ModernSettings.global_attn_every_n_layers,
                                                        kw_only=True)
    global_rope_theta: float = dataclasses.field(default=ModernSettings.global_rope_theta, kw_only=True)
    local_rope_theta: float = dataclasses.field(default=ModernSettings.local_rope_theta, kw_only=True)
    initializer_range: float = dataclasses.field(default=0.02, kw_only=True)

    def __post_init__(self):
        if self.vocab_size is None:
            raise ValueError("vocab_size: give the tokenizer's vocabulary size")
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"hidden_size {self.hidden_size} is not an even multiple of num_attention_heads "
                             f"{self.num_attention_heads} (rotary embeddings rotate pairs of dimensions)")
        if self.global_attn_every_n_layers < 1:
            raise ValueError("global_attn_every_n_layers: 1 or more")

    def is_global(self, layer: int) -> bool:
        return layer % self.global_attn_every_n_layers == 0  # HF's rule


def to_transformers_config(config: ModernBertConfig, *, pad_token_id: int, cls_token_id: int,
                           sep_token_id: int) -> dict:
    """The keyword arguments of `transformers.ModernBertConfig` for the same model. transformers 5 keeps the layer
    kinds as `layer_types` ("full_attention" / "sliding_attention") and a rotary base per kind in `rope_parameters`;
    its `sliding_window` is derived, local_attention // 2. The special ids are the tokenizer's (HF's defaults are
    ModernBERT's own vocabulary's); bos and eos are [CLS] and [SEP], as there."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads,
        hidden_activation="gelu",
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        initializer_cutoff_factor=INITIALIZER_CUTOFF,
        norm_eps=config.layernorm_epsilon,
        norm_bias=False,
        attention_bias=False,
        mlp_bias=False,
        decoder_bias=True,
        classifier_bias=False,
        classifier_activation="gelu",
        embedding_dropout=config.hidden_dropout,
        mlp_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        local_attention=config.local_attention,
        layer_types=["full_attention" if config.is_global(layer) else "sliding_attention"
                     for layer in range(config.num_layers)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": config.global_rope_theta},
                         "sliding_attention": {"rope_type": "default", "rope_theta": config.local_rope_theta}},
        pad_token_id=pad_token_id,
        cls_token_id=cls_token_id,
        sep_token_id=sep_token_id,
        bos_token_id=cls_token_id,
        eos_token_id=sep_token_id,
        tie_word_embeddings=True,
    )


class Documents:
    """Where the documents of a packed batch lie among its tokens, and attention confined to them: a query attends
    to the keys of its own document, on a local layer only to those at most `max_distance` positions away (HF's
    bidirectional sliding window, |i - j| <= local_attention // 2)."""

    # Both run eager under torch.compile (a graph break each): the layout is read from the batch's document lengths
    # and attention's shapes follow them, which change every batch; the layers between are compiled, as
    # ModernBERT's reference compiles its MLP and embeddings around a varlen attention kernel.
    @torch.compiler.disable
    def __init__(self, document_lengths, tokens: int, device, max_position_embeddings: int, per_document=None):
        self.lengths = document_lengths.tolist() if torch.is_tensor(document_lengths) else list(document_lengths)
        if sum(self.lengths) != tokens or min(self.lengths) < 1:
            raise ValueError(f"document lengths {self.lengths} do not cut {tokens} tokens into documents")
        self.longest = max(self.lengths)
        if self.longest > max_position_embeddings:
            raise ValueError(f"a document of {self.longest} tokens: the model takes {max_position_embeddings}")
        lengths = torch.tensor(self.lengths, device=device)
        starts = (lengths.cumsum(0) - lengths).repeat_interleave(lengths, output_size=tokens)
        # rotary positions restart with each document, as HF computes a document alone (attention sees only offsets
        # between positions, so this changes rounding only: the angles stay small however long the pack)
        self.positions = torch.arange(tokens, device=device) - starts
        self.per_document = device.type == "cpu" if per_document is None else per_document
        if not self.per_document:  # token t sits at row `index[t]` of the padded (documents x longest) layout
            document = torch.arange(len(self.lengths), device=device).repeat_interleave(lengths, output_size=tokens)
            self.index = document * self.longest + self.positions
            self.real = torch.arange(self.longest, device=device) < lengths[:, None]  # (documents, longest)
            self.padded_masks = {}

    @torch.compiler.disable
    def attention(self, query, key, value, max_distance: int | None, dropout: float):
        """(tokens, heads, head width) queries, keys and values -> (tokens, heads, head width) contexts.
        `max_distance` None: the whole document."""
        if self.per_document:
            contexts = []
            for q, k, v in zip(*(x.split(self.lengths) for x in (query, key, value))):
                mask = None
                if max_distance is not None and len(q) - 1 > max_distance:
                    mask = band(len(q), max_distance, q.device)
                contexts.append(F.scaled_dot_product_attention(*(x.transpose(0, 1) for x in (q, k, v)),
                                                               attn_mask=mask, dropout_p=dropout).transpose(0, 1))
            return torch.cat(contexts)

        def padded(x):  # (tokens, heads, width) -> (documents, heads, longest, width), zeros at padding
            rows = x.new_zeros(len(self.lengths) * self.longest, *x.shape[1:]).index_copy(0, self.index, x)
            return rows.view(len(self.lengths), self.longest, *x.shape[1:]).transpose(1, 2)

        context = F.scaled_dot_product_attention(padded(query), padded(key), padded(value),
                                                 attn_mask=self.padded_mask(max_distance), dropout_p=dropout)
        return context.transpose(1, 2).flatten(0, 1).index_select(0, self.index)

    def padded_mask(self, max_distance: int | None):
        """Where a padded query may attend to a key: (documents, 1, 1 or longest, longest). Queries at padding attend
        to every key (their contexts are dropped), so that no row is wholly masked: the CPU's kernels give zeros
        there, but CUDA's memory-efficient one has given NaN (pytorch/pytorch#110213), and NaN gradients to every key
        would follow."""
        if max_distance not in self.padded_masks:
            mask = self.real[:, None, None, :]
            if max_distance is not None and self.longest - 1 > max_distance:
                mask = (mask & band(self.longest, max_distance, mask.device)) | ~self.real[:, None, :, None]
            self.padded_masks[max_distance] = mask
        return self.padded_masks[max_distance]


def band(length: int, max_distance: int, device):
    """(length, length): True where query i may attend to key j, |i - j| <= max_distance."""
    positions = torch.arange(length, device=device)
    return (positions[:, None] - positions[None, :]).abs() <= max_distance


def rotary_angles(positions, head_width: int, theta: float):
    """cos and sin of each token's rotary angles, (tokens, 1, head width) in float32, in HF's (GPT-NeoX's) layout:
    dimension k of a head turns with dimension k + width / 2, at frequency theta^(-2k / head width)."""
    inverse_frequencies = 1.0 / (theta ** (torch.arange(0, head_width, 2, dtype=torch.float) / head_width))
    angles = positions[:, None].float() * inverse_frequencies.to(positions.device)
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """Rotary embedding of (tokens, heads, head width) queries or keys, computed in float32 as HF does."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


class Embeddings(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon, bias=False)
        self.drop = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids):
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class Attention(nn.Module):
    def __init__(self, config: ModernBertConfig, layer: int):
        super().__init__()
        self.heads = config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_drop = nn.Dropout(config.attention_dropout)
        self.dropout = config.attention_dropout
        is_global = config.is_global(layer)
        self.max_distance = None if is_global else config.local_attention // 2  # None: the whole document
        self.rope_theta = config.global_rope_theta if is_global else config.local_rope_theta

    def forward(self, hidden, rotary, documents: Documents):
        query, key, value = self.Wqkv(hidden).view(len(hidden), 3, self.heads, -1).unbind(1)
        query, key = rotate(query, *rotary), rotate(key, *rotary)
        context = documents.attention(query, key, value, self.max_distance, self.dropout if self.training else 0.0)
        return self.out_drop(self.Wo(context.flatten(1)))


class MLP(nn.Module):
    """GeGLU: half of Wi's output, through GELU, gates the other half."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.drop = nn.Dropout(config.hidden_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden):
        projected, gate = self.Wi(hidden).chunk(2, dim=-1)
        return self.Wo(self.drop(F.gelu(projected) * gate))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModernBertConfig, layer: int):
        super().__init__()
        # layer 0 takes the embeddings' LayerNorm output as it is: another norm would repeat it
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon, bias=False) if layer \
            else nn.Identity()
        self.attn = Attention(config, layer)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon, bias=False)
        self.mlp = MLP(config)

    def forward(self, hidden, rotary, documents: Documents):
        hidden = hidden + self.attn(self.attn_norm(hidden), rotary, documents)
        return hidden + self.mlp(self.mlp_norm(hidden))


class ModernBertModel(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, layer) for layer in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon, bias=False)
        self.attention_per_document = None  # None: on a CPU only; True or False chooses (tests compare the two)

    def forward(self, input_ids, document_lengths):
        """(tokens,) packed ids and the lengths of their documents -> (tokens, width) final hidden states."""
        documents = Documents(document_lengths, len(input_ids), input_ids.device,
                              self.config.max_position_embeddings, self.attention_per_document)
        head_width = self.config.hidden_size // self.config.num_attention_heads
        rotary = {theta: rotary_angles(documents.positions, head_width, theta)
                  for theta in {layer.attn.rope_theta for layer in self.layers}}
        hidden = self.embeddings(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, rotary[layer.attn.rope_theta], documents)
        return self.final_norm(hidden)


class PredictionHead(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon, bias=False)

    def forward(self, hidden):
        return self.norm(F.gelu(self.dense(hidden)))


class ModernBertForMaskedLM(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.model = ModernBertModel(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.decoder.weight = self.model.embeddings.tok_embeddings.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        """HuggingFace's ModernBERT initialisation (`ModernBertPreTrainedModel._init_weights`): weight matrices from
        a normal cut at INITIALIZER_CUTOFF standard deviations; std initializer_range for the embeddings and the
        projections out of the residual stream (Wqkv, Wi), initializer_range / sqrt(2 x layers) for those into it
        (attention and MLP Wo) and for the head's dense; LayerNorms at 1, the decoder bias at 0. HF draws the
        decoder's weight with the smaller std too, then ties it to the embeddings, which keep theirs: so here."""
        std = self.config.initializer_range
        out_std = std / math.sqrt(2.0 * self.config.num_layers)

        def draw(linear_or_embedding, std):
            nn.init.trunc_normal_(linear_or_embedding.weight, std=std, a=-INITIALIZER_CUTOFF * std,
                                  b=INITIALIZER_CUTOFF * std)

        draw(self.model.embeddings.tok_embeddings, std)
        for layer in self.model.layers:
            draw(layer.attn.Wqkv, std)
            draw(layer.attn.Wo, out_std)
            draw(layer.mlp.Wi, std)
            draw(layer.mlp.Wo, out_std)
        draw(self.head.dense, out_std)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input_ids, document_lengths, masked_positions):
        """Masked-LM logits (len(masked_positions), vocab) of packed `input_ids` (tokens,), whose documents are
        `document_lengths` long in order, at `masked_positions` (indices into input_ids)."""
        hidden = self.model(input_ids, document_lengths)
        return self.decoder(self.head(hidden.index_select(0, masked_positions)))


def mlm_loss_sum(logits, labels):
    """Masked-LM cross-entropy summed over the predictions, in float32. A sum, not a mean: the trainer divides by
    the count of the whole global batch (as model.pretraining_loss_sums)."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def flops_per_token(config: ModernBertConfig, document_length, mask_rate: float):
    """Model FLOPs of one training step (forward and backward, 3x the forward's) per token of a document of
    `document_length` tokens (a number, or a numpy array of them: one figure each): the layers' matmuls, attention
    scores and values over the keys a token sees (the whole document on global layers, at most the window on local
    ones: fewer at a document's edges, not counted), and the masked-LM head at the `mask_rate` of tokens predicted."""
    h, i = config.hidden_size, config.intermediate_size
    global_layers = sum(config.is_global(layer) for layer in range(config.num_layers))
    window = np.minimum(document_length, 2 * (config.local_attention // 2) + 1)
    keys = global_layers * document_length + (config.num_layers - global_layers) * window
    dense = config.num_layers * (2 * 4 * h * h + 2 * 3 * h * i)  # Wqkv and attn.Wo; Wi (2 x i wide) and mlp.Wo
    head = mask_rate * (2 * h * h + 2 * h * config.vocab_size)
    return 3.0 * (dense + 2 * 2 * h * keys + head)
