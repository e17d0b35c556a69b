"""Whisper's decoder exported as the bundle's transcriber: two ONNX graphs that greedy
decoding (emoclap.transcript) drives, fed the audio tower's own frames.

- `transcriber_cross.onnx`: frames [B, T, D] → the cross-attention keys and values of
  every layer, computed once per utterance;
- `transcriber_step.onnx`: new tokens, the frames' validity, the self-attention cache and
  the cross keys/values → the last token's logits and the grown cache.

The graphs are the Hugging Face `WhisperDecoder`'s own weights rearranged for a key-value
cache; `check_transcriber` holds the exported graphs' greedy transcripts and logits to
the Hugging Face decoder's. Shared frames are only right when the audio tower is
Whisper's encoder as pretrained (frozen): `transcriber_source` says whether a model has one.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperDecoder

from emoclap.decoding import STEP_INPUTS, Decoding, session_decoding
from emoclap.transcript import DecodingSpec, encoder_frames, spec_section

log = logging.getLogger("emoclap.transcriber")
OPSET = 18
MAX_TOKENS, TOKENS_PER_SECOND, BASE_TOKENS = 96, 6.0, 6
MAX_LOGIT_ERROR = 2e-3


class CrossGraph(nn.Module):
    def __init__(self, decoder: WhisperDecoder):
        super().__init__()
        self.decoder = decoder
        cfg = decoder.config
        self.heads, self.head_dim = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        att = [layer.encoder_attn for layer in self.decoder.layers]
        k = torch.stack([self.split(a.k_proj(frames)) for a in att])
        v = torch.stack([self.split(a.v_proj(frames)) for a in att])
        return k, v


class StepGraph(CrossGraph):
    def __init__(self, decoder: WhisperDecoder):
        super().__init__(decoder)
        # One [D, V] matrix serves the token lookup and the logits: the exporter folds any
        # transpose of a weight into a second copy (100 MB for Whisper-base).
        # (A parameter, not a buffer: the exporter writes a buffer as a constant at each use.)
        self.vocab = nn.Parameter(decoder.embed_tokens.weight.detach().T.contiguous(), requires_grad=False)

    def attend(self, q, k, v, bias):
        w = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)
        out = (w @ v).transpose(1, 2)
        return out.reshape(out.shape[0], out.shape[1], -1)

    def forward(self, tokens, positions, past_mask, frame_mask, past_k, past_v, cross_k, cross_v):
        dec = self.decoder
        new = tokens.shape[1]
        looked_up = torch.index_select(self.vocab, 1, tokens.reshape(-1)).T.reshape(tokens.shape[0], new, -1)
        # Each row at its own position: rows that started at different steps share a batch.
        at = positions[:, None] + torch.arange(new)[None, :]
        x = looked_up * dec.embed_scale + nn.functional.embedding(at, dec.embed_positions.weight)
        # A row sees the cache columns it has tokens in, and the new tokens causally.
        causal = torch.triu(torch.ones(new, new), diagonal=1)
        hidden = torch.cat([(1.0 - past_mask)[:, None, :].expand(-1, new, -1),
                            causal[None].expand(tokens.shape[0], -1, -1)], 2)
        self_bias = hidden[:, None].to(x.dtype) * torch.finfo(x.dtype).min
        cross_bias = (1.0 - frame_mask.to(x.dtype))[:, None, None, :] * torch.finfo(x.dtype).min
        ks, vs = [], []
        for i, layer in enumerate(dec.layers):
            a = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            k = torch.cat([past_k[i], self.split(a.k_proj(h))], 2)
            v = torch.cat([past_v[i], self.split(a.v_proj(h))], 2)
            ks.append(k)
            vs.append(v)
            x = x + a.out_proj(self.attend(self.split(a.q_proj(h)) * a.scaling, k, v, self_bias))
            c = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            x = x + c.out_proj(self.attend(self.split(c.q_proj(h)) * c.scaling, cross_k[i], cross_v[i], cross_bias))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        last = dec.layer_norm(x[:, -1])
        return last @ self.vocab, torch.stack(ks), torch.stack(vs)


def transcriber_source(model) -> WhisperDecoder | None:
    """The decoder that goes with the model's audio tower, when its frames can be shared:
    the tower is Whisper's encoder, frozen, from a source that has a decoder and a tokenizer."""
    from trainer.whisper import WhisperTower

    opts = model.opts.audio
    if not isinstance(model.audio, WhisperTower) or opts.pretrained is None:
        return None
    if any(p.requires_grad for p in model.audio.parameters()) or opts.trainable:
        log.info("no transcriber: the audio tower was trained, so its frames are not Whisper's")
        return None
    from trainer.config import TowerOptions
    from trainer.whisper_text import load_whisper_text

    from trainer.whisper_sources import ct2_source

    # A CTranslate2 source converts its decoder alone; a Hugging Face one loads the whole model.
    weights = ct2_source(opts.pretrained) is None
    return load_whisper_text(TowerOptions(pretrained=opts.pretrained, trainable=False), weights=weights).decoder


