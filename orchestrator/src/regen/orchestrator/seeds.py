"""Deterministic seeds: the same run seed gives the same seeds on any machine, in any
process, in any order of execution (Python's hash() is salted per process; never use it).

seed = first 4 bytes (big-endian) of sha256("regen-seed/v2|<run seed>|<part>|<part>...")
an unsigned 32-bit number: every language's integer and JSON number types carry it
exactly (a JavaScript number holds 2^53, not 2^63), and vendor APIs take seeds in this
range.
"""

from __future__ import annotations

import hashlib

SCHEME = "uint32(sha256('regen-seed/v2|' + '|'.join([run_seed, *parts]))[:4], big-endian)"


def derive_seed(run_seed: int, *parts: object) -> int:
    text = "|".join(["regen-seed/v2", str(run_seed), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def candidate_seed(run_seed: int, case_id: str, round_index: int, candidate: int) -> int:
    """Seed of the image for candidate `candidate` (0-based) of round `round_index` (1-based)."""
    return derive_seed(run_seed, "candidate", case_id, round_index, candidate)


def variants_seed(run_seed: int, case_id: str, round_index: int) -> int:
    """Seed the describer samples a round's prompt variants with."""
    return derive_seed(run_seed, "variants", case_id, round_index)


def bootstrap_seed(run_seed: int, *parts: object) -> int:
    """Seed of one bootstrap resampling (per metric and category), independent of order."""
    return derive_seed(run_seed, "bootstrap", *parts)
