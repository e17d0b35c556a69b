"""How a bundle does on speech the project never trains on: other espeak-ng voices and
accents, sentences of its own, exaggerated eager buyers against reluctant non-buyers
(purchase intention) and excited against tired speakers (arousal), clean and with
noise and room tone. Prints AUC per emotion and condition for each bundle given.

    python bench/heldout_check.py data/demo-bundle [other-bundle ...]

AUC 0.5 is chance. The voices (accents and variants) and the sentences below appear
nowhere in trainer/synth.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emoclap.audio import read_mono  # noqa: E402

VOICES = ["en-gb-scotland", "en-029+f3", "en-gb-x-rp+m5", "en-us-nyc+f5", "en-gb-x-gbcwmd+m2",
          "en-gb-x-gbclan+f1"]
EAGER = ["Oh, this is exactly what I was looking for, I will take two of them right now!",
         "Wonderful, wrap it up for me, please, I am buying it today.",
         "Yes, yes, that one! Can I pay by card straight away?",
         "I love it, it is perfect, where do I sign?",
         "Brilliant, I have wanted one of these for months, I will have it.",
         "That price is great, put it in a bag for me, please!"]
RELUCTANT = ["Hmm, I do not know, it is rather a lot of money, I will think about it.",
             "No, thanks, I am only looking, I am not going to buy anything.",
             "It is not really what I need, maybe some other time.",
             "I am not convinced, to be honest, I will leave it.",
             "Well, I could probably find it cheaper somewhere else.",
             "I suppose it is fine, but no, not today, thank you."]
EXCITED = ["Wow, this is amazing, I can hardly believe it!", "Quick, quick, come and look at this!",
           "That is fantastic news, I am thrilled!"]
TIRED = ["I am so tired today, it has been a very long week.", "Mm, whatever you think is fine.",
         "I could really do with a sit down, to be honest."]
# espeak-ng settings that exaggerate each side, as a new user testing the product would.
STYLE = {"eager": ("-p", "75", "-s", "190"), "reluctant": ("-p", "25", "-s", "125"),
         "excited": ("-p", "80", "-s", "200"), "tired": ("-p", "20", "-s", "110")}


def speak(text: str, voice: str, style: str, folder: Path, n: int) -> np.ndarray:
    wav = folder / f"{n}.wav"
    subprocess.run(["espeak-ng", "-v", voice, *STYLE[style], "-w", str(wav), text], check=True,
                   capture_output=True)
    return read_mono(wav)


def degrade(audio: np.ndarray, seed: int) -> np.ndarray:
    """Noise at 10-20 dB SNR and room tone, different draws from the training augmentation."""
    from trainer.augment import _noise, _room

    rng = np.random.default_rng(10_000 + seed)
    out = _room(rng, audio.astype(np.float64))
    power = np.mean(out ** 2) + 1e-12
    out = out + _noise(rng, out.size, "pink") * np.sqrt(power / 10 ** (rng.uniform(10, 20) / 10))
    return (out / (np.abs(out).max() + 1e-9) * 0.5).astype(np.float32)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    p, q = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((p > q).mean() + 0.5 * (p == q).mean())


def score_all(bundle: Path, clips: list[np.ndarray]) -> dict[str, np.ndarray]:
    from daemon.encoder import AudioEncoder, EncoderOptions, TextEncoder
    from daemon.prompt_bank import PromptBank, PromptBankOptions
    from emoclap.bundle import load_bundle
    from emoclap.zeroshot import bipolar_scores

    b = load_bundle(bundle)
    enc = AudioEncoder(b, options=EncoderOptions(provider="cpu", min_utterance_s=0.1))
    bank = PromptBank(REPO / "prompts", TextEncoder(b, provider="cpu"), PromptBankOptions())
    scores = bipolar_scores(enc.embed(clips), bank.vectors)
    return {name: scores[:, i] for i, name in enumerate(bank.vectors.names)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    args = ap.parse_args()
    groups = {"eager": EAGER, "reluctant": RELUCTANT, "excited": EXCITED, "tired": TIRED}
    clips, meta = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for style, sentences in groups.items():
            for text in sentences:
                for voice in VOICES:
                    clip = speak(text, voice, style, Path(tmp), len(clips))
                    for condition in ("clean", "noisy room"):
                        clips.append(clip if condition == "clean" else degrade(clip, len(clips)))
                        meta.append((style, condition))
    styles = np.array([m[0] for m in meta])
    conditions = np.array([m[1] for m in meta])
    print(f"{len(clips)} clips: {len(VOICES)} held-out voices, {sum(map(len, groups.values()))} sentences, "
          "clean and in a noisy room\n")
    print("| bundle | condition | purchase intention AUC (eager vs reluctant) | aroused AUC (excited vs tired) |")
    print("|---|---|---:|---:|")
    for bundle in args.bundles:
        scores = score_all(bundle, clips)
        for condition in ("clean", "noisy room", "both"):
            keep = np.ones(len(clips), bool) if condition == "both" else conditions == condition
            pi = scores["purchase_intention"]
            ar = scores["aroused"]
            print(f"| {bundle} | {condition} | "
                  f"{auc(pi[keep & (styles == 'eager')], pi[keep & (styles == 'reluctant')]):.2f} | "
                  f"{auc(ar[keep & (styles == 'excited')], ar[keep & (styles == 'tired')]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
