"""Whisper's encoder (tiny … large-v3) as the audio tower, for utterances of any length.

Whisper pads every input to 30 s; here an utterance is encoded at its own length: the
positional embeddings are cut to its frame count, the attention and the pooling see its
valid frames only, and the log-mel front end is part of the module, so the exported
graph still takes a waveform. An utterance is its samples followed by silence, as
Whisper saw speech in training (zero padding to 30 s): the STFT reflects the first
samples at the start, as torch.stft does, and sees zeros past the end, so batch mates
and padding cannot change its frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from emoclap.audio import SAMPLE_RATE
from trainer.masks import length_mask, normalize_valid

N_FFT, HOP = 400, 160
# conv2's stride: mel frames = samples // HOP, encoder frames = ceil(mel frames / 2).
CONV_STRIDE = 2


def mel_frames(lengths: torch.Tensor) -> torch.Tensor:
    return torch.div(lengths, HOP, rounding_mode="floor")


def encoder_frames(mels: torch.Tensor) -> torch.Tensor:
    return torch.div(mels + CONV_STRIDE - 1, CONV_STRIDE, rounding_mode="floor")


class LogMel(nn.Module):
    """Whisper's log-mel spectrogram, per utterance, as convolutions ONNX exports as is.

    The DFT is a strided conv1d with fixed Hann-windowed cosine and sine kernels; the
    dynamic-range floor (max − 8) is taken over the utterance's own valid frames.
    """

    def __init__(self, n_mels: int):
        super().__init__()
        n = torch.arange(N_FFT, dtype=torch.float64)
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
        angle = 2 * math.pi * k * n / N_FFT
        kernel = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])[:, None, :]
        mel = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                              max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE,
                              norm="slaney", mel_scale="slaney")
        # Derived from the configuration, so kept out of state dicts and checkpoints.
        self.register_buffer("dft", kernel.float(), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel.T).float()[:, :, None], persistent=False)
        self.register_buffer("reflect", torch.arange(N_FFT // 2, 0, -1), persistent=False)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [B, n_mels, frames] (zero past each utterance's end) and mel frame counts [B]."""
        x = waveform * length_mask(lengths, waveform.shape[1]).to(waveform.dtype)
        x = torch.cat([x.index_select(1, self.reflect), x], 1)
        x = F.pad(x, (0, N_FFT // 2))
        spec = F.conv1d(x[:, None, :], self.dft, stride=HOP)[..., :-1]  # torch.stft's last frame is dropped
        bins = N_FFT // 2 + 1
        power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
        # A 1×1 convolution rather than a MatMul: `export --int8` quantises MatMuls, and the
        # power spectrum's range (1e-10 up) does not survive 8 bits.
        log = F.conv1d(power, self.mel).clamp(min=1e-10).log10()
        frames = mel_frames(lengths)
        valid = length_mask(frames, log.shape[-1])[:, None, :]
        peak = log.masked_fill(~valid, -100.0).amax(dim=(1, 2), keepdim=True)
        log = (torch.maximum(log, peak - 8.0) + 4.0) / 4.0
        return log * valid.to(log.dtype), frames


class WhisperTower(nn.Module):
    """A Hugging Face `WhisperEncoder` run over each utterance's valid frames.

    Same interface as `trainer.model.AudioTower`: frames and mask, every hidden state (`states`),
    `hidden_size`, `depth`, `min_samples`.
    """

    def __init__(self, encoder: WhisperEncoder, normalize_waveform: bool = False):
        super().__init__()
        self.encoder = encoder
        self.normalize_waveform = normalize_waveform
        self.front = LogMel(encoder.config.num_mel_bins)
        self.hidden_size = encoder.config.d_model
        self.depth = encoder.config.encoder_layers + 1
        self.max_samples = encoder.config.max_source_positions * CONV_STRIDE * HOP
        # Three mel frames give two encoder frames: the least that is still a sequence.
        self.min_samples = 3 * HOP

    # A piece of an utterance is encoded at the positions it has in the utterance, so its
    # frames sit where one pass would have put them and the decoder reads the pieces'
    # frames, end to end, as one sequence.
    absolute_positions = True

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor,
                offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, T, H] and their validity mask [B, T]."""
        states, mask = self.states(waveform, lengths, offsets)
        return states[-1], mask

    def states(self, waveform: torch.Tensor, lengths: torch.Tensor,
               offsets: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every hidden state [B, T, H] (the layers' input first, the normed output last) and
        the mask; `offsets` [B]: where each row starts in its utterance, in samples."""
        lengths = lengths.to(torch.long)
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export() and waveform.shape[1] > self.max_samples:
            raise ValueError(f"Whisper's encoder takes at most {self.max_samples} samples "
                             f"({self.max_samples // SAMPLE_RATE} s); got {waveform.shape[1]}")
        if self.normalize_waveform:
            waveform = normalize_valid(waveform, lengths)
        features, mels = self.front(waveform, lengths)
        return self.encode_states(features, mels, offsets)

    def encode_features(self, features: torch.Tensor, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's encoder on log-mel features [B, n_mels, T] of which the first `mels` frames are valid."""
        states, mask = self.encode_states(features, mels)
        return states[-1], mask

    def encode_states(self, features: torch.Tensor, mels: torch.Tensor,
                      offsets: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        enc = self.encoder
        mel_mask = length_mask(mels, features.shape[-1])[:, None, :].to(features.dtype)
        # conv2 looks one frame ahead: conv1's outputs past the end must be the zeros an
        # utterance alone would be padded with.
        x = F.gelu(enc.conv1(features * mel_mask)) * mel_mask
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        table = enc.embed_positions.weight
        if offsets is None:
            x = x + table[: x.shape[1]]
        else:
            # Past the table's end (an utterance over 30 s) the last positions are reused.
            first = torch.div(offsets.to(torch.long), HOP * CONV_STRIDE, rounding_mode="floor")
            first = torch.minimum(first, torch.full_like(first, table.shape[0]) - x.shape[1]).clamp(min=0)
            x = x + table[first[:, None] + torch.arange(x.shape[1], device=x.device)[None, :]]
        x = F.dropout(x, p=enc.dropout, training=self.training)
        mask = length_mask(encoder_frames(mels), x.shape[1])
        bias = (~mask)[:, None, None, :].to(x.dtype) * torch.finfo(x.dtype).min
        states = [x]
        for layer in enc.layers:
            if self.training and enc.layerdrop > 0 and torch.rand([]) < enc.layerdrop:
                continue
            x = layer(x, bias)
            states.append(x)
        states[-1] = enc.layer_norm(x)
        return states, mask


def random_encoder(config: dict) -> WhisperEncoder:
    """A randomly initialised encoder from `{model_type = "whisper", ...}` (decoder fields unused)."""
    cfg = dict(config)
    cfg.pop("model_type", None)
    return WhisperEncoder(WhisperConfig(**cfg))
