"""Parallel texts for the demo corpus: semantic items rendered exactly in every language.

A `SemanticItem` is a frame ("price", "today", ...) with its values (23, "EUR"). Every language renders
the same values with num2words (number words), babel's CLDR data (currency, unit, month and weekday
names, plural forms) and `numerals` (Mandarin, Japanese kana), into short fixed sentence frames written
by hand, so ("de", "Der Preis beträgt dreizehn Euro.") is an exact translation of
("en", "The price is thirteen euros.").

The content is lexical on purpose: every slot takes one of a few dozen words that translate one to one (numbers
2-20, days 1-20, CLDR's months, weekdays, currencies and units), so a small model can learn it from the corpus,
and held-out test items are new *combinations* of known words. Compositional number words (23, 1984) are not
drawn: learning to read and translate them needs far more data than the demo's budget. Japanese is written in kana, the only script espeak-ng reads.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from examples.demo.numerals import (
    JA_MONTHS,
    JA_WEEKDAYS,
    ja_cardinal,
    ja_clock_time,
    ja_day_of_month,
    zh_cardinal,
)

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "ru", "zh", "ja")
"""Languages the demo renders (ISO 639-1 codes; "zh" is Mandarin)."""

CURRENCIES: tuple[str, ...] = ("EUR", "USD", "CHF", "CAD", "AUD", "RUB")  # masculine or invariable everywhere
UNITS: tuple[str, ...] = (
    "length-kilometer", "length-meter", "length-centimeter", "length-millimeter", "mass-kilogram", "mass-gram",
    "volume-liter", "volume-milliliter",
)  # fmt: skip
NUMBERS: tuple[int, ...] = tuple(range(2, 21))  # 1 is singular (and gendered) in most languages
DAYS: tuple[int, ...] = tuple(range(1, 21))
MINUTES: tuple[int, ...] = (0, 15, 30, 45)
HOURS: tuple[int, ...] = tuple(range(2, 13))  # 1 o'clock is singular and irregular in most languages

FRAME_KINDS: dict[str, str] = {
    "amount": "amount",
    "price": "amount",
    "quantity": "quantity",
    "need": "quantity",
    "today": "date",
    "train": "time",
}
"""Sentence frame -> kind of content. Frames of one kind share content (13 EUR is in "amount" and "price")."""

FRAME_WEIGHTS: dict[str, float] = {"amount": 0.6, "price": 1.0, "quantity": 0.6, "need": 1.0, "today": 1.4, "train": 0.4}
"""Sampling weight of each frame ("train" has only 44 distinct times, so it is drawn rarely)."""

@dataclass(frozen=True, order=True)
class SemanticItem:
    """A frame with its values; `content` (kind, values) identifies what is said, whatever the frame."""

    frame: str
    values: tuple

    def __post_init__(self) -> None:
        if self.frame not in FRAME_KINDS:
            raise ValueError(f"Unknown frame {self.frame!r}; choose one of {', '.join(FRAME_KINDS)}.")

    @property
    def content(self) -> tuple[str, tuple]:
        return FRAME_KINDS[self.frame], self.values


def sample_item(rng: random.Random) -> SemanticItem:
    """Draw one semantic item (frame by `FRAME_WEIGHTS`, values uniformly within their band)."""
    frame = rng.choices(list(FRAME_WEIGHTS), weights=list(FRAME_WEIGHTS.values()))[0]
    kind = FRAME_KINDS[frame]
    if kind == "amount":
        values: tuple = (rng.choice(NUMBERS), rng.choice(CURRENCIES))
    elif kind == "quantity":
        values = (rng.choice(NUMBERS), rng.choice(UNITS))
    elif kind == "date":
        values = (rng.randrange(7), rng.choice(DAYS), rng.randint(1, 12))
    else:
        values = (rng.choice(HOURS), rng.choice(MINUTES))
    return SemanticItem(frame, values)


def _clean(text: str) -> str:
    """Turn CLDR's no-break spaces into spaces and collapse runs of spaces."""
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ").replace("\u202f", " ")).strip()


