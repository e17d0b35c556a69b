"""Generalisation benchmark: how a bundle scores speech in voices, sentences, speech
engines and noise that neither training nor tuning ever saw. Prints a Markdown table of
ROC AUCs per condition and path beside the targets, and a supervised linear probe.

    python bench/generalisation.py [--bundle B] [--prompts P] [--cache C] [--json OUT] [--quick]

Needs espeak-ng and flite: `apt-get install espeak-ng flite` (flite: a second speech
engine, BSD-style licence, voices kal16, awb, rms, slt).

Speech: espeak-ng in accents and variants trainer/synth never uses (it speaks en-us and
en with other variants), and flite, which the corpus never uses; sentences of this file's
own, in none of trainer/synth, prompts/ or bench/heldout_check.py (`check_held_out`
refuses to run otherwise). Each sentence is spoken by k voices, rotating through the
voice list, so every voice speaks both classes. 16 kHz mono float32 via read_mono (soxr).

Conditions, positive vs negative class:
  words-only     purchase_intention: buyer vs non-buyer wording, engine default delivery
  delivery-only  aroused: the same neutral sentences and voices, excited (fast, high,
                 wide pitch range) vs tired (slow, low, flat)
  both           purchase_intention: buyer wording said eagerly vs non-buyer reluctantly
  noise 10 dB    the `both` clips in brown noise + mains hum + a fan-like band
  babble 6 dB    the `both` clips over 4-6 talkers of the other engine saying other
                 sentences, each at the same active level
flite's rms ignores f0 settings, so it speaks plain clips only. The noise has its own
seeded RNG, not trainer/augment's. SNR: speech power over the speech's active samples
(20 ms frames within 30 dB of its loudest) against noise power over the same samples.

Linear probe: logistic regression (standardised, C=0.5) on [audio, text] embeddings (a
missing text embedding as zeros), and on audio alone. Grouped cross-validation within a
condition: each class's sentence list is cut into a first and second half; fold (v, h)
tests on voice v's clips of half-h sentences and trains on every other voice's clips of
the other half, so no test sentence or test voice is in its training fold. Every clip
is tested once; the AUC is over the pooled out-of-fold decision values.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emoclap.audio import SAMPLE_RATE, read_mono  # noqa: E402

SEED = 2027
ESPEAK = ("en-gb-x-rp+m4", "en-gb-scotland+f5", "en-029+m2", "en-us-nyc+f1",
          "en-gb-x-gbclan+m7", "en-gb-x-gbcwmd+Annie")
FLITE = ("kal16", "awb", "slt", "rms")
# flite's f0 targets are in Hz: relative to each voice's own median, a style moves a
# voice against itself instead of pushing every voice to one pitch.
FLITE_F0 = {"kal16": 95.0, "awb": 130.0, "slt": 165.0}

BUYER = (
    "I'll have it, can I pay by card?", "Could you ring this up for me, please?",
    "Do you have it in a medium? I want to get one today.",
    "Great, I'll have the blue one, and can you gift wrap it?",
    "How soon can you deliver it? I'd like to order now.", "Put me down for two of those, please.",
    "Is there a discount if I buy the pair? I'm definitely getting them.",
    "Perfect, that's the one I want. Where's the till?",
    "Can I use this voucher towards it? I'm ready to pay.", "Let's go ahead with the bigger model.",
    "I've made up my mind, I'm buying the grey jacket.",
    "Could you check the stock room? I'd like to bring one home today.",
    "Sold. Do you need my address for the delivery?", "I'd like to order the matching chairs as well.",
    "Okay, you've convinced me, let's sort out the paperwork.",
    "Can I pay for it in instalments? I want it this week.")
NON_BUYER = (
    "No thanks, just looking.", "I'm only browsing today, thank you.",
    "That's more than I wanted to spend, so I'll leave it.", "I'll probably wait for the sales.",
    "Thanks, but I already have one at home.", "It's nice, but it's not really my style.",
    "I'm just killing time while my friend shops.", "I don't need anything today, thanks.",
    "I saw it cheaper online, so I'll pass.", "I need to check with my partner, so not today.",
    "I'm not in the market for a new one right now.",
    "Sorry, I was only asking about the price out of curiosity.",
    "No, I'd rather keep my old one for another year.", "It doesn't fit in my budget this month.",
    "I'll have a look around the other shops first.", "Not for me, thanks, I'm heading off now.")
NEUTRAL = (
    "The shop opens at nine on Saturdays.", "The car park is behind the post office.",
    "Our train leaves from platform four.", "The meeting has moved to the second floor.",
    "The parcel should arrive on Tuesday.", "There is a bus stop at the end of the road.",
    "The library closes early in August.", "The forms are in the top drawer.")
BABBLE = (
    "Did you remember to feed the cat this morning?", "We could try the new place on the corner for lunch.",
    "My brother is moving to Leeds next month.", "The weather forecast said it might rain later.",
    "Have you seen where I left my glasses?", "The kids have football practice after school.",
    "I think the printer on the third floor is broken again.", "She told me the film was far too long.")

# espeak-ng speed, pitch, amplitude, SSML pitch range; flite duration stretch, f0 mean and
# f0 spread as fractions of the voice's own f0. "plain": the engine's defaults.
STYLES = {"plain": None,
          "excited": (205, 82, 125, "+90%", 0.72, 1.45, 0.35),
          "tired": (105, 18, 60, "-80%", 1.45, 0.80, 0.03),
          "eager": (185, 72, 115, "+60%", 0.80, 1.30, 0.28),
          "reluctant": (120, 28, 75, "-60%", 1.30, 0.88, 0.06)}
# condition: emotion, (positive, negative) style, noise kind, SNR dB
CONDITIONS = {"words-only": ("purchase_intention", ("plain", "plain"), "", None),
              "delivery-only": ("aroused", ("excited", "tired"), "", None),
              "both": ("purchase_intention", ("eager", "reluctant"), "", None),
              "noise 10 dB": ("purchase_intention", ("eager", "reluctant"), "noise", 10.0),
              "babble 6 dB": ("purchase_intention", ("eager", "reluctant"), "babble", 6.0)}
TARGETS = {"audio": {"words-only": 0.80, "delivery-only": 0.90, "both": 0.90, "noise 10 dB": 0.80},
           "fused": {"words-only": 0.90, "delivery-only": 0.90, "both": 0.95, "noise 10 dB": 0.85,
                     "babble 6 dB": 0.85}}


@dataclass(frozen=True)
class Clip:
    condition: str
    label: int      # 1: the positive class (buyer wording, aroused delivery)
    sentence: str
    voice: str      # "engine:voice"
    style: str
    half: int       # which half of its class's sentence list the sentence is in

    @property
    def engine(self) -> str:
        return self.voice.split(":")[0]


def voices(styled: bool) -> list[str]:
    """The engines interleaved, so that a rotation through the list alternates them."""
    e = [f"espeak-ng:{v}" for v in ESPEAK]
    f = [f"flite:{v}" for v in FLITE if not styled or v in FLITE_F0]
    return [v for pair in zip(e, f) for v in pair] + e[len(f):]


def check_held_out(prompts: Path = REPO / "prompts") -> None:
    from trainer.synth.script import speakers
    accents = {s.accent for s in speakers("en")}
    variants = {s.voice for s in speakers("en")}
    # Held out: neither the voice's accent nor its variant speaks in training.
    trained = {v for v in ESPEAK if v.split("+")[0] in accents or "+" + v.split("+")[1] in variants}
    seen = " ".join(p.read_text().lower() for p in [REPO / "bench" / "heldout_check.py",
                    *(REPO / "trainer" / "synth").glob("*.py"), *Path(prompts).rglob("*.toml")])
    reused = [s for s in BUYER + NON_BUYER + NEUTRAL + BABBLE if s.lower() in seen]
    if trained or reused:
        raise SystemExit(f"not held out: voices {sorted(trained)}, sentences {reused}")


def plan(quick: bool = False) -> list[Clip]:
    """Every clip of every condition. Sentence i of a class goes to voices i*k .. i*k+k-1
    (mod the voice count), the same voices for both classes."""
    n_words, n_neutral = (6, 4) if quick else (16, 8)
    k = {"words-only": 2, "delivery-only": 3, "both": 1} if quick else \
        {"words-only": 3, "delivery-only": 6, "both": 2}
    out = []
    for condition, (_, styles, noise, _) in CONDITIONS.items():
        per, pool = k["both" if noise else condition], voices(styled=styles[0] != "plain")
        lists = (NEUTRAL[:n_neutral],) * 2 if condition == "delivery-only" else (BUYER[:n_words], NON_BUYER[:n_words])
        for label, sentences, style in zip((1, 0), lists, styles):
            out += [Clip(condition, label, text, pool[(i * per + j) % len(pool)], style,
                         int(i >= len(sentences) / 2))
                    for i, text in enumerate(sentences) for j in range(per)]
    return out


def probe_folds(clips: list[Clip]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices: test one voice x one sentence half, train the other voices
    x the other half."""
    voice, half = np.array([c.voice for c in clips]), np.array([c.half for c in clips])
    folds = [(np.flatnonzero((voice != v) & (half != h)), np.flatnonzero((voice == v) & (half == h)))
             for v in sorted(set(voice)) for h in (0, 1)]
    return [(train, test) for train, test in folds if test.size]


