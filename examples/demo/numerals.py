"""Number readings num2words lacks: Mandarin in Chinese characters, and Japanese counters in kana.

Mandarin cardinals follow the standard reading (零 for skipped places, 十 not 一十 at the start,
两 for a leading 2 before 千/万 and for 2 before a measure word). Japanese uses num2words' kana
reading for cardinals (`reading=True`) plus the irregular counter readings below, because espeak-ng
reads Japanese only in kana.
"""

from __future__ import annotations

_ZH_DIGITS = "零一二三四五六七八九"


def _zh_section(number: int, leading: bool) -> str:
    """Read 1..9999; `leading` is True for the number's highest 4-digit section."""
    thousands, hundreds, tens, units = (number // 1000) % 10, (number // 100) % 10, (number // 10) % 10, number % 10
    parts: list[str] = []
    started = zero_pending = False
    for value, unit in ((thousands, "千"), (hundreds, "百"), (tens, "十"), (units, "")):
        if value == 0:
            zero_pending = started
            continue
        if zero_pending:
            parts.append("零")
            zero_pending = False
        if unit == "十" and value == 1 and leading and not started:
            parts.append("十")  # 十五, not 一十五
        elif unit == "千" and value == 2 and leading:
            parts.append("两千")
        else:
            parts.append(_ZH_DIGITS[value] + unit)
        started = True
    return "".join(parts)


def zh_cardinal(number: int, measure: bool = False) -> str:
    """Mandarin reading of 0 <= number < 10**8; `measure=True` reads a bare 2 as 两 (两公里, 两点)."""
    if not 0 <= number < 10**8:
        raise ValueError(f"zh_cardinal reads 0 <= number < 100000000, got {number}.")
    if number == 0:
        return "零"
    if number == 2 and measure:
        return "两"
    high, low = divmod(number, 10_000)
    if not high:
        return _zh_section(low, leading=True)
    text = ("两" if high == 2 else _zh_section(high, leading=True)) + "万"
    if low:
        text += ("零" if low < 1000 else "") + _zh_section(low, leading=False)
    return text



def ja_cardinal(number: int) -> str:
    """Japanese cardinal in hiragana (にじゅうさん), via num2words' kana reading."""
    from num2words import num2words

    if number < 0:
        raise ValueError(f"ja_cardinal reads non-negative numbers, got {number}.")
    return num2words(number, lang="ja", reading=True)


JA_MONTHS: tuple[str, ...] = (
    "いちがつ", "にがつ", "さんがつ", "しがつ", "ごがつ", "ろくがつ",
    "しちがつ", "はちがつ", "くがつ", "じゅうがつ", "じゅういちがつ", "じゅうにがつ",
)  # fmt: skip
"""Month names 1..12 in kana (index 0 is January)."""

_JA_DAY_SPECIAL = {
    1: "ついたち", 2: "ふつか", 3: "みっか", 4: "よっか", 5: "いつか", 6: "むいか", 7: "なのか",
    8: "ようか", 9: "ここのか", 10: "とおか", 14: "じゅうよっか", 20: "はつか", 24: "にじゅうよっか",
}  # fmt: skip

JA_WEEKDAYS: tuple[str, ...] = ("げつようび", "かようび", "すいようび", "もくようび", "きんようび", "どようび", "にちようび")
"""Weekday names in kana, Monday first (the order of Python's `date.weekday()`)."""

_JA_HOURS = ("れいじ", "いちじ", "にじ", "さんじ", "よじ", "ごじ", "ろくじ", "しちじ", "はちじ", "くじ", "じゅうじ", "じゅういちじ", "じゅうにじ")
_JA_MINUTES = {15: "じゅうごふん", 30: "さんじゅっぷん", 45: "よんじゅうごふん"}


def ja_day_of_month(day: int) -> str:
    """Day of the month 1..31 with its counter in kana: 1 -> ついたち, 5 -> いつか, 23 -> にじゅうさんにち."""
    if not 1 <= day <= 31:
        raise ValueError(f"ja_day_of_month reads days 1..31, got {day}.")
    if day in _JA_DAY_SPECIAL:
        return _JA_DAY_SPECIAL[day]
    units = day % 10
    reading = ja_cardinal(day)
    if units in (7, 9):  # 17 じゅうしちにち, 19 じゅうくにち, 27, 29
        reading = reading[: -len(ja_cardinal(units))] + ("しち" if units == 7 else "く")
    return reading + "にち"


def ja_clock_time(hour: int, minute: int = 0) -> str:
    """Clock time in kana: (7, 0) -> しちじ, (7, 30) -> しちじ さんじゅっぷん. Minutes: 0, 15, 30 or 45."""
    if not 0 <= hour <= 12:
        raise ValueError(f"ja_clock_time reads hours 0..12, got {hour}.")
    if minute == 0:
        return _JA_HOURS[hour]
    if minute not in _JA_MINUTES:
        raise ValueError(f"ja_clock_time reads minutes 0, 15, 30 or 45, got {minute}.")
    return f"{_JA_HOURS[hour]} {_JA_MINUTES[minute]}"
