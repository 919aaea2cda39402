"""SMS encoding choice and part count, as the network will bill it.

A message goes as GSM-7 when every character is in the GSM 03.38 default alphabet
or its extension table, otherwise as UCS-2. Long messages are split into parts
that each lose room to the concatenation header (UDH):

    GSM-7: 160 septets in one part, 153 per part when split
    UCS-2:  70 code units in one part, 67 per part when split

Extension characters (€ [ ] { } ^ ~ | \\ and form feed) take two septets (ESC +
code) and a UTF-16 surrogate pair (most emoji) takes two code units; neither pair
may be split across parts, so a part can end one unit short. Counting that right
matters because the shop pays per part.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gsm0338  # noqa: F401  -- importing registers the "gsm03.38" codec

__all__ = ["Segments", "analyze", "split", "GSM7", "UCS2"]

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# (single-part limit, per-part limit when concatenated)
_LIMITS = {GSM7: (160, 153), UCS2: (70, 67)}

_ESC = "\x1b"


@dataclass(frozen=True, slots=True)
class Segments:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int     # septets for GSM-7 (extension chars count 2), UTF-16 code units for UCS-2
    parts: int     # 0 for empty text
    per_part: int  # capacity of each part: 160/70 for a single part, 153/67 when split


def analyze(text: str) -> Segments:
    """Encoding, size and number of parts for `text`; never raises."""
    text = _as_text(text)
    encoding, costs = _costs(text)
    single, multi = _LIMITS[encoding]
    units = sum(costs)
    if units == 0:
        return Segments(encoding, 0, 0, single)
    if units <= single:
        return Segments(encoding, units, 1, single)
    return Segments(encoding, units, len(_boundaries(costs, multi)), multi)


def split(text: str) -> list[str]:
    """The parts as the recipient's phone will receive them (`[]` for empty text).

    Always `len(split(t)) == analyze(t).parts`.
    """
    text = _as_text(text)
    encoding, costs = _costs(text)
    single, multi = _LIMITS[encoding]
    units = sum(costs)
    if units == 0:
        return []
    if units <= single:
        return [text]
    return [text[start:end] for start, end in _boundaries(costs, multi)]


def _as_text(text: object) -> str:
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    try:
        return str(text)
    except Exception:
        return ""


@lru_cache(maxsize=4096)
def _gsm_septets(char: str) -> int:
    """Septets `char` takes in GSM-7 (1 basic, 2 extension), or 0 if it has none."""
    if char == _ESC:
        # The codec maps ESC to itself, but on the air it announces an extension
        # character; sent bare it would garble the next one.
        return 0
    try:
        return len(char.encode("gsm03.38"))
    except (UnicodeError, ValueError, LookupError):
        return 0


def _costs(text: str) -> tuple[str, list[int]]:
    """Encoding for `text` and the units each of its characters (code points) takes."""
    septets = [_gsm_septets(c) for c in text]
    if all(septets):
        return GSM7, septets
    # Python strings hold code points; beyond the BMP one needs a surrogate pair.
    # A lone surrogate (possible in a str) still takes one unit.
    return UCS2, [2 if ord(c) > 0xFFFF else 1 for c in text]


def _boundaries(costs: list[int], capacity: int) -> list[tuple[int, int]]:
    """Greedy (start, end) character slices, each within `capacity` units.

    Walking whole characters is what keeps an ESC+code or surrogate pair together:
    a character that does not fit entirely starts the next part.
    """
    bounds: list[tuple[int, int]] = []
    start = 0
    used = 0
    for i, cost in enumerate(costs):
        if used + cost > capacity:
            bounds.append((start, i))
            start, used = i, 0
        used += cost
    bounds.append((start, len(costs)))
    return bounds
