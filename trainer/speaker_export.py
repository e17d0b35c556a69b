"""The speaker encoder for staff recognition: resemblyzer's GE2E weights → ONNX.

resemblyzer 0.1.4 (Apache-2.0) ships `pretrained.pt` inside its wheel. Only that file is
taken (the package itself needs librosa and the webrtcvad sdist), checked against a
pinned sha256, and run through the same network (3-layer LSTM 256 on 40 mel channels,
linear 256, ReLU, L2 norm), exported with torch once, offline. The daemon then needs
ONNX Runtime only; the mel front end is `emoclap.voiceprint`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emoclap import voiceprint
from emoclap.bundle import sha256_file as sha256

RESEMBLYZER = "resemblyzer==0.1.4"
WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
WEIGHTS_CACHE = Path("var/resemblyzer/pretrained.pt")
ONNX_NAME = "speaker_encoder.onnx"
OPSET = 17


class SpeakerExportError(RuntimeError):
    pass


def fetch_weights(cache: Path = WEIGHTS_CACHE) -> Path:
    """pretrained.pt from the resemblyzer wheel (pip, no dependencies), sha256-checked."""
    cache = Path(cache)
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                   "-d", tmp, RESEMBLYZER], capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode or not wheels:
                raise SpeakerExportError(f"cannot download {RESEMBLYZER}: {done.stderr.strip()[-500:]}")
            with zipfile.ZipFile(wheels[0]) as zf:
                part = cache.with_suffix(".part")
                part.write_bytes(zf.read("resemblyzer/pretrained.pt"))
                part.replace(cache)
    if sha256(cache) != WEIGHTS_SHA256:
        raise SpeakerExportError(f"{cache}: sha256 is not the pinned one of {RESEMBLYZER}'s pretrained.pt")
    return cache


class GE2E(nn.Module):
    """resemblyzer's VoiceEncoder network: [batch, 160, 40] mel → [batch, 256] unit vectors."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(voiceprint.N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        return raw / torch.norm(raw, dim=1, keepdim=True)


def load_model(weights: Path) -> GE2E:
    state = torch.load(weights, map_location="cpu", weights_only=True)["model_state"]
    model = GE2E()
    # The checkpoint also holds the GE2E loss's similarity scale and bias, unused here.
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
    return model.eval()


def parity_inputs(seed: int = 0) -> np.ndarray:
    """Mel partials of tones and noise at speech-like levels (no speech tools needed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(2.5 * voiceprint.SAMPLE_RATE)) / voiceprint.SAMPLE_RATE
    wav = (0.05 * np.sin(2 * np.pi * 180 * t * (1 + 0.1 * np.sin(3 * t)))
           + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    return voiceprint.partials(wav)


def export(out: Path, weights: Path | None = None) -> dict:
    """Write `speaker_encoder.onnx` and `manifest.json` into `out`; returns the manifest."""
    import onnxruntime as ort

    weights = fetch_weights() if weights is None else Path(weights)
    if sha256(weights) != WEIGHTS_SHA256:
        raise SpeakerExportError(f"{weights}: sha256 is not the pinned one of {RESEMBLYZER}'s pretrained.pt")
    model = load_model(weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_NAME
    example = torch.from_numpy(parity_inputs())
    # The tracer warns about the LSTM's shape checks and batch size; parity below is the check.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["mels"], output_names=["embedding"],
                          dynamic_axes={"mels": {0: "batch"}, "embedding": {0: "batch"}},
                          dynamo=False, opset_version=OPSET)
        probe = torch.from_numpy(np.concatenate([parity_inputs(1), parity_inputs(2)]))
        want = model(probe).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"mels": probe.numpy()})[0]
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        raise SpeakerExportError(f"ONNX and torch disagree by {diff:.2e}")
    manifest = {"kind": "ge2e-speaker-encoder", "source": RESEMBLYZER, "license": "Apache-2.0",
                "weights_sha256": WEIGHTS_SHA256, "onnx": ONNX_NAME, "onnx_sha256": sha256(path),
                "sample_rate": voiceprint.SAMPLE_RATE, "n_mels": voiceprint.N_MELS,
                "partial_frames": voiceprint.PARTIAL_FRAMES, "dim": 256, "parity_max_abs": diff}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def run(args) -> int:
    try:
        manifest = export(args.out, args.weights)
    except SpeakerExportError as exc:
        print(f"emoclap-train export-speaker: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / ONNX_NAME} (ONNX vs torch max diff {manifest['parity_max_abs']:.1e})")
    return 0
