"""CTranslate2 Whisper models (what faster-whisper keeps on disk) as torch Whisper encoders.

A CTranslate2 model folder holds `model.bin` (every weight in one binary file) and
`config.json`. `read_model_bin` parses the binary; `whisper_encoder_state` and
`whisper_decoder_state` map its variables to Hugging Face `WhisperEncoder` and
`WhisperDecoder` names (CTranslate2 fuses the query, key and value projections of
self-attention into one matrix, and the key and value ones of cross-attention; Whisper's
key projections have no bias, so their part of a fused bias is zero).
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# CTranslate2's DataType enum (include/ctranslate2/types.h), in order of its ids.
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
# Versions whose variables carry a dtype id and a byte count (the binary format since CTranslate2 2.0).
_VERSIONS = range(4, 7)


class CT2Error(ValueError):
    """A file that is not a usable CTranslate2 Whisper model; the message names the file."""


@dataclass
class ModelBin:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # aliases resolved to the array they alias


def sha256_of(paths: list[Path]) -> str:
    """The sha256 of the files' concatenation (one file, or the parts of a split one)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


class _Reader:
    def __init__(self, data: bytes | memoryview, where: str):
        self.data, self.pos, self.where = memoryview(data), 0, where

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CT2Error(f"{self.where}: truncated at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")  # length including the terminating NUL
        return bytes(self.take(n))[:-1].decode("utf-8")


def read_model_bin(data: bytes, path: str) -> ModelBin:
    """Every variable of a CTranslate2 model.bin's bytes as a numpy array (bfloat16 as float32).

    The arrays are views into `data`."""
    r = _Reader(data, path)
    (version,) = r.unpack("I")
    if version not in _VERSIONS:
        raise CT2Error(f"{path}: CTranslate2 binary version {version} is not supported "
                       f"(supported: {_VERSIONS.start}–{_VERSIONS.stop - 1})")
    spec = r.string()
    (revision, count) = r.unpack("II")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = r.string()
        (rank,) = r.unpack("B")
        shape = r.unpack(f"{rank}I") if rank else ()
        type_id, nbytes = r.unpack("BI")
        if type_id >= len(_DTYPES):
            raise CT2Error(f"{path}: variable {name}: unknown dtype id {type_id}")
        raw = r.take(nbytes)
        dtype = _DTYPES[type_id]
        if dtype == "bfloat16":  # numpy has none: the upper half of a float32
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype)
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2Error(f"{path}: variable {name}: {nbytes} bytes do not fit shape {shape} of {dtype}")
        variables[name] = arr.reshape(shape)
    (n_aliases,) = r.unpack("I")
    for _ in range(n_aliases):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise CT2Error(f"{path}: alias {alias} names a missing variable {target}")
        variables[alias] = variables[target]
    return ModelBin(spec, revision, variables)


