"""Building the synthetic sales-floor corpus: scripts, voices, ratings, files.

Layout of the output folder:
  manifest.jsonl                 one utterance per line (see trainer.manifest)
  truth.jsonl                    hidden intensities and vocal controls per utterance
  utterances/<dialogue>-NNN.wav  16 kHz mono
  dialogues/<dialogue>.wav       stereo, staff left, customer right
  dialogues/<dialogue>-mix.wav   mono mix
  dialogues/<dialogue>.json      utterance timing within the dialogue, the engine (tts)
  ATTRIBUTION.txt                the voice's credit, when its licence asks for one
Every random draw comes from a generator seeded by (seed, session, dialogue, turn), so
the corpus is the same for the same seed whatever the number of workers.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from emoclap.audio import SAMPLE_RATE, write_wav
from trainer.manifest import Utterance, write_manifest
from trainer.synth.affect import vocal_controls
from trainer.synth.annotators import rate_utterance
from trainer.synth.script import SCENARIOS, Turn, speakers, write_dialogue
from trainer.synth.engines import ENGINES, open_engine

ROLE_CHANNEL = {"staff": 0, "customer": 1}


@dataclass(frozen=True)
class CorpusOptions:
    sessions: int = 6                 # one session per sales scenario
    dialogues_per_session: int = 4
    turns: int = 20                   # per dialogue, alternating staff/customer
    language: str = "en"
    seed: int = 0
    workers: int = os.cpu_count() or 1
    tts: str | None = None            # engines.ENGINES; None: the language's default

    @classmethod
    def small(cls, **overrides) -> "CorpusOptions":
        return replace(cls(sessions=3, dialogues_per_session=1, turns=12), **overrides)

    def __post_init__(self):
        if not 2 <= self.sessions <= len(SCENARIOS):
            raise ValueError(f"sessions must be 2..{len(SCENARIOS)} (one per scenario)")
        if self.turns < 2 or self.turns % 2:
            raise ValueError("turns must be an even number >= 2 (staff opens, customer closes)")
        if self.dialogues_per_session < 1:
            raise ValueError("dialogues_per_session must be >= 1")
        if self.tts is not None and self.tts not in ENGINES:
            raise ValueError(f"tts must be one of {', '.join(ENGINES)}, got {self.tts!r}")
        if self.tts not in (None, "espeak") and self.language != "ja":
            raise ValueError(f"tts {self.tts!r} speaks Japanese only; use espeak for {self.language!r}")


@dataclass(frozen=True)
class _Job:
    session: str
    dialogue: str
    index: int
    turn: Turn
    seed: tuple[int, ...]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _speakers(options: CorpusOptions, session: int, dialogue: int):
    """Every voice in turn, as staff in one dialogue and as a customer in another."""
    pool = speakers(options.language)
    g = 2 * (session * options.dialogues_per_session + dialogue)
    return pool[g % len(pool)], pool[(g + 1) % len(pool)]


def _plan(options: CorpusOptions) -> list[_Job]:
    jobs = []
    for s in range(options.sessions):
        scenario = SCENARIOS[s]
        session = f"s{s + 1}-{scenario.key}"
        for d in range(options.dialogues_per_session):
            staff, customer = _speakers(options, s, d)
            turns = write_dialogue(_rng(options.seed, s, d), scenario, staff, customer,
                                   options.turns, options.language)
            dialogue = f"{session}-d{d + 1}"
            jobs += [_Job(session, dialogue, i, t, (options.seed, s, d, i))
                     for i, t in enumerate(turns)]
    return jobs


def _render(job: _Job, engine):
    rng = _rng(*job.seed, 1)
    controls = vocal_controls(job.turn.delivery, rng)
    audio = engine.speak(job.turn.text, job.turn.speaker, controls, rng)
    ratings = rate_utterance(job.turn.affect, job.turn.role, rng)
    return audio, controls, ratings


def _assemble(jobs: list[_Job], audio: list[np.ndarray], seed: tuple[int, ...]):
    """Place utterances on a dialogue timeline with natural turn gaps."""
    rng = _rng(*seed, 2)
    starts, cursor = [], 0.6
    for clip in audio:
        starts.append(cursor)
        cursor += clip.size / SAMPLE_RATE + float(rng.uniform(0.45, 1.2))
    total = int(round((cursor + 0.4) * SAMPLE_RATE))
    stereo = rng.normal(0.0, 10 ** (-58 / 20), (2, total)).astype(np.float32)
    for job, clip, start in zip(jobs, audio, starts):
        at = int(round(start * SAMPLE_RATE))
        stereo[ROLE_CHANNEL[job.turn.role], at:at + clip.size] += clip
    return stereo, starts


def build_corpus(out: str | Path, options: CorpusOptions = CorpusOptions(),
                 log=sys.stderr) -> list[Utterance]:
    engine = open_engine(options.language, options.tts)
    out = Path(out)
    (out / "utterances").mkdir(parents=True, exist_ok=True)
    (out / "dialogues").mkdir(exist_ok=True)
    began = time.monotonic()
    jobs = _plan(options)
    rendered = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        futures = [pool.submit(_render, job, engine) for job in jobs]
        for n, future in enumerate(futures, start=1):
            rendered[n - 1] = future.result()
            if n % 50 == 0 or n == len(jobs):
                print(f"  spoken {n}/{len(jobs)} utterances "
                      f"({time.monotonic() - began:.0f} s)", file=log, flush=True)

    utterances, truth = [], []
    dialogues = sorted({j.dialogue for j in jobs}, key=[j.dialogue for j in jobs].index)
    for dialogue in dialogues:
        members = [i for i, j in enumerate(jobs) if j.dialogue == dialogue]
        d_jobs = [jobs[i] for i in members]
        clips = [rendered[i][0] for i in members]
        stereo, starts = _assemble(d_jobs, clips, d_jobs[0].seed[:3])
        write_wav(out / "dialogues" / f"{dialogue}.wav", stereo)
        write_wav(out / "dialogues" / f"{dialogue}-mix.wav", stereo.sum(axis=0))
        timing = []
        for job, i, start in zip(d_jobs, members, starts):
            audio, controls, ratings = rendered[i]
            path = out / "utterances" / f"{dialogue}-{job.index:03d}.wav"
            write_wav(path, audio)
            end = start + audio.size / SAMPLE_RATE
            utterances.append(Utterance(
                audio=path, session=job.session, speaker=job.turn.speaker.id,
                role=job.turn.role, ratings=ratings, dialogue=dialogue,
                start=round(start, 3), end=round(end, 3), transcript=job.turn.text))
            truth.append({"audio": str(path.relative_to(out)),
                          "intensities": job.turn.affect.as_dict(),
                          "delivery": job.turn.delivery.as_dict(),
                          "controls": {k: round(v, 4) for k, v in controls.items()}})
            timing.append({"index": job.index, "role": job.turn.role,
                           "speaker": job.turn.speaker.id, "start": round(start, 3),
                           "end": round(end, 3), "text": job.turn.text,
                           "audio": str(path.relative_to(out))})
        meta = {"dialogue": dialogue, "session": d_jobs[0].session, "language":
                options.language, "tts": engine.name, "sample_rate": SAMPLE_RATE,
                "duration": round(stereo.shape[1] / SAMPLE_RATE, 3),
                "channels": ["staff", "customer"], "utterances": timing}
        (out / "dialogues" / f"{dialogue}.json").write_text(json.dumps(meta, indent=1,
                                                            ensure_ascii=False))
    write_manifest(out / "manifest.jsonl", utterances)
    if engine.attribution:  # the voice's licence asks for it wherever its speech goes
        (out / "ATTRIBUTION.txt").write_text(engine.attribution + "\n")
    with (out / "truth.jsonl").open("w") as f:
        f.writelines(json.dumps(t) + "\n" for t in truth)
    seconds = sum(u.end - u.start for u in utterances)
    print(f"wrote {len(utterances)} utterances ({seconds / 60:.1f} min of speech) in "
          f"{len(dialogues)} dialogues to {out} in {time.monotonic() - began:.1f} s "
          f"(voices: {engine.name})",
          file=log)
    return utterances