def auc(positive, negative) -> float:
    """Probability that a positive scores above a negative (ties count half); NaN scores
    are left out, and a side with none gives NaN."""
    p, q = np.asarray(positive, float), np.asarray(negative, float)
    p, q = p[~np.isnan(p)][:, None], q[~np.isnan(q)][None, :]
    if p.size == 0 or q.size == 0:
        return float("nan")
    return float((p > q).mean() + 0.5 * (p == q).mean())


def probe_auc(x: np.ndarray, y: np.ndarray, folds) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.full(len(y), np.nan)
    for train, test in folds:
        if len(set(y[train])) == 2:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
            out[test] = model.fit(x[train], y[train]).decision_function(x[test])
    return auc(out[y == 1], out[y == 0])


def active_mask(audio: np.ndarray, frame: int = SAMPLE_RATE // 50, floor_db: float = 30.0) -> np.ndarray:
    """Samples in frames within `floor_db` of the loudest frame: the silence engines put
    around and between words would otherwise dilute the speech power and flatter the SNR."""
    n = audio.size // frame * frame
    rms = np.sqrt(np.mean(np.asarray(audio[:n], np.float64).reshape(-1, frame) ** 2, axis=1) + 1e-20)
    on = np.repeat(rms >= rms.max(initial=0) * 10 ** (-floor_db / 20), frame)
    return np.concatenate([on, np.full(audio.size - n, bool(on[-1]) if on.size else True)])


def fit_length(noise: np.ndarray, n: int) -> np.ndarray:
    return np.tile(noise, -(-n // noise.size))[:n]


def mix_at_snr(speech, noise, snr_db: float, active: np.ndarray | None = None) -> np.ndarray:
    """speech + noise scaled to `snr_db` over the speech's active samples; float64, not
    yet limited (see `limit`)."""
    speech = np.asarray(speech, np.float64)
    noise = fit_length(np.asarray(noise, np.float64), speech.size)
    on = active_mask(speech) if active is None else active
    gain = np.sqrt(np.mean(speech[on] ** 2) / (np.mean(noise[on] ** 2) * 10 ** (snr_db / 10) + 1e-30))
    return speech + gain * noise


def limit(audio: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scaled down as a whole, so the SNR stays, and only where it would clip."""
    top = float(np.abs(audio).max(initial=0))
    return (np.asarray(audio) * (peak / top if top > peak else 1.0)).astype(np.float32)


def room_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Brown noise (a leaky integrator), mains hum with harmonics, and a fan: band-passed
    noise with a blade-rate flutter. Unit RMS."""
    from scipy.signal import butter, lfilter, sosfilt

    t = np.arange(n) / SAMPLE_RATE
    brown = lfilter([1.0], [1.0, -0.997], rng.standard_normal(n))
    mains = rng.choice([50.0, 60.0])
    hum = sum(a * np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi))
              for h, a in enumerate((1.0, 0.6, 0.35, 0.2, 0.1), start=1))
    low = rng.uniform(150, 300)
    sos = butter(2, [low, low * rng.uniform(3, 5)], "bandpass", fs=SAMPLE_RATE, output="sos")
    fan = sosfilt(sos, rng.standard_normal(n)) * (1 + 0.25 * np.sin(2 * np.pi * rng.uniform(8, 16) * t))
    out = sum(w * p / (p.std() + 1e-12) for w, p in zip((1.0, 0.35, 0.7), (brown, hum, fan)))
    return out / (out.std() + 1e-12)


def babble(n: int, talkers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """4-6 of `talkers`, each at unit active RMS, looped with short gaps to cover n samples
    from a random start, summed. Unit RMS."""
    out = np.zeros(n)
    for i in rng.choice(len(talkers), size=int(rng.integers(4, 7)), replace=False):
        voice = np.asarray(talkers[i], np.float64)
        voice = voice / np.sqrt(np.mean(voice[active_mask(voice)] ** 2))
        loop = np.concatenate([voice, np.zeros(int(rng.uniform(0.1, 0.5) * SAMPLE_RATE))])
        start = int(rng.integers(voice.size))
        out += fit_length(loop, start + n)[start:]
    return out / (out.std() + 1e-12)


def clip_rng(clip: Clip, kind: str) -> np.random.Generator:
    # Seeded by the clip itself, not its place in the list: --quick draws the same noise
    # for the clips it shares with a full run.
    return np.random.default_rng([SEED, zlib.crc32(f"{kind}|{clip.voice}|{clip.sentence}|{clip.style}".encode())])


def check_tools() -> str | None:
    for tool, why in (("espeak-ng", ""), ("flite", " (the second speech engine, BSD-style licence)")):
        if shutil.which(tool) is None:
            return f"{tool} not found: install it with `apt-get install {tool}`{why}"
    return None


def engine_command(voice: str, style: str, text: str, wav: str) -> list[str]:
    engine, name = voice.split(":")
    s = STYLES[style]
    if engine == "espeak-ng":
        if s is None:
            return ["espeak-ng", "-v", name, "-w", wav, text]
        return ["espeak-ng", "-m", "-v", name, "-s", str(s[0]), "-p", str(s[1]), "-a", str(s[2]), "-w", wav,
                f'<speak><prosody range="{s[3]}">{escape(text)}</prosody></speak>']
    setf = [] if s is None else [f"duration_stretch={s[4]}", f"int_f0_target_mean={FLITE_F0[name] * s[5]:.1f}",
                                 f"int_f0_target_stddev={FLITE_F0[name] * s[6]:.1f}"]
    return ["flite", "-voice", name, *(a for f in setf for a in ("--setf", f)), "-t", text, "-o", wav]


def speak(voice: str, style: str, text: str, cache: Path) -> np.ndarray:
    """One utterance at 16 kHz, from `cache` when it was spoken before."""
    key = json.dumps([voice, style, STYLES[style], text, SEED, SAMPLE_RATE])
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        wav = os.path.join(tmp, "out.wav")
        done = subprocess.run(engine_command(voice, style, text, wav), capture_output=True)
        if done.returncode != 0 or not os.path.exists(wav):
            raise SystemExit(f"{voice} failed on {text!r}: {done.stderr.decode(errors='replace')[:300]}")
        audio = limit(read_mono(wav))
        np.save(os.path.join(tmp, "a.npy"), audio)
        os.replace(os.path.join(tmp, "a.npy"), path)  # whole or absent, should a run be cut short
    return audio


def render(clips: list[Clip], cache: Path) -> list[np.ndarray]:
    """Every clip's audio: spoken, two engine processes at a time, then degraded."""
    cache.mkdir(parents=True, exist_ok=True)
    jobs = sorted({(c.voice, c.style, c.sentence) for c in clips})
    # Each babble sentence in two voices of each engine.
    jobs += [(f"{e}:{names[(i + d) % len(names)]}", "plain", t) for i, t in enumerate(BABBLE)
             for e, names in (("espeak-ng", ESPEAK), ("flite", FLITE)) for d in (0, len(names) // 2)]
    with ThreadPoolExecutor(2) as pool:
        spoken = dict(zip(jobs, pool.map(lambda j: speak(*j, cache), jobs)))
    other = {e: [a for (v, _, t), a in spoken.items() if t in BABBLE and not v.startswith(e)]
             for e in ("espeak-ng", "flite")}
    out = []
    for c in clips:
        speech, (_, _, kind, snr) = spoken[(c.voice, c.style, c.sentence)], CONDITIONS[c.condition]
        if kind == "noise":
            speech = limit(mix_at_snr(speech, room_noise(speech.size, clip_rng(c, kind)), snr))
        elif kind == "babble":
            speech = limit(mix_at_snr(speech, babble(speech.size, other[c.engine], clip_rng(c, kind)), snr))
        out.append(speech)
    return out


class AudioOnlyScorer:
    """The audio path alone through the daemon's encoder and prompt bank, for when
    daemon.clips.ClipScorer cannot be built; text columns NaN, fused = audio (as the
    daemon publishes for an utterance without a transcript)."""

    def __init__(self, bundle: Path, prompts: Path):
        from daemon.encoder import AudioEncoder, EncoderOptions, TextEncoder
        from daemon.prompt_bank import PromptBank, PromptBankOptions
        from emoclap.bundle import load_bundle

        b = load_bundle(bundle)
        self.encoder = AudioEncoder(b, options=EncoderOptions(provider="cpu", min_utterance_s=0.1))
        self.bank = PromptBank(Path(prompts), TextEncoder(b, provider="cpu"), PromptBankOptions())

    def score(self, clips: list[np.ndarray]):
        from daemon.clips import ClipScores
        from emoclap.zeroshot import bipolar_scores

        emb = self.encoder.embed(clips)
        audio = bipolar_scores(emb, self.bank.vectors)
        return ClipScores(tuple(self.bank.vectors.names), audio, np.full_like(audio, np.nan), audio.copy(),
                          emb, np.full_like(emb, np.nan), [None] * len(clips))


def open_scorer(bundle: Path, prompts: Path, sample: np.ndarray):
    """(scorer, note): ClipScorer with transcripts, else without, else AudioOnlyScorer,
    the first that builds and scores `sample`; the note says which, and why."""
    from daemon.clips import ClipScorer
    errors = []
    for transcripts in (True, False):
        try:
            scorer = ClipScorer(bundle, prompts, transcripts=transcripts)
            scorer.score([sample])
            return scorer, "ClipScorer, " + ("audio and text paths" if transcripts else f"audio path only ({errors[0]})")
        except Exception as exc:  # noqa: BLE001 (whatever fails, the next way may not)
            errors.append(f"{type(exc).__name__}: {exc}")
    return AudioOnlyScorer(bundle, prompts), f"audio path only, ClipScorer failed ({errors[-1]})"


def score_all(scorer, audio: list[np.ndarray], batch: int = 48):
    parts = []
    for b in range(0, len(audio), batch):
        parts.append(scorer.score(audio[b:b + batch]))
        print(f"  scored {min(b + batch, len(audio))}/{len(audio)}", file=sys.stderr, flush=True)
    return parts[0].names, {k: np.concatenate([getattr(p, k) for p in parts])
                            for k in ("audio", "text", "fused", "audio_embedding", "text_embedding")}


def evaluate(clips: list[Clip], names, res) -> dict:
    rows = {}
    for condition, (emotion, *_) in CONDITIONS.items():
        idx = np.array([i for i, c in enumerate(clips) if c.condition == condition])
        sub, k = [clips[i] for i in idx], names.index(emotion)
        y, engine = np.array([c.label for c in sub]), np.array([c.engine for c in sub])
        row = {"emotion": emotion, "clips": len(sub)}
        for path in ("audio", "text", "fused"):
            row[path] = auc(res[path][idx, k][y == 1], res[path][idx, k][y == 0])
        folds, a = probe_folds(sub), res["audio_embedding"][idx]
        row["probe_audio_text"] = probe_auc(np.hstack([a, np.nan_to_num(res["text_embedding"][idx])]), y, folds)
        row["probe_audio"] = probe_auc(a, y, folds)
        fused = res["fused"][idx, k]
        row["fused_by_engine"] = {e: auc(fused[(engine == e) & (y == 1)], fused[(engine == e) & (y == 0)])
                                  for e in ("espeak-ng", "flite")}
        row["targets"] = {p: TARGETS[p].get(condition) for p in TARGETS}
        row["pass"] = {p: None if goal is None or np.isnan(row[p]) else bool(row[p] >= goal)
                       for p, goal in row["targets"].items()}
        rows[condition] = row
    return rows


def fmt(x) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{x:.2f}"


def target(row: dict, path: str) -> str:
    goal, ok = row["targets"][path], row["pass"][path]
    return "" if goal is None else f"≥ {goal:.2f} " + {None: "n/a", True: "pass", False: "FAIL"}[ok]


def table(rows: dict) -> str:
    lines = ["| condition | emotion | clips | audio | audio target | text | fused | fused target "
             "| probe audio+text | probe audio |", "|---|---|---:|---:|---|---:|---:|---|---:|---:|"]
    lines += [f"| {n} | {r['emotion']} | {r['clips']} | {fmt(r['audio'])} | {target(r, 'audio')} | {fmt(r['text'])} "
              f"| {fmt(r['fused'])} | {target(r, 'fused')} | {fmt(r['probe_audio_text'])} | {fmt(r['probe_audio'])} |"
              for n, r in rows.items()]
    lines += ["", "Fused AUC by engine:", "", "| condition | espeak-ng | flite |", "|---|---:|---:|"]
    lines += [f"| {n} | {fmt(r['fused_by_engine']['espeak-ng'])} | {fmt(r['fused_by_engine']['flite'])} |"
              for n, r in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "data" / "demo-bundle")
    ap.add_argument("--prompts", type=Path, default=REPO / "prompts")
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "generalisation-cache")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number here")
    ap.add_argument("--quick", action="store_true", help="a small subset, for a smoke test")
    args = ap.parse_args(argv)
    missing = check_tools()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    check_held_out(args.prompts)
    clips = plan(args.quick)
    print(f"rendering {len(clips)} clips (cache {args.cache})", file=sys.stderr, flush=True)
    audio = render(clips, args.cache)
    scorer, note = open_scorer(args.bundle, args.prompts, audio[0])
    print(f"scoring with {note}", file=sys.stderr, flush=True)
    rows = evaluate(clips, *score_all(scorer, audio))
    print(f"Bundle {args.bundle}: {len(clips)} clips, {len({c.voice for c in clips})} held-out voices "
          f"({len(ESPEAK)} espeak-ng, {len(FLITE)} flite){', quick subset' if args.quick else ''}; "
          f"scorer: {note}. AUC 0.5 is chance.\n")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"bundle": str(args.bundle), "quick": args.quick, "clips": len(clips), "scorer": note,
                  "conditions": rows}
        # JSON has no NaN: a missing AUC goes out as null.
        plain = json.loads(json.dumps(report), parse_constant=lambda _: None)
        args.json.write_text(json.dumps(plain, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
