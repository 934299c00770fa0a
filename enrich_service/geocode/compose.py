"""Addresses split over columns, as police records keep them: a number (a hundred block, 0 at intersections), the
street's parts and the cross street's parts, turned into what the geocoder reads: "5500 block of VALERIO TRAIL",
"IMPERIAL AVENUE & VIEWCREST DR". Shared by the DAGs' address specs and the CLI's --cross-street-col."""

from __future__ import annotations

from collections.abc import Sequence


def _text(value) -> str:
    if value is None:
        return ""
    text = str(value).strip()
    return "" if text in ("", "0", "0.0", "nan", "None") else text


def compose_one(number, street: Sequence, cross: Sequence, number_is_block: bool) -> str:
    name = " ".join(t for t in map(_text, street) if t)
    if not name:
        return ""
    n = _text(number)
    if n.endswith(".0"):
        n = n[:-2]
    other = " ".join(t for t in map(_text, cross) if t)
    if not n and other:
        return f"{name} & {other}"  # police: number 0 with a cross street is the intersection
    if n:
        return f"{n} block of {name}" if number_is_block and n.isdigit() else f"{n} {name}"
    return name


def compose_columns(table, number: str | None, street: Sequence[str], cross: Sequence[str],
                    number_is_block: bool) -> list[str]:
    """One address text per row of an Arrow table, from its number, street and cross-street columns."""
    n = table.num_rows
    get = lambda col: table.column(col).to_pylist()  # noqa: E731
    numbers = get(number) if number else [None] * n
    streets = list(zip(*(get(c) for c in street))) if street else [()] * n
    crosses = list(zip(*(get(c) for c in cross))) if cross else [()] * n
    return [compose_one(num, s, c, number_is_block) for num, s, c in zip(numbers, streets, crosses)]


def joined_text(table, names: Sequence[str]):
    """An address spread over several columns (--address-col a,b,c; address_col=a,b,c) as one text column: the
    parts' text joined by single spaces, blank parts left out ("5500", " ", "VALERIO", "TRAIL" -> "5500 VALERIO
    TRAIL"); a row with no part is null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(names) == 1:
        return table.column(names[0])
    parts = [pc.utf8_trim_whitespace(table.column(n).cast(pa.string())) for n in names]
    joined = pc.binary_join_element_wise(*[pc.if_else(pc.equal(p, ""), None, p) for p in parts], " ",
                                         null_handling="skip")
    return pc.if_else(pc.equal(joined, ""), None, joined)
