"""The pinned CTranslate2 Whisper models against CTranslate2 itself.

    pip install ctranslate2          # only for this check; emoclap never needs it
    python bench/whisper_check.py [--write-refs]

For each pinned model (trainer/whisper_sources.py): joins and hashes model.bin, has
CTranslate2 transcribe an espeak-ng sentence from it (the parts were joined right),
and compares the encoder converted to torch with CTranslate2's `encode` on the same
log-mel features: espeak-ng speech padded to 30 s (Whisper's own input), the same
speech unpadded (CTranslate2 also cuts the positional embeddings to the input), and
the reference input that the conversion checks against. `--write-refs` stores
CTranslate2's output on that reference input in trainer/whisper_refs/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from trainer.ct2 import sha256_of  # noqa: E402
from trainer.export import espeak_clips  # noqa: E402
from trainer.whisper import LogMel, WhisperTower  # noqa: E402
from trainer.whisper_sources import (PINNED, REFERENCE_FRAMES, REFERENCES, ct2_encoder, ct2_reference,  # noqa: E402
                                     pinned_files, reference_input, torch_reference)

SENTENCE = "The weather is lovely today, so we will walk to the market."


def compare(ours: np.ndarray, ref: np.ndarray) -> str:
    cos = np.sum(ours * ref, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    return (f"max |diff| {np.abs(ours - ref).max():.2e} (values up to {np.abs(ref).max():.1f}), "
            f"min cosine {cos.min():.7f}")


def check(name: str, workdir: Path, write_refs: bool) -> None:
    import ctranslate2

    files = pinned_files(name)
    sha = sha256_of(files)
    print(f"\n{name}: model.bin from {len(files)} part(s), sha256 {sha} "
          f"({'matches the pin' if sha == PINNED[name].sha256 else 'DOES NOT MATCH ' + PINNED[name].sha256})")
    folder = workdir / name
    folder.mkdir()
    with open(folder / "model.bin", "wb") as out:
        for f in files:
            out.write(f.read_bytes())
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(files[0].parent / extra, folder / extra)
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    n_mels = model.n_mels
    clip = espeak_clips([SENTENCE])[0]
    padded = np.zeros(480000, np.float32)
    padded[: len(clip)] = clip
    features = LogMel(n_mels)(torch.from_numpy(padded)[None], torch.tensor([len(padded)]))[0]
    english_only = not json.loads((folder / "config.json").read_text()).get("lang_ids")
    prompt = (["<|startoftranscript|>", "<|notimestamps|>"] if english_only
              else ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    result = model.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt], beam_size=1)
    text = Tokenizer.from_file(str(folder / "tokenizer.json")).decode(result[0].sequences_ids[0])
    print(f"  espeak-ng said {SENTENCE!r}; CTranslate2 heard {text.strip()!r}")

    encoder = ct2_encoder(files, name, expected=PINNED[name].sha256)
    frames = len(clip) // 160
    print("  encoder, 30-s input:  " + compare(torch_reference(encoder, features), ct2_reference(folder, features)))
    short = features[..., :frames]
    with torch.no_grad():
        ours = WhisperTower(encoder).eval()(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))[0].numpy()
    print(f"  encoder, unpadded ({frames} mel frames, from the waveform): "
          + compare(ours, ct2_reference(folder, short)))
    ref_in = reference_input(n_mels)
    ref = ct2_reference(folder, ref_in)
    print("  encoder, reference input: " + compare(torch_reference(encoder, ref_in), ref))
    if write_refs:
        REFERENCES.mkdir(exist_ok=True)
        path = REFERENCES / f"{sha[:16]}.npz"
        np.savez_compressed(path, frames=ref[0, list(REFERENCE_FRAMES)].astype(np.float32))
        print(f"  wrote {path.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-refs", action="store_true", help="store CTranslate2's reference outputs")
    parser.add_argument("--model", choices=sorted(PINNED), action="append", help="default: all pinned models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EMOCLAP_WHISPER_CACHE"] = str(Path(tmp) / "cache")  # convert afresh
        for name in args.model or sorted(PINNED):
            check(name, Path(tmp), args.write_refs)


if __name__ == "__main__":
    main()
