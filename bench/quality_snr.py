"""How the abstain check's SNR estimate tracks the true SNR, and what it flags.

Espeak-ng sentences (several voices, each scaled to the same power) are laid end to end
with pauses, noise is mixed over the whole recording (lead-in, pauses and speech) at a
known SNR, and the recording goes through a `StationStream` with the default segmenter
and quality options, exactly as a live station cuts and measures it. True SNR: the
power of the clean sentence (espeak-ng's output trimmed to its audible part, pauses
between words included, as mixing tools compute it) over the power of the noise.

Noises: white (Gaussian), pink (1/f power) and babble (six other voices speaking other
sentences at once, looped). A segment is matched to a sentence when it covers at least
half of it; segments matching no sentence are the VAD's false triggers on noise.

With `--bundle`, what the noise does to the scores, which is what the threshold is for:
every sentence of every voice is scored clean and mixed with each noise at each SNR
(0.2 s of noise on each side, as the segmenter's padding), as a customer; per emotion,
drift is the mean |noisy - clean| score over the spread (standard deviation) of the
clean scores across sentences, averaged over emotions: at 1, noise moves a score as far
as the difference between two typical utterances.

    .venv/bin/python bench/quality_snr.py [--snr 0 5 10 20 30] [--seed 0] [--bundle data/demo-bundle]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emoclap.audio import SAMPLE_RATE, read_mono  # noqa: E402
from emoclap.quality import QualityOptions, measure  # noqa: E402
from emoclap.segmenter import SegmenterOptions  # noqa: E402
from emoclap.station import StationStream  # noqa: E402

VOICES = ["en+m3", "en+f2", "en-us+m7", "en-gb-x-rp+f3"]
SENTENCES = [
    "Good afternoon, how can I help you today?", "This model comes with a three year warranty.",
    "I am looking for a warm winter coat for hiking.", "That seems rather expensive for what it is.",
    "Could you tell me how long the battery lasts?", "I think I will take the smaller one after all.",
]
BABBLE_VOICES = ["en+m1", "en+m5", "en+f4", "en-gb-scotland", "en+f1", "en-us+m2"]
BABBLE_SENTENCES = [
    "We have it in grey, blue and a dark green.", "Let me check the stock in the back for you.",
    "Is there a discount if I buy two of them?", "My daughter would love this colour, thank you.",
    "The delivery usually takes three to five days.", "Can I pay by card, or only in cash please?",
]
PAUSE_S, LEAD_S = 1.2, 1.5


def say(text: str, voice: str, folder: Path) -> np.ndarray:
    path = folder / f"{abs(hash((text, voice)))}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    audio = read_mono(path, SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1].astype(np.float64)


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x)))


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def babble(n: int, rng: np.random.Generator, folder: Path) -> np.ndarray:
    out = np.zeros(n)
    for i, voice in enumerate(BABBLE_VOICES):
        talk = np.concatenate([np.concatenate([say(s, voice, folder), np.zeros(int(0.15 * SAMPLE_RATE))])
                               for s in np.roll(BABBLE_SENTENCES, i)])
        talk /= np.sqrt(power(talk))
        looped = np.tile(talk, n // talk.size + 2)
        start = int(rng.integers(0, talk.size))
        out += looped[start:start + n]
    return out


def recording(folder: Path) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Clean speech (every sentence at power 0.01, -20 dBFS) and (start, end, power) spans."""
    parts, spans, t = [np.zeros(int(LEAD_S * SAMPLE_RATE))], [], int(LEAD_S * SAMPLE_RATE)
    for i, text in enumerate(SENTENCES * 2):
        clip = say(text, VOICES[i % len(VOICES)], folder)
        clip *= np.sqrt(0.01 / power(clip))
        parts += [clip, np.zeros(int(PAUSE_S * SAMPLE_RATE))]
        spans.append((t, t + clip.size, power(clip)))
        t += clip.size + int(PAUSE_S * SAMPLE_RATE)
    return np.concatenate(parts), spans


def run(clean, spans, noise, snr_db, options):
    noise = noise * np.sqrt(0.01 / 10 ** (snr_db / 10) / power(noise))
    mix = (clean + noise).astype(np.float32)
    stream = StationStream("bench", "customer", SegmenterOptions(), clock=lambda: 0.0, quality=options)
    utts = []
    for i in range(0, mix.size, 320):  # 20 ms blocks, as a sound card delivers them
        utts += stream.feed(mix[i:i + 320])
    utts += stream.finish()
    matched, false, found = [], [], set()
    for u in utts:
        a, b = int(u.start * SAMPLE_RATE), int(u.end * SAMPLE_RATE)
        covered = [(s, e, p) for s, e, p in spans if min(b, e) - max(a, s) >= 0.5 * (e - s)]
        found |= {s for s, _, _ in covered}
        if covered:
            speech = sum(p * (e - s) for s, e, p in covered) / sum(e - s for s, e, _ in covered)
            true = 10 * np.log10(speech / power(noise))
            matched.append((true, u.quality["snr_db"], u.insufficient))
        else:
            false.append((u.quality["snr_db"], u.insufficient))
    return matched, false, len(found)


