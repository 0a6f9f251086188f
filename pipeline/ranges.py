"""Lists of integers written as ranges, as every command takes years and grid ids: '1985-1990,2000'."""
from __future__ import annotations

import re

from pipeline.errors import UserError

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def parse_int_list(text: str | None, what: str) -> list[int]:
    """'1985-1987, 1990' → [1985, 1986, 1987, 1990] (sorted, unique); '' or None → [].

    A part that is neither a number nor a START-END range, or a range that runs backwards, is a
    UserError naming the option (`what`, e.g. 'years') and the part.
    """
    values: set[int] = set()
    for part in filter(None, (p.strip() for p in str(text or "").split(","))):
        match = _RANGE.match(part)
        if not match:
            raise UserError(f"--{what}: {part!r} is not a number or a START-END range")
        start = int(match.group(1))
        end = int(match.group(2) or start)
        if end < start:
            raise UserError(f"--{what}: range {part!r} runs backwards")
        values.update(range(start, end + 1))
    return sorted(values)


def parse_years(text: str | None) -> list[int] | None:
    """The --years option of the raster commands: None when not given, else the listed years."""
    return parse_int_list(text, "years") or None
