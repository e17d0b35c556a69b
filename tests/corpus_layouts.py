"""Few-clip copies of public emotion corpora in their published layouts and label formats,
spoken by espeak-ng, for the importer tests."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soxr

from emoclap.audio import write_wav
from tests.speech import say

TEXTS = ["I would like to see that one.", "That is far too expensive.",
         "Could you show me another colour?", "Maybe tomorrow."]


class Voices:
    """espeak-ng clips, spoken once per folder and written at any rate."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.cache: dict[int, np.ndarray] = {}

    def write(self, path: Path, i: int, rate: int = 16000) -> Path:
        if i % len(TEXTS) not in self.cache:
            self.cache[i % len(TEXTS)] = say(TEXTS[i % len(TEXTS)], self.folder)
        audio = self.cache[i % len(TEXTS)]
        if rate != 16000:
            audio = soxr.resample(audio, 16000, rate).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, audio * (0.5 + 0.1 * (i % 4)), rate)
        return path


def iemocap(root: Path, voices: Voices) -> Path:
    """Sessions 1 and 2, one dialogue each, four turns rated by two evaluators and the actor."""
    for s in (1, 2):
        session = root / f"Session{s}"
        dialog = f"Ses0{s}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        transcript = []
        for t, who in enumerate("FMFM"):
            turn = f"{dialog}_{who}00{t}"
            voices.write(session / "sentences" / "wav" / dialog / f"{turn}.wav", t + s)
            v, a = 1 + (t + s) % 5, 1 + (2 * t + s) % 5
            lines += [f"[{t * 3 + 0.5:.4f} - {t * 3 + 2.4:.4f}]\t{turn}\tneu\t[{v}.0000, {a}.0000, 3.0000]",
                      "C-E1:\tNeutral;\t()", "C-E2:\tFrustration;\t()",
                      f"A-E1:\tval {v}; act {a}; dom  3;\t()",
                      f"A-E2:\tval {1 + (v % 5)}; act {a}; dom  {1 + t % 5};\t(calm)",
                      f"A-{who}1:\tval {v}; act ; dom  2;\t()", ""]
            transcript.append(f"{turn} [{t * 3 + 0.5:08.4f}-{t * 3 + 2.4:08.4f}]: {TEXTS[(t + s) % 4]}")
        evaluation = session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        evaluation.parent.mkdir(parents=True)
        evaluation.write_text("\n".join(lines) + "\n")
        (session / "dialog" / "transcriptions").mkdir()
        (session / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(transcript) + "\n")
    return root


def msp_podcast(root: Path, voices: Voices) -> Path:
    labels = root / "Labels"
    labels.mkdir(parents=True)
    consensus = [["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]]
    detailed = [["FileName", "Annotation"]]
    for i in range(8):
        name = f"MSP-PODCAST_{1 + i // 4:04d}_{i:04d}.wav"
        voices.write(root / "Audios" / name, i)
        speaker = "Unknown" if i == 7 else str(100 + i // 2)
        consensus.append([name, "N", "4.0", "4.0", "4.0", speaker, "Female",
                          "Train" if i < 6 else "Development"])
        for w in range(3):
            a, v, d = 1 + (i + w) % 7, 1 + (3 * i + w) % 7, 1 + (i * w) % 7
            detailed.append([name, f"WORKER0000{w}; Neutral; Neutral; A:{a}.000000; V:{v}.000000; "
                                   f"D:{d}.000000;"])
    for name, rows in (("labels_consensus.csv", consensus), ("labels_detailed.csv", detailed)):
        with (labels / name).open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    (root / "Transcripts").mkdir()
    (root / "Transcripts" / "MSP-PODCAST_0001_0000.txt").write_text(TEXTS[0] + "\n")
    return root


def crema_d(root: Path, voices: Voices) -> Path:
    header = ["", "localid", "pos", "ans", "ttr", "queryType", "numTries", "clipNum", "questNum",
              "subType", "clipName", "sessionNums", "respEmo", "respLevel", "dispEmo", "dispVal",
              "dispLevel"]
    rows, n = [header], 0
    clips = [("1001", "IEO", "ANG", "HI"), ("1001", "TIE", "HAP", "MD"), ("1002", "DFA", "SAD", "LO"),
             ("1002", "IEO", "NEU", "XX"), ("1003", "MTI", "FEA", "HI"), ("1003", "TSI", "DIS", "MD")]
    answers = "AHSNFD"
    for i, (actor, sentence, emo, level) in enumerate(clips):
        name = f"{actor}_{sentence}_{emo}_{level}"
        voices.write(root / "AudioWAV" / f"{name}.wav", i)
        for rater, query in ((f"r{i % 3}", 1), (f"r{(i + 1) % 3}", 1), ("r9", 3)):
            n += 1
            resp = answers[(i + (rater == "r2")) % 6]
            rows.append([n, rater, n, f"{resp}_60", 1200, query, 0, i, n, 4, name, 7, resp,
                         str(40 + 15 * ((i + n) % 4)), emo[0], level, 50])
    with (root / "finishedResponses.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def ravdess(root: Path, voices: Voices) -> Path:
    i = 0
    for actor in ("01", "02"):
        for emotion, intensity in (("01", "01"), ("03", "02"), ("04", "01"), ("05", "02"), ("02", "01")):
            voices.write(root / f"Actor_{actor}" / f"03-01-{emotion}-{intensity}-01-01-{actor}.wav",
                         i, 48000)
            i += 1
    voices.write(root / "Actor_01" / "03-02-03-01-01-01-01.wav", 0, 48000)  # sung
    return root


def jvnv(root: Path, voices: Voices) -> Path:
    i = 0
    for speaker in ("F1", "M1"):
        for emotion in ("anger", "happy", "sad", "fear"):
            voices.write(root / "jvnv_v1" / speaker / emotion / "regular" /
                         f"{speaker}_{emotion}_regular_0{i % 3 + 1}.wav", i, 48000)
            i += 1
    return root


def generic(root: Path, voices: Voices) -> Path:
    rows = [["path", "session", "speaker", "role", "annotator", "pleasant", "aroused",
             "purchase_intention", "split", "transcript"]]
    for i in range(6):
        voices.write(root / "clips" / f"c{i}.wav", i, 8000)
        session, role = ("day1", "day2")[i // 3], ("customer", "staff")[i % 3 == 2]
        for a in ("ann1", "ann2"):
            pi = str(1 + (i * 2 + len(a)) % 7) if role == "customer" else ""
            rows.append([f"clips/c{i}.wav", session, f"{session}-{role}{i % 3 // 2}", role, a,
                         str(1 + (i + (a == "ann2")) % 7), "" if a == "ann2" else str(7 - i), pi,
                         "train", TEXTS[i % 4]])
    with (root / "ratings.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root / "ratings.csv"