def drift(bundle: str, noises: dict, snrs: list[float], folder: Path, rng) -> None:
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.prompt_bank import PromptBank, PromptBankOptions
    from emoclap.bundle import load_bundle
    from emoclap.zeroshot import score_utterance

    model = load_bundle(bundle)
    encoder = AudioEncoder(model, provider="cpu")
    bank = PromptBank(Path(__file__).resolve().parent.parent / "prompts", TextEncoder(model, provider="cpu"),
                      PromptBankOptions(cache=None))
    clips = [say(text, voice, folder) for text in SENTENCES for voice in VOICES]
    pad = int(0.2 * SAMPLE_RATE)

    def scores(audios):
        return np.array([[score_utterance(e, bank, "customer")[n] for n in bank.vectors.names]
                         for e in encoder.embed([a.astype(np.float32) for a in audios])])
    clean = scores([np.pad(c, pad) for c in clips])
    spread = clean.std(axis=0)
    print(f"\nscore drift, {len(clips)} clips, {len(bank.vectors.names)} emotions, bundle {bundle}")
    print("| noise | " + " | ".join(f"{s:g} dB" for s in snrs) + " |")
    print("|---|" + "---|" * len(snrs))
    for name, noise in noises.items():
        row = []
        for snr in snrs:
            mixed = []
            for c in clips:
                start = int(rng.integers(0, noise.size - c.size - 2 * pad))
                n = noise[start:start + c.size + 2 * pad]
                mixed.append(np.pad(c, pad) + n * np.sqrt(power(c) / 10 ** (snr / 10) / power(n)))
            row.append(float((np.abs(scores(mixed) - clean) / spread).mean()))
        print(f"| {name} | " + " | ".join(f"{d:.2f}" for d in row) + " |")

    def int16(x):  # what a sound card delivers
        return np.round(np.clip(x, -1, 32767 / 32768) * 32768) / 32768
    print("\n| sentence level (dBFS, measured) | drift |\n|---|---|")
    for level in (-20, -30, -40, -50, -60, -70):
        quiet = [int16(c * np.sqrt(10 ** (level / 10) / power(c))) for c in clips]
        measured = np.mean([measure(q).level_dbfs for q in quiet])
        print(f"| {measured:.1f} | {(np.abs(scores([np.pad(q, pad) for q in quiet]) - clean) / spread).mean():.2f} |")
    peak = [c / np.abs(c).max() for c in clips]  # no clipping at 0 dB gain
    reference = scores([np.pad(int16(c), pad) for c in peak])
    print("\n| gain over peak (dB) | clipped (measured) | drift |\n|---|---|---|")
    for gain in (0, 3, 6, 10, 16, 20, 30):
        loud = [int16(c * 10 ** (gain / 20)) for c in peak]
        clipped = np.mean([measure(x).clipped for x in loud])
        d = (np.abs(scores([np.pad(x, pad) for x in loud]) - reference) / spread).mean()
        print(f"| {gain} | {100 * clipped:.2f} % | {d:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snr", type=float, nargs="+", default=[0, 5, 10, 20, 30])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle", help="also measure the score drift with this model bundle")
    args = ap.parse_args()
    options = QualityOptions()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clean, spans = recording(folder)
        noises = {"white": rng.standard_normal(clean.size), "pink": pink(clean.size, rng),
                  "babble": babble(clean.size, rng, folder)}
        print(f"{len(spans)} sentences, {clean.size / SAMPLE_RATE:.0f} s; min_snr_db = {options.min_snr_db:g}")
        print("| noise | true SNR dB | segments (sentences in them) | estimate mean | error mean | error MAE | error range "
              "| flagged noisy | false triggers (flagged) |")
        print("|---|---|---|---|---|---|---|---|---|")
        errors = []
        for name, noise in noises.items():
            for snr in args.snr:
                matched, false, found = run(clean, spans, noise, snr, options)
                if not matched:
                    print(f"| {name} | {snr:g} | 0 (0/{len(spans)}) | | | | | | {len(false)} |")
                    continue
                true = np.array([m[0] for m in matched])
                est = np.array([m[1] for m in matched])
                err = est - true
                errors += list(err)
                noisy = sum(m[2] == "noisy" for m in matched)
                print(f"| {name} | {true.mean():.1f} | {len(matched)} ({found}/{len(spans)}) | {est.mean():.1f} "
                      f"| {err.mean():+.1f} | {np.abs(err).mean():.1f} | {err.min():+.1f} … {err.max():+.1f} "
                      f"| {noisy}/{len(matched)} | {len(false)} ({sum(f[1] is not None for f in false)}) |")
        errors = np.array(errors)
        print(f"all: error mean {errors.mean():+.2f} dB, MAE {np.abs(errors).mean():.2f} dB, "
              f"RMS {np.sqrt(np.mean(errors ** 2)):.2f} dB over {errors.size} segments")
        if args.bundle:
            drift(args.bundle, noises, args.snr, folder, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
