"""Parse and normalize one US street address (or intersection) into the keys the matcher joins on.

The fast path is a tokenizer plus the lookup tables of words.py: it labels the addresses city data is made of in a
few microseconds. What it cannot label (words before the house number, odd orders) goes to usaddress, a CRF parser
that is much slower (docs/geocode.md), and the answer says so (`parser: "usaddress"`). Nothing here raises on bad input: an address
that cannot be read comes back as kind "none" with the reason.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

import usaddress

from .words import (
    BLOCK_WORDS,
    DIRECTIONS,
    NAME_WORDS,
    NUMBER_ORDINALS,
    ORDINALS,
    OTHER_CITIES,
    PLACEHOLDERS,
    STATES,
    STREET_TYPES,
    TENS_WORDS,
    UNIT_DESIGNATORS,
)

MAX_ADDRESS_CHARS = 300
CONNECTORS = frozenset({"&", "@", "AND", "AT", "/"})
BETWEEN = frozenset({"BETWEEN", "BTW", "BTWN", "BETW"})
# Cities whose name may end an address written without commas ("4608 Gardena Ave San Diego CA 92110").
KNOWN_CITIES = (("SAN", "DIEGO"), ("LA", "JOLLA"), ("SD",))

_TOKENS = re.compile(r"\d+/\d+|[A-Z0-9]+|[&@#/]")
_PARENS = re.compile(r"\([^)]*\)")
_ZIP = re.compile(r"^\d{5}(?:\d{4})?$")
_NUMBER = re.compile(r"^(\d+)([A-Z]?)$")
# "I 15 NB", "SR 163", "HWY 94 WB" (police write freeways so): a road with no house numbers.
FREEWAY = re.compile(r"^(?:I|SR|HWY|US|INTERSTATE|RTE|ROUTE) \d+\b")
_HUNDRED_XX = re.compile(r"^(\d+)XX$")  # "10XX GARNET AVE": the 1000 block
# A house number, a space, then a word: the common case, read by the shortcut in parse().
_NUMBER_FIRST = re.compile(r"\s*(\d{1,6})[A-Za-z]?\s+([A-Za-z].*)", re.S)
_ZIP_IN_TAIL = re.compile(r"(?<![0-9])([0-9]{5})(?:[0-9]{4})?(?![0-9])")
_PUNCTUATION = str.maketrans({"'": None, ".": " ", "-": " "})


class Parsed(NamedTuple):
    kind: str  # "address" (number + street), "intersection", "between" (a street between two cross streets),
    #            "street" (no number), "zip" (only a zip), "none"
    number: int = -1
    street: str = ""  # canonical full street: "S SAN JACINTO DR"
    base: str = ""  # the name without directionals and type: "SAN JACINTO"
    street2: str = ""  # the second street of an intersection, the first cross street of "between"
    base2: str = ""
    street3: str = ""  # the second cross street of "between"
    base3: str = ""
    zip: str = ""
    unit: str = ""
    parser: str = "fast"
    reason: str = ""  # why kind is "none", or what was ignored
    block: bool = False  # the number names a hundred block ("1000 block of X", "1000 BLK X", "10XX X")
    city: str = ""  # another city named in the text ("..., Coronado"): not San Diego's address

    def key(self) -> tuple:
        """What the result depends on: equal keys get equal results (the cache and batch dedupe key)."""
        return (self.kind, self.number, self.street, self.street2, self.street3, self.zip, self.parser, self.reason,
                self.block, self.city)


def clean_zip(value: object) -> str:
    """A 5-digit ZIP from '92110', '92110-1234', 92110; '' for anything else."""
    if value is None or isinstance(value, bool):
        return ""
    text = str(value).strip()[:10]
    digits = text.replace("-", "")
    return digits[:5] if _ZIP.match(digits) else ""


def parse(address: object, city: object = None, zip_code: object = None, memo: dict | None = None) -> Parsed:
    """`memo`: a dict the caller keeps for one batch; street spellings met again are normalized once."""
    if address is None:
        return Parsed("none", reason="address is missing")
    if not isinstance(address, str):
        return Parsed("none", reason=f"address must be text, got {type(address).__name__}")
    if len(address) > MAX_ADDRESS_CHARS:
        return Parsed("none", reason=f"address is longer than {MAX_ADDRESS_CHARS} characters")
    zip5 = clean_zip(zip_code) if zip_code is not None else ""
    if memo is not None:
        # "4608 Gardena Avenue, San Diego": addresses on one street differ only in the number; what follows the
        # number is read once per batch (as "1 <rest>") and reused with each number.
        m = _NUMBER_FIRST.match(address)
        if m is not None:
            # After the first comma only a ZIP matters ("..., Apt 23, San Diego, CA 92110"): keep it out of the key.
            line, comma, tail = m.group(2).partition(",")
            city = ""
            if comma:
                if not zip5:
                    found = _ZIP_IN_TAIL.search(tail)
                    zip5 = found.group(1) if found else ""
                city = other_city(tail)
            key = ("rest", line, zip5, city)
            shape = memo.get(key)
            if shape is None:
                shape = _parse_text("1 " + line, zip5, memo)
                if city and shape.kind != "none":
                    shape = shape._replace(city=city)
                memo[key] = shape
            if shape.kind == "address" and shape.number == 1 and shape.parser == "fast":
                return tuple.__new__(Parsed, ("address", int(m.group(1))) + shape[2:])  # _replace without its keyword handling
    return _parse_text(address, zip5, memo)


def _parse_text(address: str, zip5: str, memo: dict | None) -> Parsed:
    text = address.upper().translate(_PUNCTUATION)
    if "(" in text:
        text = _PARENS.sub(" ", text)
    parts = [p for p in map(_TOKENS.findall, text.split(",")) if p]
    if not parts:
        if zip5:
            return Parsed("zip", zip=zip5, reason="address is empty")
        return Parsed("none", reason="address is empty" if not address.strip() else "address has no words")
    # Street line: the first part with a word in it (a leading part that is just a number belongs to it).
    if len(parts) == 1 and len(parts[0]) <= 3 and " ".join(t for t in parts[0] if t != "/") in PLACEHOLDERS:
        return Parsed("none", zip=zip5, reason=f"not an address: {address.strip()!r}")
    street_tokens = parts[0]
    rest = parts[1:]
    if len(street_tokens) == 1 and street_tokens[0].isdigit() and rest:
        street_tokens = street_tokens + rest[0]
        rest = rest[1:]
    city = ""
    for part in rest:  # later parts: city, state, zip, unit
        for tok in part:
            if not zip5 and _ZIP.match(tok):
                zip5 = tok[:5]
        city = city or _city_of(part)
    tokens, zip_in_line = _strip_tail(street_tokens)
    zip5 = zip5 or zip_in_line
    if not city:
        tokens, city = _strip_other_city(tokens)
    if city:
        got = _parse_tokens(tokens, zip5, address, memo)
        return got._replace(city=city) if got.kind != "none" else got
    return _parse_tokens(tokens, zip5, address, memo)


def other_city(text: str) -> str:
    """Another city named in the text after the street line ("Coronado, CA 92118"), or ''."""
    for part in text.upper().translate(_PUNCTUATION).split(","):
        city = _city_of(_TOKENS.findall(part))
        if city:
            return city
    return ""


def city_name(text: str) -> str:
    """A city as written in a city field, normalized as in the address text: upper case, accents, punctuation, a
    state and a ZIP dropped ("San Diego, CA 92110" -> "SAN DIEGO", "Rancho Peñasquitos" -> "RANCHO PENASQUITOS")."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().upper()
    tokens = _TOKENS.findall(text.translate(_PUNCTUATION).replace(":", " "))
    return " ".join(t for t in tokens if not _ZIP.match(t) and t not in STATES and t not in ("USA", "US"))


