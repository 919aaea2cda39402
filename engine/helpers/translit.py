"""Cyrillic → Latin for SMS.

One Cyrillic letter forces the whole SMS into UCS-2 (70 characters a part instead
of 160), so a Russian text sent in Latin letters costs a half or a third as much.
The result has to stay readable to the Russian-speaking recipient, not satisfy a
passport office.
"""

from __future__ import annotations

import re
import unicodedata

import iuliia

__all__ = ["to_latin", "needs_translit"]

# MOSMETRO, not WIKIPEDIA or a GOST: it writes what Russians themselves type in
# informal translit ("Esche schet, obyavlenie" rather than "Yeshchyo schyot,
# obyavleniye"), uses no apostrophes or diacritics (all of it is GSM-7), and is the
# shortest of the readable schemas, which is the point of transliterating at all.
# It folds ё into e, as most Russian writing does anyway.
_SCHEMA = iuliia.MOSMETRO

# Cyrillic, Cyrillic Supplement, Extended-A/B/C.
_CYRILLIC = re.compile(r"[\u0400-\u052F\u1C80-\u1C8F\u2DE0-\u2DFF\uA640-\uA69F]")

# Same notion of "word" as iuliia's own splitter (\b), so context rules
# (word start, endings like -ый) see the same words.
_WORD = re.compile(r"\w+")

_VOWELS = set("аеёиоуыэюяіїєў")

# Ukrainian/Belarusian letters the Russian schema leaves untouched. Each value is
# (at word start or after a vowel, elsewhere): є and ї are iotated ("ye", "yi")
# only there, just as Russian е/ё/ю/я are.
_UK_BE = {
    "і": ("i", "i"),
    "ї": ("yi", "i"),
    "є": ("ye", "e"),
    "ґ": ("g", "g"),
    "ў": ("u", "u"),
}

# A last resort for other Cyrillic alphabets a shop's customers may write in
# (Kazakh, Serbian, Macedonian…), so they do not keep the message in UCS-2.
_OTHER = {
    "ә": "a", "ғ": "g", "қ": "k", "ң": "n", "ө": "o", "ұ": "u", "ү": "u", "һ": "h",
    "ђ": "dj", "ј": "j", "љ": "lj", "њ": "nj", "ћ": "c", "џ": "dz",
    "ѓ": "gj", "ќ": "kj", "ѕ": "dz", "ѣ": "e", "ѳ": "f", "ѵ": "i",
    "ӏ": "",
}


def needs_translit(text: str) -> bool:
    """True when `text` contains any Cyrillic letter."""
    return isinstance(text, str) and _CYRILLIC.search(text) is not None


def to_latin(text: str) -> str:
    """Transliterate Cyrillic to Latin; everything else passes through unchanged.

    "Заказ" → "Zakaz", an all-capitals word stays all capitals ("ЩИ" → "SCHI"),
    and "№" becomes "N" since it is not in the GSM-7 alphabet and "N123" is how
    Russian writers spell it in Latin.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if not needs_translit(text):
        return text.replace("№", "N")
    # A decomposed "й" (и + combining breve) would otherwise leave a stray
    # combining mark that drags the message back into UCS-2.
    text = unicodedata.normalize("NFC", text).replace("№", "N")
    return _WORD.sub(_word, text)


def _word(match: re.Match[str]) -> str:
    word = match.group()
    if not needs_translit(word):
        return word
    latin = _SCHEMA.translate(_pre(word))
    if _CYRILLIC.search(latin):
        latin = "".join(_fallback(c) for c in latin)
    # iuliia capitalises only the first letter of a multi-letter mapping
    # ("ЩИ" → "SchI"); a shouted word should stay shouted.
    if sum(c.isalpha() for c in word) > 1 and word.isupper():
        latin = latin.upper()
    return latin


def _pre(word: str) -> str:
    """Replace Ukrainian/Belarusian letters before the Russian schema sees them."""
    if not any(c.lower() in _UK_BE for c in word):
        return word
    out = []
    prev = ""
    for c in word:
        low = c.lower()
        if low in _UK_BE:
            iotated, plain = _UK_BE[low]
            latin = iotated if (not prev or prev.lower() in _VOWELS) else plain
            out.append(latin.capitalize() if c.isupper() else latin)
        else:
            out.append(c)
        prev = c
    return "".join(out)


def _fallback(char: str) -> str:
    low = char.lower()
    latin = _OTHER.get(low)
    if latin is None:
        # Accented Cyrillic (ѐ, ѝ, ӧ…): transliterate the base letter.
        base = unicodedata.normalize("NFD", low)[:1]
        if base != low and _CYRILLIC.match(base):
            latin = _SCHEMA.translate(base)
    if latin is None:
        return char
    return latin.capitalize() if char.isupper() else latin
