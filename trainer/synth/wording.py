"""What a customer says, drawn apart from how it is said.

In a store the words carry most of a purchase decision ("I'll take it" said flatly is
still a sale) and the voice carries arousal, with the rest in between. So a customer
line is made of speech acts drawn independently of the speaker's mood: each act leans
some labels (its `lean`, what the words alone convey), the delivery (affect.MoodWalk)
leans them all, and `rated` mixes the two per label by `WORDING_SHARE`. Neither gives
the other away: an eager refusal and a flat purchase are as common as their opposites.

Each act has many templates; slots ({item}, {feature}, {price}) take the scenario's
values, so the same intent reaches the model in many wordings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.synth.affect import EMOTIONS, PURCHASE

LABELS = (*EMOTIONS, PURCHASE)
# Per label, how much of the rating the words carry (the rest is the voice).
WORDING_SHARE = {"pleasant": 0.4, "aroused": 0.1, "dominant": 0.45, "credible": 0.5,
                 "interested": 0.5, "positive": 0.5, PURCHASE: 0.65}


@dataclass(frozen=True)
class Act:
    name: str
    weight: float                      # how often customers use it
    lean: dict[str, float]             # label -> [-1, 1]
    lines: dict[str, tuple[str, ...]]  # language -> templates

    def vector(self) -> np.ndarray:
        return np.array([self.lean.get(label, 0.0) for label in LABELS])


ACTS = (
    Act("buy", 0.12, {PURCHASE: 1.0, "interested": 0.4, "positive": 0.4, "pleasant": 0.3}, {
        "en": ("I'll take it.", "I'll take the {item}.", "Okay, I'm buying it.",
               "Let's do it, wrap it up for me.", "Where do I pay?", "I want this one.",
               "Sold, I'll have the {item}.", "I've decided, I'm getting the {item}.",
               "Can we do the paperwork now?", "Please put one aside for me, I'm buying it today.",
               "That's exactly what I need, I'll get it.", "Fine, {price} works for me, let's go ahead.",
               "I'd like to order one.", "Can I take it home today?", "Count me in.", "Deal.",
               "I'll buy it with the {feature}.", "Go ahead and book it for me.",
               "Yes, I want it.", "Let's sign the contract.", "Okay, I'll go for it.",
               "I'm ready to buy, what's the next step?", "Write it up, I'm getting one.",
               "You've sold me on the {feature}.", "I'll have one of these, please.",
               "That's the {item} for me, let's finish it now.", "I'll go with this one at {price}.",
               "Okay, where do I put my signature?", "I'm definitely taking the {item} home.",
               "We'll buy it, my wife loves it.", "I want to reserve it right now.",
               "Let's get the order started.", "I'm happy to pay {price} for this.",
               "Please process it, I'm keen to have it.", "Great, I'll buy the {item} today."),
        "ja": ("これにします。", "じゃあ、買います。", "{item}をください。", "これ、いただきます。",
               "今日買って帰ります。", "{price}なら決めます。", "契約をお願いします。",
               "{feature}付きで注文します。", "お会計はどちらですか。", "これで決まりです。",
               "一つお願いします。", "すぐに手続きしてください。"),
    }),
    Act("buy_detail", 0.08, {PURCHASE: 0.7, "interested": 0.7}, {
        "en": ("Do you have the {item} in stock?", "How soon could I have it?",
               "What do I need to sign?", "Is there a warranty if I get it today?",
               "Can I get it with the {feature}?", "What's the best way to pay for it?",
               "Can you hold it for me until Saturday?", "How long does delivery take?",
               "Is the {price} including tax?", "Can I pick it up tomorrow morning?",
               "Which form do I fill in?", "If I order today, when does it arrive?",
               "Do you take a deposit to secure it?", "Can I have the {feature} fitted before I collect it?",
               "What's the delivery fee to my house?", "Is there a discount if I pay in full now?",
               "How do I arrange the payment?"),
        "ja": ("在庫はありますか。", "いつ届きますか。", "支払い方法は何がありますか。",
               "今日買えば保証は付きますか。", "{feature}付きのものはありますか。",
               "土曜日まで取り置きできますか。", "{price}は税込みですか。"),
    }),
    Act("interest", 0.10, {"interested": 1.0, PURCHASE: 0.3, "aroused": 0.2}, {
        "en": ("How does the {feature} work?", "Tell me more about the {feature}.",
               "Can I try the {feature}?", "What else does the {item} come with?",
               "Could you show me how it works?", "Is the {feature} easy to use?",
               "Oh, what's that over there?", "Interesting, go on.",
               "What makes this {item} different?", "Can I see the {item} up close?"),
        "ja": ("{feature}はどういう仕組みですか。", "{feature}について詳しく教えてください。",
               "{feature}を試してもいいですか。", "ほかにはどんな機能がありますか。",
               "使い方を見せてもらえますか。", "{item}を近くで見てもいいですか。", "へえ、面白いですね。"),
    }),
    Act("praise", 0.09, {"positive": 1.0, "pleasant": 0.8, PURCHASE: 0.3}, {
        "en": ("That sounds great.", "Oh, I love that.", "Wow, the {feature} is lovely.",
               "This is really nice.", "That's fantastic.", "What a beautiful {item}.",
               "Brilliant, that's just what I hoped for.", "Oh, I like that a lot.",
               "That's wonderful news."),
        "ja": ("いいですね。", "素敵ですね。", "それは嬉しいです。", "わあ、気に入りました。",
               "{feature}、最高ですね。", "とてもきれいな{item}ですね。"),
    }),
    Act("complaint", 0.09, {"positive": -1.0, "pleasant": -0.8, PURCHASE: -0.3}, {
        "en": ("That's disappointing.", "Oh no, that's not good.", "The {feature} looks cheap.",
               "Honestly, I expected better.", "That's annoying.",
               "I don't like the {feature} at all.", "Ugh, that's awful.",
               "That's a real let-down.", "Well, that's a shame."),
        "ja": ("ちょっと残念ですね。", "それは困りますね。", "正直、がっかりしました。",
               "{feature}が安っぽいですね。", "もっと良いと思っていました。", "それは嫌ですね。"),
    }),
    Act("trust", 0.06, {"credible": 1.0, PURCHASE: 0.2}, {
        "en": ("That makes sense.", "I believe you.", "Good to know, thanks.",
               "Okay, that's clear.", "Right, I'll take your word for it.",
               "That matches what I read."),
        "ja": ("なるほど、納得しました。", "それなら安心です。", "よく分かりました。", "おっしゃる通りですね。"),
    }),
    Act("doubt", 0.06, {"credible": -1.0, PURCHASE: -0.3}, {
        "en": ("Are you sure about that?", "Really? I read something else.",
               "That sounds too good to be true.", "I'm not sure I believe that.",
               "Is that really true?", "Hmm, that's not what the reviews say.", "Everyone says that.", "I'll believe it when I see it."),
        "ja": ("本当ですか。", "ネットでは違うことが書いてありましたけど。", "うーん、どうでしょうね。",
               "話がうますぎませんか。", "それは信じにくいですね。"),
    }),
    Act("assertive", 0.06, {"dominant": 1.0}, {
        "en": ("I want a straight answer.", "Give me your best price.",
               "Show me the {feature} now.", "Don't waste my time.",
               "Just tell me the final price.", "I need this sorted today."),
        "ja": ("はっきり答えてください。", "一番安い値段を教えてください。",
               "今すぐ{feature}を見せてください。", "時間がないので手短にお願いします。"),
    }),
    Act("tentative", 0.06, {"dominant": -1.0}, {
        "en": ("Um, could I maybe ask something?", "I hope that's okay.",
               "Sorry to bother you.", "If it's not too much trouble, could you show me?",
               "Sorry, I don't really know much about these."),
        "ja": ("すみません、ちょっとよろしいですか。", "あの、一つお聞きしてもいいですか。",
               "無理でしたら、大丈夫です。", "お忙しいところすみません。"),
    }),
    Act("hesitate", 0.08, {PURCHASE: -0.5, "interested": -0.1}, {
        "en": ("I'll think about it.", "Maybe another time.", "I need to sleep on it.",
               "Let me talk it over at home first.", "I'm not ready to decide.",
               "I might come back next week.", "I'd like to compare a few first.",
               "I can't decide right now.", "Perhaps after payday.", "I'm still on the fence about it.",
               "Give me a few days to think."),
        "ja": ("少し考えておきます。", "また今度にします。", "家族と相談してからにします。",
               "まだ決められません。", "来週また来るかもしれません。"),
    }),
    Act("refuse", 0.10, {PURCHASE: -1.0, "interested": -0.5, "positive": -0.3}, {
        "en": ("It's not for me.", "No, I won't take it.", "{price} is far too much for me.",
               "I'm not buying it today.", "I'll pass on the {item}.",
               "No, thank you, I'm done here.", "That's not something I need.",
               "I'm going to say no.", "Forget it, I'm not interested in buying.",
               "I don't want the {item}, thanks.", "No deal, sorry.", "I won't be getting one.",
               "It's a no from me.", "I really can't justify {price}.", "I'm leaving it, thanks anyway.",
               "There's no way I'm buying that.", "I'd never pay that for a {item}.",
               "I've changed my mind, I don't want it.", "Nope, not for that price.",
               "Thanks for your time, but I'm not going to buy."),
        "ja": ("私には合わないと思います。", "やめておきます。", "{price}は高すぎます。",
               "今日は買いません。", "{item}はいりません。", "結構です、失礼します。"),
    }),
    Act("dismissive", 0.05, {"interested": -1.0, PURCHASE: -0.4}, {
        "en": ("Okay.", "Fine.", "I see.", "Right, whatever.", "Mm-hm.", "If you say so."),
        "ja": ("はい。", "そうですか。", "ふーん。", "まあ、どうでもいいです。"),
    }),
    Act("neutral", 0.05, {}, {
        "en": ("What time do you close tonight?", "Is there a lift to the next floor?",
               "My car is parked outside.", "I'm waiting for my sister.",
               "Do you have a customer car park?", "Is this the main entrance?"),
        "ja": ("今日は何時まで営業していますか。", "エレベーターはどこですか。",
               "車は外に停めてあります。", "妹を待っています。"),
    }),
)
_BY_NAME = {a.name: a for a in ACTS}
CLOSING = ("buy", "buy_detail", "hesitate", "refuse")
_WEIGHTS = np.array([a.weight for a in ACTS]) / sum(a.weight for a in ACTS)
_SHARE = np.array([WORDING_SHARE[label] for label in LABELS])
_JOIN = {"en": " ", "ja": ""}


def _opposed(a: Act, b: Act) -> bool:
    """Two acts that contradict each other on some label (a sale and a refusal)."""
    return bool(np.any(a.vector() * b.vector() < 0))


def draw_acts(rng: np.random.Generator, closing: bool) -> list[Act]:
    """One or two compatible acts; a closing line always says where the sale stands."""
    first = _BY_NAME[CLOSING[rng.integers(len(CLOSING))]] if closing else ACTS[rng.choice(len(ACTS), p=_WEIGHTS)]
    acts = [first]
    if rng.random() < 0.4:
        second = ACTS[rng.choice(len(ACTS), p=_WEIGHTS)]
        if second is not first and not _opposed(first, second):
            acts.insert(int(rng.integers(2)), second)
    return acts


def customer_words(rng: np.random.Generator, language: str, slots: dict[str, str],
                   closing: bool = False) -> tuple[str, np.ndarray]:
    """A customer line and what its words lean, [len(LABELS)] in [-1, 1]."""
    acts = draw_acts(rng, closing)
    lines = [a.lines[language][rng.integers(len(a.lines[language]))] for a in acts]
    lean = np.clip(sum(a.vector() for a in acts), -1.0, 1.0)
    return _JOIN[language].join(lines).format(**slots), lean


def rated(lean: np.ndarray, delivery: np.ndarray) -> np.ndarray:
    """The intensities a listener perceives: the words' lean and the voice's state, mixed
    per label; both [len(LABELS)] in [-1, 1]."""
    return np.clip(_SHARE * lean + (1.0 - _SHARE) * delivery, -1.0, 1.0)