def _city_of(tokens: list[str]) -> str:
    words = [t for t in tokens if not _ZIP.match(t) and t not in STATES and t not in ("USA", "US")]
    name = " ".join(words)
    return name if name in OTHER_CITIES else ""


def _strip_other_city(tokens: list[str]) -> tuple[list[str], str]:
    """'1200 ORANGE AVE CORONADO' (no comma): another city's name after a street type."""
    for n in (3, 2, 1):
        if len(tokens) > n + 1 and " ".join(tokens[-n:]) in OTHER_CITIES and (
                tokens[-n - 1] in STREET_TYPES or tokens[-n - 1] in DIRECTIONS):
            return tokens[:-n], " ".join(tokens[-n:])
    return tokens, ""


def _parse_tokens(tokens: list[str], zip5: str, address: str, memo: dict | None) -> Parsed:
    if not tokens:
        return Parsed("zip", zip=zip5, reason="no street in the address") if zip5 else \
            Parsed("none", reason="no street in the address")
    if tokens[:2] == ["PO", "BOX"] or tokens[:3] == ["P", "O", "BOX"] or tokens[0] == "POBOX":
        return Parsed("none", zip=zip5, reason="a PO box has no street location")
    return _parse_line(tokens, zip5, address, memo)


def _strip_tail(tokens: list[str]) -> tuple[list[str], str]:
    """Drop a trailing zip, state and city from a line written without commas."""
    zip5 = ""
    end = len(tokens)
    if end > 2 and len(tokens[end - 1]) == 4 and tokens[end - 1].isdigit() and _ZIP.match(tokens[end - 2]):
        end -= 1  # ZIP+4, its hyphen gone: "92110 1234"
    if end and _ZIP.match(tokens[end - 1]):
        zip5 = tokens[end - 1][:5]
        end -= 1
    if end and tokens[end - 1] in STATES and end > 2:
        end -= 1
    for city in KNOWN_CITIES:
        n = len(city)
        # Only when what stays still ends like a street ("... Girard Ave La Jolla", not "... Calle La Jolla").
        if end > n and tuple(tokens[end - n:end]) == city and (
                tokens[end - n - 1] in STREET_TYPES or tokens[end - n - 1] in DIRECTIONS or n == len(tokens)):
            end -= n
            break
    return tokens[:end], zip5


