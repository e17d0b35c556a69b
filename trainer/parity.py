"""Does an exported bundle reproduce the torch model? ONNX Runtime against torch on real
and random audio, alone and in mixed padded batches (and, for a bundle in pieces, the
runtime's cut and merge), and the bundle's tokenizer against training's."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emoclap.audio import pad_batch
from emoclap.tokenizer import TextTokenizer


class ExportError(RuntimeError):
    """The exported model does not reproduce the torch model."""


def parity_batches(model, real: list[np.ndarray], seed: int = 0) -> list[list[np.ndarray]]:
    """Real clips and random noise of several lengths, alone and in mixed batches."""
    rng = np.random.default_rng(seed)
    lo = model.audio.min_samples
    noise = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (lo, lo + 1, 3200, 16000, 40000)]
    return ([[c] for c in real[:2]] + [[c] for c in noise[:3]] + [real, noise, real[:2] + noise[::-1]])


@dataclass
class Parity:
    audio_min_cosine: float
    text_min_cosine: float
    clips: int

    def as_dict(self):
        return {"audio_min_cosine": round(self.audio_min_cosine, 7),
                "text_min_cosine": round(self.text_min_cosine, 7), "clips": self.clips}


def check_tokenizer(tokenizer, runtime: TextTokenizer, texts: list[str]) -> None:
    """The bundle's tokenizer (emoclap.tokenizer, as the daemon runs it) must give the ids
    and masks the model was trained with."""
    from trainer.tokenization import tokenize

    for text in texts:
        ids, mask = tokenize(tokenizer, [text])
        got_ids, got_mask = runtime.encode_batch([text])
        if ids.tolist() != got_ids.tolist() or mask.tolist() != got_mask.tolist():
            raise ExportError(f"the bundle's {runtime.kind} tokenizer does not reproduce training on "
                              f"{text[:60]!r}: ids {got_ids.tolist()[0][:24]} instead of {ids.tolist()[0][:24]}")


def check_parity(model, tokenizer, audio_onnx: Path | None, text_onnx: Path, batches: list[list[np.ndarray]],
                 texts: list[str], runtime: TextTokenizer | None = None) -> Parity:
    """Minimum cosine between ONNX Runtime and torch embeddings; torch runs each clip alone,
    and the ONNX text tower gets the ids of the `runtime` tokenizer when given."""
    import onnxruntime as ort
    from trainer.tokenization import tokenize

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    worst, count = 1.0, sum(map(len, batches))
    # A piece-encoded bundle's audio path is checked by `check_piece_parity` (None here).
    audio = None if audio_onnx is None else ort.InferenceSession(str(audio_onnx), opts,
                                                                 providers=["CPUExecutionProvider"])
    model.eval()
    with torch.no_grad():
        for clips in batches if audio is not None else []:
            wave, lengths = pad_batch(clips)
            got = audio.run(["embedding"], {"waveform": wave, "lengths": lengths})[0]
            for i, c in enumerate(clips):
                ref = model.encode_audio(torch.from_numpy(c)[None], torch.tensor([len(c)])).numpy()[0]
                cos = float(np.dot(got[i], ref) / (np.linalg.norm(got[i]) * np.linalg.norm(ref)))
                worst = min(worst, cos)
        text = ort.InferenceSession(str(text_onnx), opts, providers=["CPUExecutionProvider"])
        ids, mask = tokenize(tokenizer, texts)
        run_ids, run_mask = runtime.encode_batch(texts) if runtime else (ids.numpy(), mask.numpy())
        got = text.run(["embedding"], {"input_ids": run_ids, "attention_mask": run_mask})[0]
        ref = model.encode_text(ids, mask).numpy()
        text_worst = float(np.min(np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))))
    return Parity(worst, text_worst, count)


def check_piece_parity(model, piece_onnx: Path, head_onnx: Path, batches: list[list[np.ndarray]]) -> float:
    """Minimum cosine between the runtime's piece path (emoclap.pieces over the two graphs)
    and torch's `encode_audio`, which cuts and merges the same pieces."""
    import onnxruntime as ort

    from emoclap import pieces

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    piece = ort.InferenceSession(str(piece_onnx), opts, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(head_onnx), opts, providers=["CPUExecutionProvider"])
    spec = pieces.PieceSpec(model.opts.piece_samples, int(model.audio.min_samples), model.audio_pool.std,
                            "offsets" in [i.name for i in piece.get_inputs()])
    run, run_head = pieces.session_runs(piece, head)
    worst = 1.0
    model.eval()
    with torch.no_grad():
        for clips in batches:
            got, _ = pieces.encode_utterances(clips, spec, run, run_head, 16)
            for i, c in enumerate(clips):
                ref = model.encode_audio(torch.from_numpy(c)[None], torch.tensor([len(c)])).numpy()[0]
                worst = min(worst, float(np.dot(got[i], ref) / (np.linalg.norm(got[i]) * np.linalg.norm(ref))))
    return worst
