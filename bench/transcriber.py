"""The text path's price and what sharing the audio tower's pass costs in accuracy.

    python bench/transcriber.py [--bundle data/demo-bundle] [--clips 32]

On the generalisation benchmark's words-only clips (voices, engines and sentences never
used in training; bench/generalisation.py renders and caches them), side by side in one
run:

- audio path: the audio encoder alone (today's cost of an utterance);
- shared pass: the same encoder call also returning its frames, Whisper's decoder on the
  utterance's own frames (the shipped text path), and the transcript's sentence vector;
- separate pass: Whisper as trained, the encoder over the utterance padded with silence
  to 30 s, then the same decoder (what faster-whisper does);

each utterance alone (one-utterance batches, as a quiet station sees it), with word error
rate against the sentence spoken and the text path's purchase-intention AUC. FLOP are
counted from the model's dimensions: the decoder's cross-attention keys and values once
per utterance, then per token its self-attention, cross-attention, MLP and vocabulary
projection (2 FLOP a multiply-add).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PAD_SAMPLES = 30 * 16000


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    errors = sum(edit_distance(words(r), words(h)) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(words(r)) for r in refs))


def decoder_flop(frames: int, tokens: int, prompt: int, d: int, layers: int, vocab: int) -> float:
    """Greedy decoding of `tokens` after a `prompt` against `frames` encoder frames."""
    cross_kv = layers * 2 * (2 * frames * d * d)
    flop, seen = 0.0, 0
    for step in range(tokens + 1):
        new = prompt if step == 0 else 1
        seen += new
        per_layer = new * (2 * 4 * d * d            # self-attention projections
                           + 2 * 2 * d * d          # cross-attention query and output
                           + 2 * 2 * d * 4 * d      # MLP
                           + 2 * 2 * seen * d       # self-attention scores and mix
                           + 2 * 2 * frames * d)    # cross-attention scores and mix
        flop += layers * per_layer + 2 * d * vocab  # the last token's logits only
    return cross_kv + flop


def main() -> int:
    import generalisation as g
    from daemon.clips import ClipScorer
    from emoclap.transcript import encoder_frames

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "data" / "demo-bundle")
    ap.add_argument("--prompts", type=Path, default=REPO / "prompts")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "generalisation-cache")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another bundle of the same towers (e.g. exported with --int8-transcriber): "
                         "its shared pass as one more row, in the same run")
    args = ap.parse_args()
    clips = [c for c in g.plan() if c.condition == "words-only"]
    step = max(1, len(clips) // args.clips)
    clips = clips[::step][:args.clips]
    audio = g.render(clips, args.cache)
    scorer = ClipScorer(args.bundle, args.prompts)
    enc, reader, text = scorer.encoder, scorer.reader, scorer.text_encoder
    if not reader.reads_words:
        print(f"{args.bundle}: no transcriber in this bundle", file=sys.stderr)
        return 2
    tr = reader.transcriber
    spec = tr.spec
    others = {f"shared pass, {b.name}": ClipScorer(b, args.prompts).reader for b in args.also}
    times = {"audio path": [], "shared pass": [], "separate pass": [], **{n: [] for n in others}}
    said = {"shared pass": [], "separate pass": [], **{n: [] for n in others}}
    tokens = {"shared pass": 0, "separate pass": 0, **{n: 0 for n in others}}
    for a in audio[:2]:  # warm-up: first calls allocate
        enc.encode([a])
        reader.encode([a])
        for other in others.values():
            other.encode([a])
    for a in audio:
        t0 = time.perf_counter()
        enc.encode([a])
        t1 = time.perf_counter()
        _, frames = enc.encode_with_frames([a])
        f = frames[0][0][0]
        before = tr.tokens
        got = tr.transcribe([f], [a.size / 16000])
        text.embed_sentences(got)
        t2 = time.perf_counter()
        tokens["shared pass"] += tr.tokens - before
        padded = np.zeros(PAD_SAMPLES, np.float32)
        padded[:a.size] = a
        _, full = enc.encode_with_frames([padded])
        before = tr.tokens
        sep = tr.transcribe([full[0][0][0]], [a.size / 16000])
        text.embed_sentences(sep)
        t3 = time.perf_counter()
        tokens["separate pass"] += tr.tokens - before
        times["audio path"].append(t1 - t0)
        times["shared pass"].append(t2 - t1)
        times["separate pass"].append(t3 - t2)
        said["shared pass"].append(got[0])
        said["separate pass"].append(sep[0])
        for name, other in others.items():
            before = other.transcriber.tokens
            t4 = time.perf_counter()
            _, frames = other.encoder.encode_with_frames([a])
            o = other.transcriber.transcribe([frames[0][0][0]], [a.size / 16000])
            other.text_encoder.embed_sentences(o)
            times[name].append(time.perf_counter() - t4)
            tokens[name] += other.transcriber.tokens - before
            said[name].append(o[0])
    refs = [c.sentence for c in clips]
    labels = np.array([c.label for c in clips])
    vectors = scorer.bank.vectors
    k = vectors.names.index("purchase_intention")
    from emoclap.zeroshot import bipolar_margins

    d = int(full[0][0][0].shape[1])
    frames_mean = float(np.mean([encoder_frames(a.size) for a in audio]))
    vocab = tr.tokenizer.get_vocab_size()
    print(f"{len(audio)} words-only clips, mean {np.mean([a.size for a in audio]) / 16000:.2f} s, "
          f"one utterance per call, {args.bundle}\n")
    print("| path | ms per utterance (median) | p90 | tokens per utterance | WER | purchase-intention AUC (text) | decoder GFLOP per utterance |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| audio path only | {1000 * np.median(times['audio path']):.0f} | "
          f"{1000 * np.percentile(times['audio path'], 90):.0f} | | | | |")
    for name in ("shared pass", "separate pass", *others):
        emb = text.embed_sentences([s or "." for s in said[name]])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        m = bipolar_margins(emb, vectors, "text")[:, k]
        per = tokens[name] / len(audio)
        frames = PAD_SAMPLES // 320 if name == "separate pass" else frames_mean
        flop = decoder_flop(int(frames), int(round(per)), len(spec.prompt), d, spec.layers, vocab) / 1e9
        extra = " + the encoder over 30 s" if name == "separate pass" else " (encoder shared)"
        print(f"| {name}: text path{'' if name == 'separate pass' else ' added'} | {1000 * np.median(times[name]):.0f} | "
              f"{1000 * np.percentile(times[name], 90):.0f} | {per:.1f} | {wer(refs, said[name]):.3f} | "
              f"{g.auc(m[labels == 1], m[labels == 0]):.2f} | {flop:.2f}{extra} |")
    print("\nsome transcripts (sentence | shared | separate):")
    for r, s, p in list(zip(refs, said["shared pass"], said["separate pass"]))[:6]:
        print(f"- {r} | {s} | {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