def _parse_line(tokens: list[str], zip5: str, original: str, memo: dict | None) -> Parsed:
    street_of = _street if memo is None else (lambda toks: _memo_street(toks, memo))
    block = False
    xx = _HUNDRED_XX.match(tokens[0])
    if xx:  # "10XX GARNET AVE"
        tokens = [str(int(xx.group(1)) * 100)] + tokens[1:]
        block = True
    if len(tokens) > 2 and tokens[1] in BLOCK_WORDS and _NUMBER.match(tokens[0]):  # "1000 BLOCK OF", "1000 BLK"
        tokens = [tokens[0]] + tokens[3 if tokens[2] == "OF" else 2:]
        block = True
    if block:
        got = _parse_line(tokens, zip5, original, memo)
        return got._replace(block=True) if got.kind == "address" else got
    if not BETWEEN.isdisjoint(tokens):
        between = _between(tokens, street_of, zip5)
        if between is not None:
            return between
    connector = -1 if CONNECTORS.isdisjoint(tokens) else next(i for i, t in enumerate(tokens) if t in CONNECTORS)
    number_match = _NUMBER.match(tokens[0])
    if connector > 0 and connector < len(tokens) - 1 and not number_match:
        first = street_of(tokens[:connector])
        second = street_of(tokens[connector + 1:])
        if first[0] and second[0]:
            return Parsed("intersection", street=first[0], base=first[1], street2=second[0], base2=second[1],
                          zip=zip5)
    if connector >= 0:
        tokens = tokens[:connector] if connector > 0 else tokens[1:]
    if not tokens:
        return Parsed("zip", zip=zip5, reason="no street in the address") if zip5 else \
            Parsed("none", reason="no street in the address")
    if number_match:
        number = int(number_match.group(1))
        body = tokens[1:]
        # "1451 1/2 Main St", "10511 10513 Main St" (a range written with a hyphen): keep the first number.
        while body and ("/" in body[0] or (body[0].isdigit() and len(body) > 1 and not _is_name_number(body))):
            body = body[1:]
        street, base, unit = street_of(body)
        if street:
            return Parsed("address", number=number, street=street, base=base, zip=zip5, unit=unit)
        return _fallback(original, zip5, "no street name after the house number")
    if FREEWAY.match(" ".join(tokens)):
        name = " ".join(tokens)
        return Parsed("street", street=name, base=name, zip=zip5, reason="no house number")
    if any(t.isdigit() for t in tokens):  # words before the number: "Suite 5 1200 Third Ave"
        return _fallback(original, zip5, "house number not at the start")
    street, base, unit = street_of(tokens)
    if street:
        return Parsed("street", street=street, base=base, zip=zip5, unit=unit, reason="no house number")
    return _fallback(original, zip5, "no street name")


