"""Export a trained model as the runtime's bundle (ONNX towers + tokenizer files + manifest)."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emoclap.audio import SAMPLE_RATE, read_mono
from emoclap.bundle import write_manifest
from emoclap.tokenizer import open_text_tokenizer
from trainer.config import ModelOptions, TowerOptions
from trainer.parity import ExportError, check_parity, check_piece_parity, check_tokenizer, parity_batches
from trainer.tokenization import write_runtime_tokenizer

FP32_MIN_COSINE = 0.9999
# 8-bit weights stay this close to fp32 on the parity clips or the export fails: the
# demo's Whisper-base piece graph gave 0.9989 on them and 0.9994 at worst on 48 corpus utterances.
INT8_WEIGHTS_MIN_COSINE = 0.995
OPSET = 18
# Besides the prompt sentences, the runtime tokenizer must match training on these:
# nothing, mixed scripts and widths, digits with commas, an emoji, and truncation.
TOKENIZER_PROBES = ["", "I want to BUY it, 1,000円で！ ＡＢＣ ｶﾀｶﾅ ｺｰﾋｰ 😀 [SEP] [MASK]です。",
                    "  Hello   world\t\n  ", "とても良いと思います。" * 40, "This is fine. " * 40]


class _AudioGraph(nn.Module):
    def __init__(self, model, frames: bool = False):
        super().__init__()
        self.model = model
        self.frames = frames

    def forward(self, waveform, lengths):
        if not self.frames:
            return self.model.encode_audio(waveform, lengths)
        # The transcriber reads the tower's frames: one encoder pass serves both paths.
        states, mask = self.model.audio_states(waveform, lengths)
        return self.model.audio_from_pooled(self.model.audio_pool.statistics(states, mask)), states[-1]


class _PieceGraph(nn.Module):
    """One piece of an utterance per row → its frame `count`, per layer the frames' `mean`
    and `variance`, and (with `frames`) the last layer's frames; a tower with absolute
    positions also takes each piece's `offsets` in its utterance (samples)."""

    def __init__(self, model, frames: bool = False):
        super().__init__()
        self.model = model
        self.frames = frames

    def forward(self, waveform, lengths, offsets=None):
        count, mean, variance, frames = self.model.audio_moments(waveform, lengths, offsets)
        return (count, mean, variance, frames) if self.frames else (count, mean, variance)


class _HeadGraph(nn.Module):
    """The merged `statistics` [batch, L, S] of an utterance's pieces → its `embedding`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, statistics):
        return self.model.audio_from_pooled(statistics)


class _TextGraph(nn.Module):
    """The shared-space `embedding`, and the tower's own `sentence` vector (unit length):
    the text path compares transcripts with prompt sentences there, where the pretrained
    text tower's sense of meaning is intact (the head learnt the training corpus's)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        pooled = self.model.text(input_ids, attention_mask)
        return self.model.text_from_pooled(pooled), torch.nn.functional.normalize(pooled.float(), dim=-1)


