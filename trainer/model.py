"""The CLAP model: a speech tower and a text tower projected into one embedding space."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModel, AutoTokenizer

from trainer.config import ModelOptions, TowerOptions
from trainer.masks import length_mask, masked_mean, normalize_valid
from trainer.pooling import AudioPooling
from trainer.sources import resolve_source
from trainer.tokenization import configure_tokenizer, is_bert_japanese, load_bert_japanese


def load_tower(opts: TowerOptions, weights: bool = True) -> nn.Module:
    """A Hugging Face encoder: pretrained by id or folder, or randomly initialised from a config.

    weights=False builds the pretrained architecture without reading its weights (a
    checkpoint's state dict replaces them anyway)."""
    if opts.pretrained is not None and weights:
        model = AutoModel.from_pretrained(resolve_source(opts.pretrained))
    elif opts.pretrained is not None:
        model = AutoModel.from_config(AutoConfig.from_pretrained(resolve_source(opts.pretrained)))
    else:
        cfg = dict(opts.config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ValueError("tower config needs a `model_type` (e.g. 'hubert', 'bert')")
        model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))
    if not opts.trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def byte_tokenizer(max_tokens: int) -> Tokenizer:
    """A tokenizer with one symbol per byte: no training, covers every language."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(specials)
    return configure_tokenizer(tok, max_tokens, pad_id=0, pad_token="[PAD]")


def load_tokenizer(opts: TowerOptions, max_tokens: int, language: str = "en"):
    """The text tower's tokenizer: a fast one as a `tokenizers.Tokenizer` (the bundle ships
    its tokenizer.json), or transformers' BertJapaneseTokenizer for MeCab + SentencePiece
    (the bundle ships its SentencePiece model and settings, see trainer.tokenization).
    `language` matters only to a Whisper decoder, whose prompt names it."""
    from trainer.whisper_text import is_whisper_text, whisper_text_tokenizer

    if is_whisper_text(opts):
        return whisper_text_tokenizer(opts, language, max_tokens)
    source = opts.tokenizer or opts.pretrained
    if source is None:
        raise ValueError("a text tower built from a config needs `tokenizer` (a tokenizer.json, id, or 'bytes')")
    if source == "bytes":
        return byte_tokenizer(max_tokens)
    source = resolve_source(source)
    if source.endswith(".json") and Path(source).is_file():
        tok = Tokenizer.from_file(source)
        pad = tok.padding or {}
        return configure_tokenizer(tok, max_tokens, pad.get("pad_id", 0), pad.get("pad_token", "[PAD]"))
    if is_bert_japanese(source):
        return load_bert_japanese(source, max_tokens)
    hf = AutoTokenizer.from_pretrained(source, use_fast=True)
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"{source}: no fast (tokenizers-library) tokenizer and not BERT-Japanese "
                         "(MeCab + SentencePiece): the bundle has no runtime tokenizer for it")
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    return configure_tokenizer(tok, max_tokens, hf.pad_token_id or 0, hf.pad_token or "[PAD]")


def _conv_lengths(lengths: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    return torch.div(lengths - kernel, stride, rounding_mode="floor") + 1


class AudioTower(nn.Module):
    """A wav2vec2-family encoder (HuBERT, wav2vec 2.0, WavLM) run so that padding cannot leak.

    The "group" feature-extractor variant normalises its first conv layer over time; run
    as is, the statistics would include the zero padding. Here that normalisation uses
    only the valid frames, and the transformer gets the frame mask, so an utterance's
    frames are the same alone or padded in a batch.
    """

    def __init__(self, encoder: nn.Module, normalize_waveform: bool = False):
        super().__init__()
        self.encoder = encoder
        self.normalize_waveform = normalize_waveform
        cfg = encoder.config
        self.kernels = list(cfg.conv_kernel)
        self.strides = list(cfg.conv_stride)
        self.hidden_size = cfg.hidden_size
        self.depth = cfg.num_hidden_layers + 1
        self.min_samples = self.receptive_field()

    def receptive_field(self) -> int:
        """Fewest samples that give one output frame."""
        n = 1
        for k, s in zip(reversed(self.kernels), reversed(self.strides)):
            n = (n - 1) * s + k
        return n

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder._get_feat_extract_output_lengths(lengths).to(torch.long)

    def _encode(self, waveform: torch.Tensor, lengths: torch.Tensor, every: bool):
        lengths = lengths.to(torch.long)
        if self.normalize_waveform:
            waveform = normalize_valid(waveform, lengths)
        x = waveform[:, None, :]
        cur = lengths
        for layer in self.encoder.feature_extractor.conv_layers:
            norm = getattr(layer, "layer_norm", None)
            cur = _conv_lengths(cur, layer.conv.kernel_size[0], layer.conv.stride[0])
            if isinstance(norm, nn.GroupNorm):
                h = layer.conv(x)
                m = length_mask(cur, h.shape[-1]).to(h.dtype)[:, None, :]
                n = m.sum(-1, keepdim=True).clamp(min=1.0)
                mean = (h * m).sum(-1, keepdim=True) / n
                var = (((h - mean) * m) ** 2).sum(-1, keepdim=True) / n
                h = (h - mean) / torch.sqrt(var + norm.eps)
                h = h * norm.weight[None, :, None] + norm.bias[None, :, None]
                x = layer.activation(h)
            else:
                x = layer(x)
        features = x.transpose(1, 2)
        frame_mask = length_mask(cur.clamp(min=0), features.shape[1])
        hidden = self.encoder.feature_projection(features)
        if isinstance(hidden, tuple):  # wav2vec2 returns (hidden, normed features)
            hidden = hidden[0]
        if self.training:
            hidden = self.encoder._mask_hidden_states(hidden, attention_mask=frame_mask)
        out = self.encoder.encoder(hidden, attention_mask=frame_mask, output_hidden_states=every)
        return (list(out.hidden_states) if every else [out[0]]), frame_mask

    absolute_positions = False  # its positional convolution is relative: a piece starts anywhere

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor, offsets=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, T, H] and their validity mask [B, T]."""
        states, mask = self._encode(waveform, lengths, every=False)
        return states[-1], mask

    def states(self, waveform: torch.Tensor, lengths: torch.Tensor, offsets=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every hidden state [B, T, H] (the transformer's input first, its output last) and the mask."""
        return self._encode(waveform, lengths, every=True)


def build_audio_tower(opts: ModelOptions, weights: bool = True) -> nn.Module:
    """The Whisper family through `trainer.whisper`, the wav2vec2 family through `AudioTower`."""
    from trainer.whisper import WhisperTower
    from trainer.whisper_sources import load_whisper_encoder

    encoder = load_whisper_encoder(opts.audio, weights)
    if encoder is not None:
        return WhisperTower(encoder, opts.normalize_waveform)
    return AudioTower(load_tower(opts.audio, weights), opts.normalize_waveform)


def build_text_tower(opts: ModelOptions, weights: bool = True) -> "TextTower":
    """A Hugging Face text encoder, or a Whisper decoder through `trainer.whisper_text`."""
    from trainer.whisper_text import is_whisper_text, load_whisper_text

    if not is_whisper_text(opts.text):
        return TextTower(load_tower(opts.text, weights), opts.text_pooling)
    if opts.text_pooling != "mean":  # a causal model's first token has seen nothing of the sentence
        raise ValueError("a Whisper decoder as the text tower needs model.text_pooling = \"mean\"")
    return TextTower(load_whisper_text(opts.text, weights), opts.text_pooling)


class TextTower(nn.Module):
    def __init__(self, encoder: nn.Module, pooling: str = "cls"):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.hidden_size = encoder.config.hidden_size
        # Leading tokens that are the same prompt in every sentence (a Whisper decoder's).
        self.skip_tokens = getattr(encoder, "skip_tokens", 0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.pooling == "mean":
            mask = attention_mask.bool()
            if self.skip_tokens:
                hidden, mask = hidden[:, self.skip_tokens:], mask[:, self.skip_tokens:]
            return masked_mean(hidden, mask)
        return hidden[:, 0]


class ProjectionHead(nn.Module):
    """Linear projection, or ParaCLAP's linear→GELU→linear with residual and LayerNorm."""

    def __init__(self, dim_in: int, dim_out: int, kind: str = "linear", dropout: float = 0.1):
        super().__init__()
        self.kind = kind
        self.proj = nn.Linear(dim_in, dim_out)
        if kind == "residual":
            self.fc = nn.Linear(dim_out, dim_out)
            self.dropout = nn.Dropout(dropout)
            self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.kind == "residual":
            h = self.norm(h + self.dropout(self.fc(F.gelu(h))))
        return h


class ClapModel(nn.Module):
    def __init__(self, opts: ModelOptions, weights: bool = True):
        super().__init__()
        self.opts = opts
        self.audio = build_audio_tower(opts, weights)
        self.text = build_text_tower(opts, weights)
        d = opts.embedding_dim
        self.audio_pool = AudioPooling(self.audio.hidden_size, self.audio.depth, opts.audio_layers, opts.audio_pooling,
                                       opts.piece_samples)
        width = self.audio_pool.width
        self.audio_norm = nn.BatchNorm1d(width, affine=False) if opts.audio_norm == "batch" else nn.Identity()
        self.audio_head = ProjectionHead(width, d, opts.head, opts.head_dropout)
        self.text_head = ProjectionHead(self.text.hidden_size, d, opts.head, opts.head_dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(opts.init_logit_scale)))

    def encode_audio(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.audio_from_pooled(self.audio_statistics(waveform, lengths))

    def audio_states(self, waveform: torch.Tensor, lengths: torch.Tensor):
        return self.audio_pool.states(self.audio, waveform, lengths)

    def audio_statistics(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, L, S]: the pooled statistics the head reads (what a frozen tower's cache stores)."""
        return self.audio_pool.utterance_statistics(self.audio, waveform, lengths)

    def audio_moments(self, waveform: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor | None = None):
        """One piece per row: its frame count [B], per layer the frames' mean and variance
        [B, L, H], and its last layer's frames [B, T, H] (the piece graph of a bundle)."""
        states, mask = self.audio_pool.states(self.audio, waveform, lengths, offsets)
        count, mean, var = self.audio_pool.moments(states, mask)
        return count, mean, var, states[-1] * mask[..., None].to(states[-1].dtype)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_from_pooled(self.text(input_ids, attention_mask))

    def audio_from_pooled(self, stats: torch.Tensor) -> torch.Tensor:
        """The audio head on the pooled statistics [B, L, S] (cached when the tower is frozen)."""
        return F.normalize(self.audio_head(self.audio_norm(self.audio_pool(stats))).float(), dim=-1)

    def text_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(pooled).float(), dim=-1)

    def towers_frozen(self) -> bool:
        return not any(p.requires_grad for p in [*self.audio.parameters(), *self.text.parameters()])

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.opts.max_logit_scale)

    def zero_shot_scale(self) -> float:
        """The logit scale a bundle's manifest carries, which the runtime scores with."""
        return round(float(self.scale().detach()), 6)

    def clamp_logit_scale(self) -> None:
        """After each optimiser step, as open_clip does: keep exp(scale) within [1, max]."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(self.opts.max_logit_scale))

    def forward(self, waveform, lengths, input_ids, attention_mask):
        # One call for both towers, so DistributedDataParallel sees a single forward per step.
        return self.encode_audio(waveform, lengths), self.encode_text(input_ids, attention_mask), self.scale()

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.audio_pool.parameters(), *self.audio_norm.parameters(), *self.audio_head.parameters(),
                *self.text_head.parameters(), self.logit_scale]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in [*self.audio.parameters(), *self.text.parameters()] if p.requires_grad]
