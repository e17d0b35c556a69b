"""The pinned CTranslate2 Whisper models against CTranslate2 itself.

    pip install ctranslate2          # only for this check; emoclap never needs it
    python bench/whisper_check.py [--write-refs]

For each pinned model (trainer/whisper_sources.py): joins and hashes model.bin, has
CTranslate2 transcribe an espeak-ng sentence from it (the parts were joined right),
and compares the encoder converted to torch with CTranslate2's `encode` on the same
log-mel features: espeak-ng speech padded to 30 s (Whisper's own input), the same
speech unpadded (CTranslate2 also cuts the positional embeddings to the input), and
the reference input that the conversion checks against. The decoder converted to torch
(the Japanese text tower, trainer/whisper_text.py) is compared with CTranslate2's
next-token logits for a sentence prefix on that input. `--write-refs` stores
CTranslate2's outputs on the reference input in trainer/whisper_refs/.
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
from trainer.whisper_text import centred, ct2_decoder, decoder_logits  # noqa: E402

SENTENCE = "The weather is lovely today, so we will walk to the market."
DECODER_PREFIX = {"ja": "私の気持ちは", "en": "I feel"}


def decoder_reference(model, tok: Tokenizer, features: torch.Tensor, english_only: bool):
    """CTranslate2's next-token logits while it reads a prefix and decodes 6 tokens
    (`return_logits_vocab` returns them before the softmax):
    (all token ids, the rows of our log-probabilities they match, the rows)."""
    import ctranslate2

    lang = "en" if english_only else "ja"
    specials = (["<|startoftranscript|>", "<|notimestamps|>"] if english_only
                else ["<|startoftranscript|>", f"<|{lang}|>", "<|transcribe|>", "<|notimestamps|>"])
    prompt = [tok.token_to_id(t) for t in specials] + tok.encode(DECODER_PREFIX[lang], add_special_tokens=False).ids
    n_special = len(specials)
    result = model.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt], beam_size=1,
                            max_length=len(prompt) + 6, return_logits_vocab=True, suppress_blank=False,
                            suppress_tokens=[])[0]
    sequence = result.sequences_ids[0]  # the prompt's text tokens, then what was decoded
    logits = np.array(result.logits[0]).reshape(len(sequence), -1)
    ids = prompt[:n_special] + sequence
    rows = np.arange(n_special - 1, n_special - 1 + len(sequence))
    return ids, rows, logits


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
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids, rows, ref_logits = decoder_reference(model, tok, ref_in, english_only)
    decoder = ct2_decoder(files, name, expected=PINNED[name].sha256)
    with torch.no_grad():
        states = encoder(ref_in).last_hidden_state
    ours = decoder_logits(decoder, states, ids)[rows]
    print(f"  decoder, {tok.decode(ids[len(ids) - len(rows):])!r} on the reference input: "
          f"max |logit diff| {np.abs(centred(ours) - centred(ref_logits)).max():.2e} "
          f"(values up to {np.abs(centred(ref_logits)).max():.1f}), same argmax in "
          f"{int((ours.argmax(1) == ref_logits.argmax(1)).sum())}/{len(rows)} positions")
    if write_refs:
        REFERENCES.mkdir(exist_ok=True)
        path = REFERENCES / f"{sha[:16]}.npz"
        np.savez_compressed(path, frames=ref[0, list(REFERENCE_FRAMES)].astype(np.float32))
        print(f"  wrote {path.relative_to(REPO)}")
        # The 32 likeliest tokens of each position and every 97th: a few KB, not 51865 x rows.
        vocab = np.union1d(np.argsort(-ref_logits, 1)[:, :32].ravel(), np.arange(0, ref_logits.shape[1], 97))
        path = REFERENCES / f"{sha[:16]}-decoder.npz"
        np.savez_compressed(path, ids=np.array(ids), rows=rows, vocab=vocab,
                            logits=ref_logits[:, vocab].astype(np.float32))
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