def _between(tokens: list[str], street_of, zip5: str) -> Parsed | None:
    """'4th Ave btw University and Robinson': the block of a street between two cross streets."""
    at = next(i for i, t in enumerate(tokens) if t in BETWEEN)
    rest = tokens[at + 1:]
    joint = next((i for i, t in enumerate(rest) if t in CONNECTORS), -1)
    if at == 0 or joint <= 0 or joint == len(rest) - 1:
        return None
    street, a, b = street_of(tokens[:at]), street_of(rest[:joint]), street_of(rest[joint + 1:])
    if not (street[0] and a[0] and b[0]):
        return None
    return Parsed("between", street=street[0], base=street[1], street2=a[0], base2=a[1], street3=b[0], base3=b[1],
                  zip=zip5)


def _is_name_number(body: list[str]) -> bool:
    """'100 5 Ave': a bare number followed only by a street type is the street's name, not a second number."""
    return len(body) == 2 and body[1] in STREET_TYPES


def _memo_street(tokens: list[str], memo: dict) -> tuple[str, str, str]:
    key = tuple(tokens)
    got = memo.get(key)
    if got is None:
        got = memo[key] = _street(tokens)
    return got


def _street(tokens: list[str]) -> tuple[str, str, str]:
    """(canonical street, base name, unit) from the tokens after the house number; ('', '', '') if no name."""
    unit = ""
    for i, tok in enumerate(tokens):
        if tok in UNIT_DESIGNATORS and i > 0:
            unit = " ".join(tokens[i:])
            tokens = tokens[:i]
            break
    if not tokens:
        return "", "", unit
    tokens = _join_words(tokens)
    # The street type: the last type word with a name before it.
    type_at = -1
    for i in range(len(tokens) - 1, 0, -1):
        if tokens[i] in STREET_TYPES:
            type_at = i
            break
    postdir = ""
    if type_at >= 0:
        after = tokens[type_at + 1:]
        if after and after[0] in DIRECTIONS:
            postdir = DIRECTIONS[after[0]]
            after = after[1:]
        if after and not unit:
            unit = " ".join(after)
        stype = STREET_TYPES[tokens[type_at]]
        name = tokens[:type_at]
        if not postdir and type_at >= 3 and name[-1] in DIRECTIONS:  # "LA JOLLA SCENIC S DR" = "... DR S"
            postdir = DIRECTIONS[name[-1]]
            name = name[:-1]
    else:
        stype = ""
        name = tokens
        if len(name) > 1 and name[-1] in DIRECTIONS:
            postdir = DIRECTIONS[name[-1]]
            name = name[:-1]
    predir = ""
    if len(name) > 1 and name[0] in DIRECTIONS:
        predir = DIRECTIONS[name[0]]
        name = name[1:]
    # A bare number is an ordinal only as the whole name ("5 Ave" = "5TH AVE"), not in "HWY 78" or "CAM 5".
    name = [_name_word(t) for t in name] if len(name) > 1 else [NUMBER_ORDINALS.get(name[0]) or _name_word(name[0])]
    base = " ".join(name)
    if not base or not any(c.isalpha() or c.isdigit() for c in base):
        return "", "", unit
    street = " ".join(w for w in (predir, base, stype, postdir) if w)
    return street, base, unit


