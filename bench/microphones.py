"""How far a band-limited recording of the same speech moves each score.

    python bench/microphones.py [--bundles data/demo-bundle,OTHER] [--quick]

The generalisation benchmark's clean clips (words-only, delivery-only, both: voices,
engines and sentences never used in training; bench/generalisation.py renders and caches
them), each scored as recorded at 16 kHz and as the same speech recorded

- at 8 kHz: resampled to 8 kHz, stored as 16-bit PCM, read back by the daemon's own file
  reader (`emoclap.audio.read_mono`, which resamples to 16 kHz);
- through a telephone line: the same, band-passed to 300–3400 Hz first.

The 16-kHz reference is stored and read back the same way, so the band is the only
difference. For each path (audio, text, fused): the mean, 95th percentile and largest
change of a score (0–1) over every clip and emotion, and each condition's ROC AUC on
the band-limited copies beside the 16-kHz one.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, sosfiltfilt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import generalisation as g  # noqa: E402
from emoclap.audio import SAMPLE_RATE, read_mono  # noqa: E402

CLEAN = ("words-only", "delivery-only", "both")
PATHS = ("audio", "text", "fused")


def telephone(audio: np.ndarray, rate: int) -> np.ndarray:
    sos = butter(4, [300, 3400], "bandpass", fs=rate, output="sos")
    return sosfiltfilt(sos, audio).astype(np.float32)


def recorded(audio: np.ndarray, rate: int, band: bool, folder: Path, name: str) -> np.ndarray:
    """`audio` (16 kHz) as a 16-bit file at `rate` (through a telephone band if `band`),
    read back as the daemon reads a file."""
    x = audio if rate == SAMPLE_RATE else soxr.resample(audio, SAMPLE_RATE, rate, quality="HQ")
    if band:
        x = telephone(x, rate)
    path = folder / f"{name}.wav"
    sf.write(path, np.clip(x, -1, 1), rate, subtype="PCM_16")
    return read_mono(path)


def shifts(ref: np.ndarray, other: np.ndarray) -> dict:
    d = np.abs(other - ref)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return {"mean": None, "p95": None, "max": None}
    return {"mean": float(d.mean()), "p95": float(np.percentile(d, 95)), "max": float(d.max())}


def measure(bundle: Path, prompts: Path, clips, versions: dict[str, list[np.ndarray]]) -> dict:
    scorer, note = g.open_scorer(bundle, prompts, versions["16 kHz"][0])
    print(f"{bundle}: scoring with {note}", file=sys.stderr, flush=True)
    scored = {v: g.score_all(scorer, audio) for v, audio in versions.items()}
    names = scored["16 kHz"][0]
    ref = scored["16 kHz"][1]
    out = {"bundle": str(bundle), "scorer": note, "versions": {}}
    for v, (_, res) in scored.items():
        row = {"auc": {}, "shift": {}}
        for condition in CLEAN:
            emotion = g.CONDITIONS[condition][0]
            idx = np.array([i for i, c in enumerate(clips) if c.condition == condition])
            y, k = np.array([clips[i].label for i in idx]), names.index(emotion)
            row["auc"][condition] = {p: g.auc(res[p][idx, k][y == 1], res[p][idx, k][y == 0]) for p in PATHS}
        if v != "16 kHz":
            row["shift"] = {p: shifts(ref[p], res[p]) for p in PATHS}
            row["audio_shift_by_emotion"] = {n: shifts(ref["audio"][:, k], res["audio"][:, k])["mean"]
                                             for k, n in enumerate(names)}
        out["versions"][v] = row
    return out


def fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def table(report: dict) -> str:
    lines = ["| bundle | recording | path | mean / p95 / max score change | "
             + " | ".join(f"AUC {c}" for c in CLEAN) + " |",
             "|---|---|---|---|" + "---:|" * len(CLEAN)]
    for b in report["bundles"]:
        for v, row in b["versions"].items():
            for p in PATHS:
                s = row["shift"].get(p)
                change = "(reference)" if s is None else f"{fmt(s['mean'])} / {fmt(s['p95'])} / {fmt(s['max'])}"
                aucs = " | ".join(fmt(row["auc"][c][p]) for c in CLEAN)
                lines.append(f"| {b['bundle']} | {v} | {p} | {change} | {aucs} |")
    names = list(report["bundles"][0]["versions"]["8 kHz"]["audio_shift_by_emotion"])
    lines += ["", "Mean change of the audio path's score by emotion, 8 kHz / telephone:", "",
              "| bundle | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for b in report["bundles"]:
        by = [b["versions"][v]["audio_shift_by_emotion"] for v in ("8 kHz", "telephone 300–3400 Hz")]
        lines.append(f"| {b['bundle']} | " + " | ".join(f"{fmt(by[0][n])} / {fmt(by[1][n])}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", default=str(REPO / "data" / "demo-bundle"),
                    help="comma-separated bundle folders, scored on the same clips")
    ap.add_argument("--prompts", type=Path, default=REPO / "prompts")
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "generalisation-cache")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number here")
    ap.add_argument("--quick", action="store_true", help="a small subset, for a smoke test")
    args = ap.parse_args(argv)
    missing = g.check_tools()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    clips = [c for c in g.plan(args.quick) if c.condition in CLEAN]
    print(f"rendering {len(clips)} clips (cache {args.cache})", file=sys.stderr, flush=True)
    audio = g.render(clips, args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        versions = {"16 kHz": [recorded(a, SAMPLE_RATE, False, folder, f"w{i}") for i, a in enumerate(audio)],
                    "8 kHz": [recorded(a, 8000, False, folder, f"n{i}") for i, a in enumerate(audio)],
                    "telephone 300–3400 Hz": [recorded(a, 8000, True, folder, f"t{i}") for i, a in enumerate(audio)]}
    report = {"clips": len(clips), "quick": args.quick,
              "bundles": [measure(Path(b), args.prompts, clips, versions) for b in args.bundles.split(",")]}
    print(f"{len(clips)} clean clips of the generalisation benchmark; score change against the same "
          f"speech recorded at 16 kHz, over every clip and emotion (scores 0–1).\n")
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        plain = json.loads(json.dumps(report), parse_constant=lambda _: None)
        args.json.write_text(json.dumps(plain, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