def decoding_spec(decoder: WhisperDecoder, tokenizer, language: str) -> DecodingSpec:
    cfg = decoder.config
    ids = [tokenizer.token_to_id(t) for t in
           ("<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>")]
    eot = tokenizer.token_to_id("<|endoftext|>")
    if None in ids or eot is None:
        raise ValueError(f"the Whisper tokenizer has no transcription prompt for language {language!r}")
    # English-only models (a vocabulary one token smaller) were trained on
    # <|startoftranscript|><|notimestamps|> alone: no language or task token.
    multilingual = cfg.vocab_size >= 51865
    prompt = ids if multilingual else [ids[0], ids[3]]
    blank = [i for i in (tokenizer.token_to_id("Ġ"),) if i is not None]
    return DecodingSpec(prompt=tuple(prompt), eot=eot, blank=tuple(blank), max_tokens=MAX_TOKENS,
                        tokens_per_second=TOKENS_PER_SECOND, base_tokens=BASE_TOKENS,
                        layers=cfg.decoder_layers, heads=cfg.decoder_attention_heads,
                        head_dim=cfg.d_model // cfg.decoder_attention_heads)


def torch_decoding(step: StepGraph, spec: DecodingSpec) -> Decoding:
    """A `Decoding` running the graphs in torch (the reference the export is held to)."""
    def cross(frames):
        with torch.no_grad():
            k, v = CrossGraph.forward(step, torch.from_numpy(frames))
        return k.numpy(), v.numpy()

    def run(feeds):
        with torch.no_grad():
            logits, k, v = step(*(torch.from_numpy(np.asarray(feeds[name])) for name in STEP_INPUTS))
        return logits.numpy(), k.numpy(), v.numpy()
    return Decoding(spec, cross, run)


def export_transcriber(decoder: WhisperDecoder, tokenizer_json: Path, language: str, out: Path) -> dict:
    """Write the two graphs and Whisper's tokenizer into `out`; returns the manifest section."""
    from tokenizers import Tokenizer

    decoder = decoder.float().eval()
    tok = Tokenizer.from_file(str(tokenizer_json))
    spec = decoding_spec(decoder, tok, language)
    step = StepGraph(decoder).eval()
    d, l, h, hd = decoder.config.d_model, spec.layers, spec.heads, spec.head_dim
    frames = torch.randn(2, 7, d)
    mask = torch.tensor([[1.0] * 7, [1.0] * 4 + [0.0] * 3])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(CrossGraph(decoder).eval(), (frames,), str(out / "transcriber_cross.onnx"),
                          input_names=["frames"], output_names=["cross_k", "cross_v"], opset_version=OPSET,
                          dynamic_axes={"frames": {0: "batch", 1: "frames"}, "cross_k": {1: "batch", 3: "frames"},
                                        "cross_v": {1: "batch", 3: "frames"}}, dynamo=False)
        ck, cv = CrossGraph.forward(step, frames)
        past = torch.randn(l, 2, h, 3, hd)
        cache = {1: "batch", 3: "past"}
        positions, past_mask = torch.tensor([3, 1]), torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
        torch.onnx.export(step, (torch.tensor([[1, 2], [3, 4]]), positions, past_mask, mask, past, past.clone(), ck, cv),
                          str(out / "transcriber_step.onnx"),
                          input_names=list(STEP_INPUTS),
                          output_names=["logits", "next_k", "next_v"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"tokens": {0: "batch", 1: "new"}, "positions": {0: "batch"},
                                        "past_mask": {0: "batch", 1: "past"}, "frame_mask": {0: "batch", 1: "frames"},
                                        "past_k": cache, "past_v": cache, "cross_k": {1: "batch", 3: "frames"},
                                        "cross_v": {1: "batch", 3: "frames"}, "logits": {0: "batch"},
                                        "next_k": {1: "batch", 3: "total"}, "next_v": {1: "batch", 3: "total"}})
    shutil.copyfile(tokenizer_json, out / "transcriber_tokenizer.json")
    return {"cross": "transcriber_cross.onnx", "step": "transcriber_step.onnx",
            "tokenizer": "transcriber_tokenizer.json", "language": language, "shares_audio_pass": True,
            **spec_section(spec)}


def check_transcriber(decoder: WhisperDecoder, section: dict, out: Path, frames: list[np.ndarray]) -> dict:
    """The exported graphs against torch on real frames: each utterance alone, all in one
    batch, and half of them joining the other half's batch three steps in must give torch's
    tokens, and first-step logits within MAX_LOGIT_ERROR. Raises ValueError."""
    from emoclap.transcript import parse_spec
    from trainer.bundle_towers import cpu_session

    spec = parse_spec(section, str(out))
    reference = torch_decoding(StepGraph(decoder.float().eval()).eval(), spec)
    cross_graph, step_graph = cpu_session(out / section["cross"]), cpu_session(out / section["step"])
    exported = session_decoding(cross_graph, step_graph, spec)
    budgets = [spec.max_tokens] * len(frames)
    together = exported.decode(frames, budgets)
    joined = dict(exported.admit(list(range(len(frames) // 2)), frames[:len(frames) // 2], budgets))
    for _ in range(3):
        joined.update(exported.step())
    joined.update(exported.admit(list(range(len(frames) // 2, len(frames))), frames[len(frames) // 2:], budgets))
    while len(exported):
        joined.update(exported.step())
    worst = 0.0
    for i, f in enumerate(frames):
        ref = reference.decode([f], [spec.max_tokens])[0]
        got = exported.decode([f], [spec.max_tokens])[0]
        if not got == ref == together[i] == joined[i]:
            raise ValueError(f"{out}: the exported transcriber decodes clip {i} as {got[:12]} (batched "
                             f"{together[i][:12]}, joining a batch {joined[i][:12]}), torch as {ref[:12]}")
        worst = max(worst, float(np.abs(reference.first_logits([f]) - exported.first_logits([f])).max()))
    if worst > MAX_LOGIT_ERROR:
        raise ValueError(f"{out}: the exported transcriber's logits differ from torch's by {worst:.2e}")
    return {"clips": len(frames), "max_logit_error": round(worst, 7)}


def int8_agreement(section: dict, out: Path, frames: list[np.ndarray], fp32: dict[str, Path]) -> dict:
    """The int8 graphs against the fp32 ones on the same frames: how many clips decode to the
    same tokens, and the largest first-step logit difference."""
    from emoclap.transcript import parse_spec
    from trainer.bundle_towers import cpu_session

    spec = parse_spec(section, str(out))
    quantised, reference = (session_decoding(*(cpu_session(paths[k]) for k in ("cross", "step")), spec)
                            for paths in ({k: out / section[k] for k in ("cross", "step")}, fp32))
    same, worst = 0, 0.0
    for f in frames:
        same += quantised.decode([f], [spec.max_tokens]) == reference.decode([f], [spec.max_tokens])
        worst = max(worst, float(np.abs(quantised.first_logits([f]) - reference.first_logits([f])).max()))
    return {"clips": len(frames), "same_tokens": same, "max_logit_difference": round(worst, 4)}


def tower_frames(model, clips: list[np.ndarray]) -> list[np.ndarray]:
    """The audio tower's frames of each clip alone, its valid ones only."""
    with torch.no_grad():
        return [model.audio(torch.from_numpy(c)[None], torch.tensor([c.size]))[0][0, :encoder_frames(c.size)].numpy()
                for c in clips]