def _padded_example(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the second half padding, so that the masking path is what gets traced."""
    n = max(model.audio.min_samples * 4, 16000)
    return torch.randn(2, n) * 0.1, torch.tensor([n, n // 2])


def export_audio(model, path: Path, dynamo: bool = False, frames: bool = False) -> None:
    """`waveform` [batch, samples] + `lengths` [batch] → `embedding` [batch, D] (and, with
    `frames`, the tower's `frames` [batch, T, H], zero past each utterance's end).

    Traced on a padded batch so the masking path is what gets recorded. The legacy
    TorchScript exporter is the default: its graph ran faster in ONNX Runtime
    (bench/export_speed.py) and it exports in seconds instead of minutes.
    """
    example = _padded_example(model)
    axes = {"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}}
    if frames:
        axes["frames"] = {0: "batch", 1: "frames"}
    _export(_AudioGraph(model, frames), example, path, ["waveform", "lengths"], axes, dynamo,
            ["embedding", "frames"] if frames else ["embedding"])


def export_piece_graph(model, path: Path, frames: bool = False) -> tuple[str, ...]:
    """The piece graph (`_PieceGraph`); returns its inputs. Legacy exporter only: it is
    traced like `export_audio`'s. With a frozen tower it has nothing learnt in it, so the
    trainer's frozen pass runs it as well (trainer/features.py)."""
    example = _padded_example(model)
    n = example[0].shape[1]
    names = ["waveform", "lengths"]
    axes = {"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "count": {0: "batch"},
            "mean": {0: "batch"}, "variance": {0: "batch"}}
    if getattr(model.audio, "absolute_positions", False):
        example += (torch.tensor([0, model.opts.piece_samples or n // 2]),)
        names.append("offsets")
        axes["offsets"] = {0: "batch"}
    outputs = ["count", "mean", "variance"] + (["frames"] if frames else [])
    if frames:
        axes["frames"] = {0: "batch", 1: "frames"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_PieceGraph(model, frames).eval(), example, str(path), input_names=names,
                          output_names=outputs, dynamic_axes=axes, dynamo=False, opset_version=OPSET)
    return tuple(names)


def export_pieces(model, path: Path, head_path: Path, frames: bool = False) -> tuple[str, ...]:
    """The piece graph (`export_piece_graph`) and the head graph (`_HeadGraph`); returns the
    piece graph's inputs."""
    names = export_piece_graph(model, path, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = model.audio_statistics(*_padded_example(model)).detach()
        torch.onnx.export(_HeadGraph(model).eval(), (stats,), str(head_path), input_names=["statistics"],
                          output_names=["embedding"], dynamic_axes={"statistics": {0: "batch"}, "embedding": {0: "batch"}},
                          dynamo=False, opset_version=OPSET)
    return names


def export_text(model, tokenizer, path: Path, dynamo: bool = False) -> None:
    from trainer.tokenization import tokenize

    ids, mask = tokenize(tokenizer, ["a short one", "a somewhat longer example sentence here"])
    _export(_TextGraph(model), (ids, mask), path, ["input_ids", "attention_mask"],
            {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
             "sentence": {0: "batch"}}, dynamo, ["embedding", "sentence"])


def _export(module, example, path, names, axes, dynamo, outputs=("embedding",)):
    module.eval()
    outputs = list(outputs)
    axes = {**axes, "embedding": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {name: {i: torch.export.Dim(f"{name}_{a}") for i, a in spec.items()}
                    for name, spec in axes.items() if name != "embedding"}
            # Both inputs share the batch dimension.
            batch = torch.export.Dim("batch")
            shapes = {k: {i: (batch if i == 0 else d) for i, d in v.items()} for k, v in dims.items()}
            torch.onnx.export(module, example, str(path), input_names=names, output_names=outputs,
                              dynamic_shapes=[shapes[n] for n in names], dynamo=True, opset_version=OPSET,
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(module, example, str(path), input_names=names, output_names=outputs,
                              dynamic_axes=axes, dynamo=False, opset_version=OPSET)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 for matrix products only: quantised convolutions made HuBERT ~2× slower."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)


def quantize_weights_int8(src: Path, dst: Path) -> None:
    """8-bit weights in blocks of 32 along each product's input (ONNX Runtime's
    MatMulNBits, symmetric), activations quantised row by row when the product runs:
    no scale is shared across a batch, so a row's result does not depend on which rows
    share its call (dynamic int8's one scale over the batch does: it changed 1 of 12
    transcripts between alone and batched, and 3 of 12 against fp32; this, none)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line a node
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def espeak_clips(texts: list[str], voice: str = "en") -> list[np.ndarray]:
    """Real (synthesised) speech for parity checks."""
    if shutil.which("espeak-ng") is None:
        raise ExportError("espeak-ng is not installed: it speaks the parity-check clips "
                          "(install it, or pass --parity-audio with WAV files)")
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
            clips.append(read_mono(wav))
    return clips


def export_bundle(model, tokenizer, out: Path, *, languages: list[str], sources: dict, texts: list[str],
                  real_audio: list[np.ndarray], description: str = "", training: dict | None = None,
                  metrics: dict | None = None, int8: bool = False, dynamo: bool = False,
                  transcriber: bool = True, int8_transcriber: bool = False, int8_weights: bool = False) -> dict:
    """Write the bundle to `out` and verify it; raises ExportError when parity fails. With
    `transcriber` and an audio tower whose frames Whisper's decoder can read, the bundle
    reads words too (the text path). The audio encoder's matrix products are fp32, or
    `int8` (dynamic: one activation scale per call, so batch mates move each other) or
    `int8_weights` (8-bit weights, activations quantised row by row: batch-independent)."""
    from trainer.transcriber import transcriber_source

    if int8 and int8_weights:
        raise ExportError("the audio encoder is int8 or int8-weights, not both")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    decoder = transcriber_source(model) if transcriber else None
    audio_path, text_path = out / "audio_encoder.onnx", out / "text_encoder.onnx"
    head_path = out / "audio_head.onnx"
    piece_samples = int(model.opts.piece_samples)
    if piece_samples:
        export_pieces(model, audio_path, head_path, frames=decoder is not None)
    else:
        export_audio(model, audio_path, dynamo, frames=decoder is not None)
    export_text(model, tokenizer, text_path, dynamo)
    tokenizer_section = write_runtime_tokenizer(tokenizer, out)
    runtime = open_text_tokenizer(out, tokenizer_section, int(model.opts.max_tokens))
    check_tokenizer(tokenizer, runtime, texts + TOKENIZER_PROBES)
    batches = parity_batches(model, real_audio)
    if piece_samples:  # and long clips, so that parity covers utterances of several pieces
        batches.append([np.concatenate([c] * 4) for c in real_audio[:2]])
    fp32 = check_parity(model, tokenizer, None if piece_samples else audio_path, text_path, batches, texts, runtime)
    if piece_samples:
        fp32.audio_min_cosine = check_piece_parity(model, audio_path, head_path, batches)
    if min(fp32.audio_min_cosine, fp32.text_min_cosine) < FP32_MIN_COSINE:
        raise ExportError(f"{out}: ONNX does not reproduce the torch model: cosine audio "
                          f"{fp32.audio_min_cosine:.6f}, text {fp32.text_min_cosine:.6f} (need ≥ {FP32_MIN_COSINE})")
    parity = {"fp32": fp32.as_dict(), "tokenizer_sentences": len(texts) + len(TOKENIZER_PROBES)}
    precision = "fp32"
    if int8 or int8_weights:
        precision = "int8" if int8 else "int8-weights"
        fp32_copy = out / "audio_encoder.fp32.onnx.tmp"
        audio_path.rename(fp32_copy)
        (quantize_int8 if int8 else quantize_weights_int8)(fp32_copy, audio_path)
        fp32_copy.unlink()
        quantised = check_parity(model, tokenizer, None if piece_samples else audio_path, text_path, batches,
                                 texts, runtime)
        if piece_samples:
            quantised.audio_min_cosine = check_piece_parity(model, audio_path, head_path, batches)
        parity[precision] = quantised.as_dict()
        if int8_weights and quantised.audio_min_cosine < INT8_WEIGHTS_MIN_COSINE:
            raise ExportError(f"{out}: the audio encoder with 8-bit weights is too far from fp32: cosine "
                              f"{quantised.audio_min_cosine:.6f} (need ≥ {INT8_WEIGHTS_MIN_COSINE})")
    transcriber_section = None
    if decoder is not None:
        transcriber_section, parity["transcriber"] = _export_transcriber(model, decoder, languages[0], out, real_audio,
                                                                          int8_transcriber)
    fields = {
        "description": description,
        "sample_rate": SAMPLE_RATE,
        "embedding_dim": int(model.opts.embedding_dim),
        "logit_scale": model.zero_shot_scale(),
        "languages": list(languages),
        "audio_encoder": {"file": audio_path.name, "precision": precision,
                          "min_samples": int(model.audio.min_samples)},
        "text_encoder": {"file": text_path.name, "max_tokens": int(model.opts.max_tokens)},
        "tokenizer": tokenizer_section,
        "sources": sources,
        "training": training or {},
        "metrics": {**(metrics or {}), "export_parity": parity},
    }
    if transcriber_section is not None:
        fields["transcriber"] = transcriber_section
    if piece_samples:
        fields["audio_encoder"]["piece_samples"] = piece_samples
        fields["audio_head"] = {"file": head_path.name,
                                "statistics": "mean+std" if model.audio_pool.std else "mean"}
    return write_manifest(out, fields)


def _export_transcriber(model, decoder, language: str, out: Path, clips: list[np.ndarray],
                        int8: bool = False) -> tuple[dict, dict]:
    from trainer.transcriber import check_transcriber, export_transcriber, int8_agreement, tower_frames
    from trainer.whisper_sources import ct2_source
    from trainer.sources import resolve_source

    source = model.opts.audio.pretrained
    ct2 = ct2_source(source)
    tokenizer = ct2[0][0].parent / "tokenizer.json" if ct2 else Path(resolve_source(source)) / "tokenizer.json"
    if not tokenizer.is_file():
        raise ExportError(f"{source}: no tokenizer.json beside the Whisper weights, which the transcriber needs")
    section = export_transcriber(decoder, tokenizer, language, out)
    frames = tower_frames(model, clips)
    try:
        check = check_transcriber(decoder, section, out, frames)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if int8:
        # The fp32 graphs are checked against torch first; the int8 ones can only be
        # compared with them: where they read a word differently, the check reports it.
        for key in ("cross", "step"):
            fp32 = out / f"{section[key]}.fp32.tmp"
            (out / section[key]).rename(fp32)
            quantize_weights_int8(fp32, out / section[key])
            fp32.rename(out / f"{section[key]}.fp32")
        check["int8"] = int8_agreement(section, out, frames, {k: out / f"{section[k]}.fp32" for k in ("cross", "step")})
        for key in ("cross", "step"):
            (out / f"{section[key]}.fp32").unlink()
        section["precision"] = "int8"
    return section, check


def tower_sources(opts: ModelOptions) -> dict[str, str]:
    """The manifest's `sources`: each tower's pretrained id or folder, or its random init."""
    def name(tower: TowerOptions) -> str:
        return tower.pretrained or f"random init ({tower.config.get('model_type')})"

    return {"audio": name(opts.audio), "text": name(opts.text)}


def export_checkpoint(checkpoint: Path, out: Path, *, int8: bool = False, dynamo: bool = False,
                      parity_audio: list[Path] | None = None, description: str = "",
                      int8_transcriber: bool = False, int8_weights: bool = False) -> dict:
    from trainer.checkpoint import load_for_inference

    loaded = load_for_inference(checkpoint)
    cfg = loaded.config
    lang = cfg.train.language
    real = ([read_mono(p) for p in parity_audio] if parity_audio
            else espeak_clips(["I want to buy it.", "Hello, how can I help you today?",
                               "No, thank you. That is far too expensive for me."],
                              voice={"ja": "ja"}.get(lang, "en")))
    texts = [s for _, _, s in loaded.descriptions.all_sentences()][:16]
    return export_bundle(
        loaded.model, loaded.tokenizer, out, languages=[lang], sources=tower_sources(cfg.model),
        texts=texts, real_audio=real, description=description or f"emoclap model from {checkpoint}",
        training=loaded.training_summary, metrics=loaded.metrics, int8=int8, dynamo=dynamo,
        int8_transcriber=int8_transcriber, int8_weights=int8_weights)


def run(args: argparse.Namespace) -> int:
    try:
        manifest = export_checkpoint(args.checkpoint, args.out, int8=args.int8, dynamo=args.dynamo,
                                     parity_audio=args.parity_audio, description=args.description,
                                     int8_transcriber=args.int8_transcriber, int8_weights=args.int8_weights)
    except ExportError as exc:
        print(f"emoclap-train export: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"bundle": str(args.out), "export_parity": manifest["metrics"]["export_parity"]}, indent=2))
    return 0
