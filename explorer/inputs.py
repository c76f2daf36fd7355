"""What a visitor types, bounded: seed lists, continuous seeds and text, each
turned into a value or a UserError of one sentence (the explorer's limits).

    parse_seeds("0-3, 10")   # [0, 1, 2, 3, 10]
    page_seeds("0-15", +1)   # "16-31"
"""
from __future__ import annotations

import math

import utils

SEED_MAX = 2**31 - 1  # seeds 0..SEED_MAX
MAX_FACES = 64  # faces per request
PAGE = 16  # faces the page shows at a time
MAX_TEXT = 400  # characters of a seed list, an edit or an expression
EDIT_MAX = 5.0  # |strength| of a move along a direction
WALK_SPAN = 10  # the seed slider covers the picked seed +- WALK_SPAN
MAX_STEPS = 32  # frames of an interpolation
MAX_TERMS = 8  # terms of an arithmetic expression
MAX_TERM_SEEDS = 64  # seeds in all the terms of an expression together


def parse_seeds(text: str, limit: int = MAX_FACES) -> list[int]:
    """ "0-15" or "3,7,42" or "0-3, 10" -> the seeds, in order; at most
    ``limit`` of them, each 0..SEED_MAX; anything else is a UserError."""
    example = 'write seeds like "0-15" or "3,7,42"'
    text = str(text or "").strip()
    if not text:
        raise utils.UserError(f"no seeds given; {example}")
    if len(text) > MAX_TEXT:
        raise utils.UserError(f"the seed list is {len(text)} characters long (at most {MAX_TEXT}); {example}")
    seeds: list[int] = []
    for part in text.split(","):
        bounds = [b.strip() for b in part.split("-")]
        if not (1 <= len(bounds) <= 2 and all(b.isdigit() and b.isascii() for b in bounds)):
            raise utils.UserError(f"{part.strip()!r} in {text!r} is not a seed or a range of seeds; {example}")
        first, last = int(bounds[0]), int(bounds[-1])
        if last > SEED_MAX:
            raise utils.UserError(f"seed {last} is too large: seeds go from 0 to {SEED_MAX}")
        if last < first:
            raise utils.UserError(f"the range {part.strip()!r} runs backwards; write it as {last}-{first}")
        if len(seeds) + last - first + 1 > limit:
            raise utils.UserError(f"{text!r} asks for more than {limit} faces at once; ask for at most {limit}")
        seeds.extend(range(first, last + 1))
    return seeds


def seed_range(first: int, count: int) -> str:
    """(16, 16) -> "16-31": the seed list of a page."""
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def page_seeds(text: str, step: int) -> str:
    """The seed list of the next (step +1) or previous (-1) page after the
    faces ``text`` asks for: as many seeds as now, following on from them."""
    seeds = parse_seeds(text)
    count = len(seeds)
    first = max(seeds) + 1 if step > 0 else max(0, min(seeds) - count)
    return seed_range(min(first, SEED_MAX - count + 1), count)


def check_seed(value, what: str = "seed") -> float:
    """A number 0..SEED_MAX (a continuous seed may have a fraction), or a UserError."""
    try:
        seed = float(value)
    except (TypeError, ValueError):
        raise utils.UserError(f"{what} {value!r} is not a number") from None
    if not (math.isfinite(seed) and 0 <= seed <= SEED_MAX):
        raise utils.UserError(f"{what} {value!r} is out of range: seeds go from 0 to {SEED_MAX}")
    return seed


def check_text(text, what: str) -> str:
    text = "" if text is None else str(text)
    if len(text) > MAX_TEXT:
        raise utils.UserError(f"the {what} is {len(text)} characters long (at most {MAX_TEXT})")
    return text

