"""Scripted sales dialogues: scenarios, synthetic voices, and wording that follows mood.

Customer wording leans on the speaker's hidden state (a pleased customer says pleased
things more often), but every phrase can occur in any mood, so words alone never give
a label away. Japanese lines are written as Japanese is, with kanji (voice_ja speaks
them; espeak-ng gets their kana reading).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.synth.affect import EMOTIONS, Affect, MoodWalk

LANGUAGES = ("en", "ja")


@dataclass(frozen=True)
class Scenario:
    key: str
    item: dict[str, str]          # language -> the product
    features: dict[str, tuple[str, ...]]
    price: dict[str, str]


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: str          # espeak-ng voice+variant
    pitch: int          # espeak-ng base pitch, 0..99
    rate: int           # espeak-ng base speed, words per minute


SCENARIOS = (
    Scenario("car", {"en": "car", "ja": "車"},
             {"en": ("hybrid engine", "heated seats", "five year warranty"),
              "ja": ("ハイブリッドエンジン", "シートヒーター", "五年保証")},
             {"en": "twenty eight thousand dollars", "ja": "二百八十万円"}),
    Scenario("phone", {"en": "phone", "ja": "スマートフォン"},
             {"en": ("camera", "battery", "screen"),
              "ja": ("カメラ", "バッテリー", "画面")},
             {"en": "nine hundred dollars", "ja": "十五万円"}),
    Scenario("sofa", {"en": "sofa", "ja": "ソファー"},
             {"en": ("leather cover", "recliner", "free delivery"),
              "ja": ("本革のカバー", "リクライニング機能", "無料配送")},
             {"en": "two thousand dollars", "ja": "二十万円"}),
    Scenario("travel", {"en": "holiday package", "ja": "旅行プラン"},
             {"en": ("beach hotel", "guided tour", "flight upgrade"),
              "ja": ("海辺のホテル", "ガイド付きツアー", "座席のアップグレード")},
             {"en": "three thousand dollars", "ja": "三十万円"}),
    Scenario("coffee", {"en": "coffee machine", "ja": "コーヒーメーカー"},
             {"en": ("milk frother", "timer", "grinder"),
              "ja": ("ミルクフォーマー", "タイマー", "豆を挽くミル")},
             {"en": "four hundred dollars", "ja": "四万円"}),
    Scenario("gym", {"en": "gym membership", "ja": "ジムの会員プラン"},
             {"en": ("personal trainer", "pool", "sauna"),
              "ja": ("パーソナルトレーナー", "プール", "サウナ")},
             {"en": "sixty dollars a month", "ja": "月額六千円"}),
)

SPEAKERS = (
    Speaker("spk1", "+m3", 38, 165),
    Speaker("spk2", "+f2", 62, 158),
    Speaker("spk3", "+f4", 55, 176),
    Speaker("spk4", "+m1", 30, 150),
    Speaker("spk5", "+m6", 47, 170),
)
VOICE_LANGUAGE = {"en": "en-us", "ja": "ja"}

# Customer phrases per emotion: (phrases of the positive pole, of the negative pole).
_CUSTOMER = {
    "en": {
        "reaction": (("That sounds great.", "Oh, I like that.", "Nice, really nice.",
                      "That's lovely."),
                     ("Hmm.", "I'm not so sure.", "That's a bit disappointing.",
                      "Oh, no.")),
        "interest": (("Tell me more about the {feature}.", "How does the {feature} work?",
                      "Can I see the {item} up close?", "What else does it have?"),
                     ("Okay.", "Fine.", "I see.", "Right, whatever.")),
        "trust": (("That makes sense.", "I believe you.", "Good to know."),
                  ("Are you sure about that?", "Really? I read otherwise.",
                   "Well, um, I don't know.")),
        "dominance": (("I want a straight answer.", "Give me your best price.",
                       "Show me the {feature} now."),
                      ("Sorry, if you don't mind,", "Um, could I maybe ask something?",
                       "I hope that's okay.")),
        "closing": (("I think I'll take it.", "Let's do it.", "Where do I sign?"),
                    ("I'll think about it.", "Maybe another time.", "It's not for me.")),
    },
    "ja": {
        "reaction": (("いいですね。", "素敵ですね。", "それは嬉しいです。", "わあ、気に入りました。"),
                     ("うーん。", "ちょっと残念ですね。", "それは困りますね。", "正直、がっかりしました。")),
        "interest": (("{feature}について、もう少し詳しく教えてください。", "{feature}はどういう仕組みですか。",
                      "{item}を近くで見てもいいですか。", "ほかにはどんな機能がありますか。"),
                     ("はい。", "そうですか。", "ふーん。", "まあ、どうでもいいです。")),
        "trust": (("なるほど、納得しました。", "それなら安心です。", "よく分かりました。"),
                  ("本当ですか。", "ネットでは違うことが書いてありましたけど。", "うーん、どうでしょうね。")),
        "dominance": (("はっきり答えてください。", "一番安い値段を教えてください。",
                       "今すぐ{feature}を見せてください。"),
                      ("すみません、ちょっとよろしいですか。", "あの、一つお聞きしてもいいですか。",
                       "無理でしたら、大丈夫です。")),
        "closing": (("これにします。", "じゃあ、買います。", "どこにサインすればいいですか。"),
                    ("少し考えておきます。", "また今度にします。", "私には合わないと思います。")),
    },
}

_STAFF = {
    "en": ("Welcome! How can I help you today?",
           "This {item} comes with a {feature}.",
           "Many customers love the {feature}.",
           "The price is {price}.",
           "We have a special offer this week.",
           "Would you like to try the {feature}?",
           "I can also show you the {feature}.",
           "Do you have any questions?",
           "Thank you for visiting us today."),
    "ja": ("いらっしゃいませ。何かお探しですか。",
           "こちらの{item}には、{feature}が付いています。",
           "{feature}は、お客様にとても人気があります。",
           "お値段は{price}です。",
           "今週は特別キャンペーン中です。",
           "よろしければ、{feature}をお試しになりませんか。",
           "{feature}について、詳しくご説明しますね。",
           "ご予算はどのくらいでお考えですか。",
           "何かご質問はございますか。",
           "本日はご来店ありがとうございます。"),
}

# Japanese writes sentences without spaces between them.
_JOIN = {"en": " ", "ja": ""}

# Which emotion leans each customer phrase slot, and how often the slot is used.
_SLOTS = (("reaction", ("positive", "pleasant"), 0.9),
          ("interest", ("interested",), 0.8),
          ("trust", ("credible",), 0.5),
          ("dominance", ("dominant",), 0.35))


@dataclass(frozen=True)
class Turn:
    role: str
    speaker: Speaker
    text: str
    affect: Affect


def _lean(rng: np.random.Generator, intensity: float, phrases: tuple[tuple[str, ...], ...]):
    """Pick the positive-pole phrases with probability rising with the intensity."""
    positive = rng.random() < 1.0 / (1.0 + np.exp(-2.5 * intensity))
    options = phrases[0] if positive else phrases[1]
    return options[rng.integers(len(options))]


def _customer_line(rng, affect: Affect, language: str, slots: dict, closing: bool) -> str:
    bank = _CUSTOMER[language]
    level = dict(zip(EMOTIONS, affect.intensities))
    parts = []
    for slot, emotions, use in _SLOTS:
        if rng.random() < use:
            parts.append(_lean(rng, float(np.mean([level[e] for e in emotions])), bank[slot]))
    if closing:
        parts.append(_lean(rng, affect.purchase, bank["closing"]))
    if not parts:
        parts.append(_lean(rng, level["interested"], bank["interest"]))
    if len(parts) > 2 and rng.random() < 0.5:
        parts[0], parts[1] = parts[1], parts[0]
    return _JOIN[language].join(parts).format(**slots)


def write_dialogue(rng: np.random.Generator, scenario: Scenario, staff: Speaker,
                   customer: Speaker, turns: int, language: str = "en") -> list[Turn]:
    """Alternating staff/customer turns, staff first, customer last (a closing line)."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    staff_mood, customer_mood = MoodWalk(rng, "staff"), MoodWalk(rng, "customer")
    staff_lines = _STAFF[language]
    script = []
    for i in range(turns):
        feature = scenario.features[language][rng.integers(3)]
        slots = {"item": scenario.item[language], "feature": feature,
                 "price": scenario.price[language]}
        if i % 2 == 0:
            k = 0 if i == 0 else 1 + rng.integers(len(staff_lines) - 1)
            script.append(Turn("staff", staff, staff_lines[k].format(**slots),
                               staff_mood.next()))
        else:
            affect = customer_mood.next()
            line = _customer_line(rng, affect, language, slots, closing=i >= turns - 2)
            script.append(Turn("customer", customer, line, affect))
    return script