def _weight(v: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A weight as float32, undoing CTranslate2's int8/int16 quantisation (value × scale)."""
    w = v[name].astype(np.float32)
    scale = v.get(name + "_scale")
    if scale is not None:
        s = scale.astype(np.float32)
        w = w / (s.reshape(-1, *([1] * (w.ndim - 1))) if s.ndim else s)
    return w


def whisper_dims(model: ModelBin, where: str) -> dict[str, int]:
    """The Hugging Face WhisperConfig fields that the weights' shapes determine."""
    v = model.variables
    if model.spec != "WhisperSpec":
        raise CT2Error(f"{where}: a CTranslate2 {model.spec}, not a Whisper model")

    def layers(prefix: str) -> int:
        return len({m.group(1) for k in v if (m := re.match(rf"{prefix}/layer_(\d+)/", k))})

    conv1 = v["encoder/conv1/weight"]
    return {
        "d_model": int(conv1.shape[0]), "num_mel_bins": int(conv1.shape[1]),
        "encoder_layers": layers("encoder"), "encoder_attention_heads": int(v["encoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "decoder_layers": layers("decoder"), "decoder_attention_heads": int(v["decoder/num_heads"]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "vocab_size": int(v["decoder/embeddings/weight"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
    }


def _split(v: dict[str, np.ndarray], name: str, parts: tuple[str, ...], d: int, where: str) -> dict[str, np.ndarray]:
    """A fused projection (`parts` stacked along the output axis) as one weight (and bias) per part."""
    w, b = _weight(v, f"{name}/weight"), _weight(v, f"{name}/bias")
    if w.shape != (len(parts) * d, d):
        raise CT2Error(f"{where}: {name}/weight has shape {w.shape}, expected {(len(parts) * d, d)}")
    out = {}
    for j, proj in enumerate(parts):
        out[f"{proj}.weight"] = w[j * d:(j + 1) * d]
        if proj != "k_proj":
            out[f"{proj}.bias"] = b[j * d:(j + 1) * d]
    return out


def _layer_state(v: dict[str, np.ndarray], src: str, dst: str, pairs: dict[str, str],
                 norms: dict[str, str]) -> dict[str, np.ndarray]:
    state = {}
    for hf, ct in pairs.items():
        state[f"{dst}.{hf}.weight"] = _weight(v, f"{src}/{ct}/weight")
        state[f"{dst}.{hf}.bias"] = _weight(v, f"{src}/{ct}/bias")
    for hf, ct in norms.items():
        state[f"{dst}.{hf}.weight"] = _weight(v, f"{src}/{ct}/gamma")
        state[f"{dst}.{hf}.bias"] = _weight(v, f"{src}/{ct}/beta")
    return state


def whisper_decoder_state(model: ModelBin, where: str) -> dict[str, np.ndarray]:
    """The decoder's weights under Hugging Face `WhisperDecoder` names, float32 (the output
    projection is the token embedding, tied, as in Whisper)."""
    v = model.variables
    dims = whisper_dims(model, where)
    d = dims["d_model"]
    state = {
        "embed_tokens.weight": _weight(v, "decoder/embeddings/weight"),
        "embed_positions.weight": _weight(v, "decoder/position_encodings/encodings"),
        "layer_norm.weight": _weight(v, "decoder/layer_norm/gamma"),
        "layer_norm.bias": _weight(v, "decoder/layer_norm/beta"),
    }
    for i in range(dims["decoder_layers"]):
        src, dst = f"decoder/layer_{i}", f"layers.{i}"
        for k, w in _split(v, f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"), d, where).items():
            state[f"{dst}.self_attn.{k}"] = w
        for k, w in _split(v, f"{src}/attention/linear_1", ("k_proj", "v_proj"), d, where).items():
            state[f"{dst}.encoder_attn.{k}"] = w
        state.update(_layer_state(
            v, src, dst,
            {"self_attn.out_proj": "self_attention/linear_1", "encoder_attn.q_proj": "attention/linear_0",
             "encoder_attn.out_proj": "attention/linear_2", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"},
            {"self_attn_layer_norm": "self_attention/layer_norm", "encoder_attn_layer_norm": "attention/layer_norm",
             "final_layer_norm": "ffn/layer_norm"}))
    return state


def whisper_encoder_state(model: ModelBin, where: str) -> dict[str, np.ndarray]:
    """The encoder's weights under Hugging Face `WhisperEncoder` names, float32."""
    v = model.variables
    dims = whisper_dims(model, where)
    d = dims["d_model"]
    state = {
        "conv1.weight": _weight(v, "encoder/conv1/weight"), "conv1.bias": _weight(v, "encoder/conv1/bias"),
        "conv2.weight": _weight(v, "encoder/conv2/weight"), "conv2.bias": _weight(v, "encoder/conv2/bias"),
        "embed_positions.weight": _weight(v, "encoder/position_encodings/encodings"),
        "layer_norm.weight": _weight(v, "encoder/layer_norm/gamma"),
        "layer_norm.bias": _weight(v, "encoder/layer_norm/beta"),
    }
    for i in range(dims["encoder_layers"]):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        for k, w in _split(v, f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"), d, where).items():
            state[f"{dst}.self_attn.{k}"] = w
        state.update(_layer_state(
            v, src, dst,
            {"self_attn.out_proj": "self_attention/linear_1", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"},
            {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}))
    return state
