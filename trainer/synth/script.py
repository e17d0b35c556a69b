"""Scripted sales dialogues: scenarios, synthetic voices, customer words and delivery.

A customer's words (synth.wording) and the mood in their voice (affect.MoodWalk) are
drawn independently, and the ratings mix the two, so the model must hear both: what
was said and how. Japanese lines are written as Japanese is, with kanji (voice_ja
speaks them; espeak-ng gets their kana reading).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.synth.affect import EMOTIONS, Affect, MoodWalk
from trainer.synth.wording import customer_words, rated

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
    voice: str          # espeak-ng variant ("+m3")
    pitch: int          # espeak-ng base pitch, 0..99
    rate: int           # espeak-ng base speed, words per minute
    accent: str = ""    # espeak-ng voice ("en" is British); "": the language's default


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

# English: every espeak-ng variant that sounds like a person, in the American and the
# British voice, each with its own base pitch and rate. (Other accents and a few
# variants are left to the held-out benchmarks: bench/generalisation.py.)
_ENGLISH_VARIANTS = ("m1", "m3", "m5", "m6", "m8", "f2", "f3", "f4", "Alicia", "Andy",
                     "belinda", "benjamin", "david", "edward", "linda", "steph", "john",
                     "max", "paul", "robert", "quincy", "aunty")
ENGLISH_SPEAKERS = tuple(
    Speaker(f"en{i + 1:02d}", f"+{variant}", 30 + (i * 37) % 40, 145 + (i * 23) % 40,
            "en-us" if i % 2 == 0 else "en")
    for i, variant in enumerate(_ENGLISH_VARIANTS))


def speakers(language: str) -> tuple[Speaker, ...]:
    """The corpus's voices in `language` (Japanese: the ones voice_ja knows)."""
    return ENGLISH_SPEAKERS if language == "en" else SPEAKERS

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


@dataclass(frozen=True)
class Turn:
    role: str
    speaker: Speaker
    text: str
    affect: Affect      # what a listener perceives: words and voice (the ratings)
    delivery: Affect    # the voice alone (the vocal controls)


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
            mood = staff_mood.next()
            script.append(Turn("staff", staff, staff_lines[k].format(**slots), mood, mood))
        else:
            delivery = customer_mood.next()
            line, lean = customer_words(rng, language, slots, closing=i >= turns - 2)
            heard = rated(lean, np.append(delivery.intensities, delivery.purchase))
            affect = Affect(intensities=heard[:len(EMOTIONS)], purchase=float(heard[-1]))
            script.append(Turn("customer", customer, line, affect, delivery))
    return script