class Renderer:
    """Renders semantic items in one language. Subclasses hold the frames and the grammar they need."""

    language: str
    templates: dict[str, str]

    @cached_property
    def locale(self):
        from babel import Locale

        return Locale.parse(self.language)

    # Numbers -----------------------------------------------------------------------------------
    def cardinal(self, number: int) -> str:
        from num2words import num2words

        return num2words(number, lang=self.language)

    def attributive(self, number: int) -> str:
        """The cardinal as it stands before a (masculine) noun; the plain cardinal unless overridden."""
        return self.cardinal(number)

    def ordinal(self, number: int) -> str:
        from num2words import num2words

        return num2words(number, lang=self.language, to="ordinal")

    # CLDR names --------------------------------------------------------------------------------
    def currency_name(self, code: str, count: int) -> str:
        from babel.numbers import get_currency_name

        return get_currency_name(code, count=count, locale=self.locale)

    def unit_pattern(self, unit: str, count: int) -> str:
        """CLDR's pattern for `count` of `unit` ("{0} Kilometer"), long form, else short."""
        patterns = self.locale._data["unit_patterns"][unit]
        plural = self.locale.plural_form(count)
        for length in ("long", "short"):
            if length in patterns:
                forms = patterns[length]
                pattern = forms.get(plural) or forms.get("other")
                if pattern:
                    return pattern
        raise KeyError(f"CLDR has no {unit} pattern for locale {self.language!r}.")

    def month(self, month: int) -> str:
        return self.locale.months["format"]["wide"][month]

    def weekday(self, weekday: int) -> str:
        return self.locale.days["format"]["wide"][weekday]

    # Phrases -----------------------------------------------------------------------------------
    def amount(self, number: int, currency: str) -> str:
        return f"{self.attributive(number)} {self.currency_name(currency, number)}"

    def quantity(self, number: int, unit: str) -> str:
        return self.unit_pattern(unit, number).replace("{0}", self.attributive(number))

    def date(self, day: int, month: int) -> str:
        raise NotImplementedError

    def time(self, hour: int, minute: int) -> str:
        """The clock time with its preposition ("at seven fifteen")."""
        raise NotImplementedError

    def render(self, item: SemanticItem) -> str:
        """The item's text in this language."""
        kind = FRAME_KINDS[item.frame]
        values = item.values
        if kind == "amount":
            slots = {"amount": self.amount(*values)}
        elif kind == "quantity":
            slots = {"quantity": self.quantity(*values)}
        elif kind == "date":
            weekday, day, month = values
            slots = {"weekday": self.weekday(weekday), "date": self.date(day, month)}
        else:
            slots = {"time": self.time(*values)}
        return _clean(self.templates[item.frame].format(**slots))

    def spoken(self, item: SemanticItem) -> str:
        """The text given to the speech synthesizer; the written text unless spelling and sound differ."""
        return self.render(item)


class EnglishRenderer(Renderer):
    language = "en"
    templates = {
        "amount": "{amount}",
        "price": "The price is {amount}.",
        "quantity": "{quantity}",
        "need": "We need {quantity}.",
        "today": "Today is {weekday}, {date}.",
        "train": "The train leaves {time}.",
    }

    def cardinal(self, number: int) -> str:
        return super().cardinal(number).replace(",", "")  # "four thousand seven hundred and two"

    def date(self, day: int, month: int) -> str:
        return f"the {self.ordinal(day)} of {self.month(month)}"

    def time(self, hour: int, minute: int) -> str:
        if minute == 0:
            return f"at {self.cardinal(hour)} o'clock"
        return f"at {self.cardinal(hour)} {self.cardinal(minute)}"  # at seven fifteen



class GermanRenderer(Renderer):
    language = "de"
    templates = {
        "amount": "{amount}",
        "price": "Der Preis beträgt {amount}.",
        "quantity": "{quantity}",
        "need": "Wir brauchen {quantity}.",
        "today": "Heute ist {weekday}, {date}.",
        "train": "Der Zug fährt {time} ab.",
    }

    def attributive(self, number: int) -> str:
        text = self.cardinal(number)
        return text[:-1] if text.endswith("eins") else text  # "einhundertein Euro"

    def date(self, day: int, month: int) -> str:
        return f"der {self.ordinal(day)} {self.month(month)}"  # der fünfte Mai

    def time(self, hour: int, minute: int) -> str:
        return f"um {self.cardinal(hour)} Uhr" + (f" {self.cardinal(minute)}" if minute else "")



class FrenchRenderer(Renderer):
    language = "fr"
    templates = {
        "amount": "{amount}",
        "price": "Le prix est de {amount}.",
        "quantity": "{quantity}",
        "need": "Il nous faut {quantity}.",
        "today": "Aujourd'hui, c'est {weekday} {date}.",
        "train": "Le train part {time}.",
    }

    def date(self, day: int, month: int) -> str:
        return f"{'premier' if day == 1 else self.cardinal(day)} {self.month(month)}"  # lundi cinq mai

    def time(self, hour: int, minute: int) -> str:
        return f"à {self.cardinal(hour)} heures" + (f" {self.cardinal(minute)}" if minute else "")



