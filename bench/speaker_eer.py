"""Equal-error rate of staff-vs-customer decisions on held-out synthetic voices.

Two espeak-ng voices are enrolled as staff from four sentences each; every voice then
speaks eight other sentences. A staff trial is a staff voice's held-out sentence, a
customer trial another voice's; the score is the best cosine against the voiceprints,
exactly as `daemon.speakers.SpeakerGate` decides. Prints the EER, the threshold at it,
the error rates at the configured threshold, and the same-voice/other-voice cosines of
single sentences that the enrolment agreement bound is set from.

    .venv/bin/python bench/speaker_eer.py [--encoder var/speaker-encoder]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.config import SpeakersConfig  # noqa: E402
from daemon.speakers import SpeakerEncoder  # noqa: E402
from emoclap import voiceprint  # noqa: E402
from emoclap.audio import read_mono  # noqa: E402

STAFF = ["en+m3", "en+f2"]
CUSTOMERS = ["en+m1", "en+m5", "en+f4", "en-us+m7", "en-gb-x-rp+f3", "en+m2", "en+f1"]
SENTENCES = [
    "Good afternoon, how can I help you today?", "This model comes with a three year warranty.",
    "We have it in grey, blue and a dark green.", "Let me check the stock in the back for you.",
    "I am looking for a warm winter coat for hiking.", "That seems rather expensive for what it is.",
    "Could you tell me how long the battery lasts?", "I think I will take the smaller one after all.",
    "Is there a discount if I buy two of them?", "My daughter would love this colour, thank you.",
    "The delivery usually takes three to five days.", "Can I pay by card, or only in cash please?",
]
ENROL, TEST = SENTENCES[:4], SENTENCES[4:]


def say(text: str, voice: str, folder: Path) -> np.ndarray:
    path = folder / f"{abs(hash((text, voice)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    audio = read_mono(path, voiceprint.SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="var/speaker-encoder")
    args = ap.parse_args()
    enc = SpeakerEncoder(args.encoder)
    threshold = SpeakersConfig().threshold
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prints = {v: voiceprint.average([enc.embed(np.concatenate([say(s, v, folder) for s in ENROL]))])
                  for v in STAFF}
        trials = {v: [enc.embed(say(s, v, folder)) for s in TEST] for v in STAFF + CUSTOMERS}
    genuine, impostor, same, other = [], [], [], []
    for v, embs in trials.items():
        scores = [voiceprint.decide(e, prints, threshold).similarity for e in embs]
        (genuine if v in STAFF else impostor).extend(scores)
        for w, embs2 in trials.items():
            pairs = [voiceprint.cosine(a, b) for i, a in enumerate(embs) for j, b in enumerate(embs2)
                     if v < w or (v == w and i < j)]
            (same if v == w else other).extend(pairs)
    rate, at = voiceprint.eer(genuine, impostor)
    frr = np.mean(np.asarray(genuine) < threshold)
    far = np.mean(np.asarray(impostor) >= threshold)
    print(f"staff voices {', '.join(STAFF)}; customer voices {', '.join(CUSTOMERS)}")
    print(f"enrolment: {len(ENROL)} sentences per staff voice; trials: {len(TEST)} held-out sentences per voice")
    print("| trials | staff | customer | EER | threshold at EER | FRR at default | FAR at default |")
    print("|---|---|---|---|---|---|---|")
    print(f"| en (espeak-ng) | {len(genuine)} | {len(impostor)} | {rate:.1%} | {at:.3f} | "
          f"{frr:.1%} @ {threshold:.2f} | {far:.1%} @ {threshold:.2f} |")
    for t in (0.85, 0.87, threshold, 0.91):
        print(f"threshold {t:.2f}: staff missed (scored as customers) "
              f"{np.mean(np.asarray(genuine) < t):.1%}, customers taken for staff {np.mean(np.asarray(impostor) >= t):.1%}")
    print(f"staff similarity: min {min(genuine):.3f} mean {np.mean(genuine):.3f}; "
          f"customer similarity: max {max(impostor):.3f} mean {np.mean(impostor):.3f}")
    print(f"single sentences, same voice: min {min(same):.3f} mean {np.mean(same):.3f}; "
          f"different voices: max {max(other):.3f} mean {np.mean(other):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