def _join_words(tokens: list[str]) -> list[str]:
    """'TWENTY FIRST' -> 'TWENTYFIRST' (an ordinal), 'MC DONALD' -> 'MCDONALD', 'MARTIN LUTHER KING' -> 'MLK'."""
    out: list[str] = []
    for tok in tokens:
        if out and (out[-1] in TENS_WORDS and (tok in ORDINALS or out[-1] + tok in ORDINALS)) or out and out[-1] in ("MC", "MAC") and len(tok) > 2 and tok not in STREET_TYPES:
            out[-1] = out[-1] + tok
        else:
            out.append(tok)
    return out


def _name_word(tok: str) -> str:
    if tok[0] == "0" and len(tok) > 1:  # the centerlines write "07TH AV"
        tok = tok.lstrip("0") or "0"
    return ORDINALS.get(tok) or NAME_WORDS.get(tok) or tok


# usaddress labels -> the line the fast path reads.
_LINE_LABELS = ("AddressNumber", "StreetNamePreDirectional", "StreetNamePreModifier", "StreetNamePreType",
                "StreetName", "StreetNamePostType", "StreetNamePostDirectional")


def _fallback(original: str, zip5: str, why: str) -> Parsed:
    """usaddress for what the fast path cannot label; its labels are put back in order and read again."""
    try:
        tagged, kind = usaddress.tag(original)
    except usaddress.RepeatedLabelError as exc:
        tagged, kind = {}, "Ambiguous"
        for text, label in exc.parsed_string:
            tagged.setdefault(label, text)
    except Exception:  # noqa: BLE001 - a third-party parser must not fail the batch
        return Parsed("none", zip=zip5, parser="usaddress", reason=f"could not label the address ({why})")
    zip5 = zip5 or clean_zip(tagged.get("ZipCode"))
    if kind == "Intersection":
        first = " ".join(tagged.get(k, "") for k in _LINE_LABELS[1:] if k in tagged)
        second = " ".join(tagged.get("Second" + k, "") for k in _LINE_LABELS[1:] if "Second" + k in tagged)
        a, b = _street(_TOKENS.findall(first.upper())), _street(_TOKENS.findall(second.upper()))
        if a[0] and b[0]:
            return Parsed("intersection", street=a[0], base=a[1], street2=b[0], base2=b[1], zip=zip5,
                          parser="usaddress")
    number = _NUMBER.match(tagged.get("AddressNumber", "").upper().strip())
    line = " ".join(tagged[k] for k in _LINE_LABELS[1:] if k in tagged)
    street, base, _ = _street(_TOKENS.findall(line.upper().replace(".", " ")))
    unit = " ".join(tagged[k] for k in ("OccupancyType", "OccupancyIdentifier") if k in tagged)
    if street and number:
        return Parsed("address", number=int(number.group(1)), street=street, base=base, zip=zip5, unit=unit,
                      parser="usaddress")
    if street:
        return Parsed("street", street=street, base=base, zip=zip5, unit=unit, parser="usaddress",
                      reason="no house number")
    if zip5:
        return Parsed("zip", zip=zip5, parser="usaddress", reason=f"no street in the address ({why})")
    return Parsed("none", parser="usaddress", reason=f"not an address: {why}")