class SpanishRenderer(Renderer):
    language = "es"
    templates = {
        "amount": "{amount}",
        "price": "El precio es de {amount}.",
        "quantity": "{quantity}",
        "need": "Necesitamos {quantity}.",
        "today": "Hoy es {weekday}, {date}.",
        "train": "El tren sale {time}.",
    }

    def attributive(self, number: int) -> str:
        text = self.cardinal(number)  # uno -> un before a masculine noun: veintiún euros, ciento un metros
        if text.endswith("veintiuno"):
            return text[: -len("veintiuno")] + "veintiún"
        return text[:-1] if text.endswith("uno") else text

    def date(self, day: int, month: int) -> str:
        return f"{'primero' if day == 1 else self.cardinal(day)} de {self.month(month)}"  # cinco de mayo

    def time(self, hour: int, minute: int) -> str:
        return f"a las {self.cardinal(hour)}" + (f" y {self.cardinal(minute)}" if minute else "")



class ItalianRenderer(Renderer):
    language = "it"
    templates = {
        "amount": "{amount}",
        "price": "Il prezzo è di {amount}.",
        "quantity": "{quantity}",
        "need": "Ci servono {quantity}.",
        "today": "Oggi è {weekday} {date}.",
        "train": "Il treno parte {time}.",
    }

    def cardinal(self, number: int) -> str:
        text = super().cardinal(number)
        return text[:-3] + "tré" if text.endswith("tre") and len(text) > 3 else text  # centoventitré

    def date(self, day: int, month: int) -> str:
        return f"{'primo' if day == 1 else self.cardinal(day)} {self.month(month)}"  # lunedì cinque maggio

    def time(self, hour: int, minute: int) -> str:
        return f"alle {self.cardinal(hour)}" + (f" e {self.cardinal(minute)}" if minute else "")



class RussianRenderer(Renderer):
    language = "ru"
    templates = {
        "amount": "{amount}",
        "price": "Цена составляет {amount}.",
        "quantity": "{quantity}",
        "need": "Нам нужно {quantity}.",
        "today": "Сегодня {weekday}, {date}.",
        "train": "Поезд отправляется {time}.",
    }

    def cardinal(self, number: int) -> str:
        text = super().cardinal(number)
        return text.removeprefix("одна ") if text.startswith("одна тысяча") else text  # тысяча девятьсот

    def date(self, day: int, month: int) -> str:
        from num2words import num2words

        # Neuter ordinal + month in the genitive (CLDR's format form): пятое мая.
        return f"{num2words(day, lang='ru', to='ordinal', gender='n')} {self.month(month)}"

    def time(self, hour: int, minute: int) -> str:
        if minute:
            return f"в {self.cardinal(hour)} {self.cardinal(minute)}"  # в семь пятнадцать
        return "в " + self.unit_pattern("duration-hour", hour).replace("{0}", self.cardinal(hour))  # в пять часов



class MandarinRenderer(Renderer):
    language = "zh"
    templates = {
        "amount": "{amount}",
        "price": "价格是{amount}。",
        "quantity": "{quantity}",
        "need": "我们需要{quantity}。",
        "today": "今天是{date}，{weekday}。",
        "train": "火车{time}出发。",
    }

    def cardinal(self, number: int) -> str:
        return zh_cardinal(number)

    def attributive(self, number: int) -> str:
        return zh_cardinal(number, measure=True)  # 两公里

    def amount(self, number: int, currency: str) -> str:
        return f"{self.attributive(number)}{self.currency_name(currency, number)}"

    def date(self, day: int, month: int) -> str:
        return f"{self.month(month)}{zh_cardinal(day)}日"  # 五月五日

    def time(self, hour: int, minute: int) -> str:
        return f"{zh_cardinal(hour, measure=True)}点" + (f"{zh_cardinal(minute)}分" if minute else "")



_KANA = re.compile(r"^[\u3040-\u309f\u30a0-\u30ff 。、]*$")


class JapaneseRenderer(Renderer):
    """Japanese in kana (hiragana, katakana for loanwords), spaces between phrases."""

    language = "ja"
    templates = {
        "amount": "{amount}",
        "price": "ねだんは {amount} です。",
        "quantity": "{quantity}",
        "need": "{quantity} が ひつようです。",
        "today": "きょうは {date} {weekday} です。",
        "train": "でんしゃは {time} でます。",
    }
    currency_kana = {"米ドル": "べいドル"}  # CLDR writes 米 in kanji
    topic_particles = {"きょうは": "きょうわ", "ねだんは": "ねだんわ", "でんしゃは": "でんしゃわ"}  # は is said わ

    def cardinal(self, number: int) -> str:
        return ja_cardinal(number)

    def currency_name(self, code: str, count: int) -> str:
        name = super().currency_name(code, count)
        return self.currency_kana.get(name, name)

    def month(self, month: int) -> str:
        return JA_MONTHS[month - 1]

    def weekday(self, weekday: int) -> str:
        return JA_WEEKDAYS[weekday]

    def date(self, day: int, month: int) -> str:
        return f"{self.month(month)} {ja_day_of_month(day)}"  # ごがつ いつか

    def time(self, hour: int, minute: int) -> str:
        return ja_clock_time(hour, minute) + "に"  # しちじに


    def render(self, item: SemanticItem) -> str:
        text = super().render(item)
        if not _KANA.match(text):
            raise ValueError(f"Japanese text {text!r} for {item} is not all kana; espeak-ng reads only kana.")
        return text

    def spoken(self, item: SemanticItem) -> str:
        """espeak-ng reads the topic particle は as "ha"; it is pronounced "wa"."""
        text = self.render(item)
        for written, said in self.topic_particles.items():
            text = text.replace(written, said)
        return text


RENDERERS: dict[str, type[Renderer]] = {
    cls.language: cls
    for cls in (EnglishRenderer, GermanRenderer, FrenchRenderer, SpanishRenderer, ItalianRenderer, RussianRenderer,
                MandarinRenderer, JapaneseRenderer)
}  # fmt: skip

_renderer_cache: dict[str, Renderer] = {}


def get_renderer(language: str) -> Renderer:
    """The (cached) renderer for `language`; raises with the supported codes otherwise."""
    if language not in RENDERERS:
        raise ValueError(f"The demo corpus has no texts for language {language!r}; choose from {', '.join(LANGUAGES)}.")
    if language not in _renderer_cache:
        _renderer_cache[language] = RENDERERS[language]()
    return _renderer_cache[language]


def render(item: SemanticItem, language: str) -> str:
    """`item` as text in `language`."""
    return get_renderer(language).render(item)


def spoken_text(item: SemanticItem, language: str) -> str:
    """`item` as the synthesizer should read it in `language` (differs from `render` only where spelling misleads)."""
    return get_renderer(language).spoken(item)


@dataclass(frozen=True)
class ItemSplits:
    """Semantic items per split: dev and test are shared by all languages, train is drawn per language."""

    train: dict[str, list[SemanticItem]]
    dev: list[SemanticItem]
    test: list[SemanticItem]


def _distinct_items(rng: random.Random, count: int, excluded: set) -> list[SemanticItem]:
    items: list[SemanticItem] = []
    seen = set(excluded)
    for _ in range(count * 1000):
        if len(items) == count:
            break
        item = sample_item(rng)
        if item.content not in seen:
            seen.add(item.content)
            items.append(item)
    if len(items) < count:
        raise ValueError(f"Could only draw {len(items)} of {count} distinct held-out items; ask for fewer.")
    return items


def make_item_splits(
    languages: Sequence[str], train_items_per_language: int, dev_items: int, test_items: int, seed: int
) -> ItemSplits:
    """Draw test, then dev, then per-language train items; no content (hence no text) of dev or test is in train.

    Train items avoid repeating (frame, values) within a language as long as the pool allows.
    """
    for language in languages:
        get_renderer(language)  # validate codes early
    rng = random.Random(f"part-demo-corpus/{seed}")
    test = _distinct_items(rng, test_items, excluded=set())
    dev = _distinct_items(rng, dev_items, excluded={item.content for item in test})
    held_out = {item.content for item in test + dev}
    train: dict[str, list[SemanticItem]] = {}
    for language in languages:
        chosen: list[SemanticItem] = []
        used: set[SemanticItem] = set()
        while len(chosen) < train_items_per_language:
            for _ in range(100):
                item = sample_item(rng)
                if item.content not in held_out and item not in used:
                    break
            else:  # a small frame is exhausted: repeat an item rather than loop forever
                while (item := sample_item(rng)).content in held_out:
                    pass
            used.add(item)
            chosen.append(item)
        train[language] = chosen
    return ItemSplits(train=train, dev=dev, test=test)
