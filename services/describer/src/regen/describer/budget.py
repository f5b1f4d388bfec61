"""Count a text-to-image prompt's tokens against the generator's budget.

The budget comes from the generator (its `prompt_token_budget`, 77 for SD's CLIP, start
and end tokens included). With `budget_tokenizer` set, the describer counts exactly with
that Hugging Face tokenizer. Otherwise it uses a conservative estimate shaped like CLIP's
pre-tokenizer, which splits text into letter runs, single digits and punctuation:

    tokens = 2 (start, end) + Σ words ceil(len(word) / 8) + digits + punctuation characters

Common English words are one CLIP token and long or rare ones two or three, so the
estimate rarely undercounts English text; it overcounts punctuation-heavy text, which
only makes the prompt shorter than it had to be.
"""

from __future__ import annotations

import math
import re
from typing import Protocol

_PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")
SPECIAL_TOKENS = 2
LETTERS_PER_TOKEN = 8


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class EstimatedTokens:
    """The documented estimate; needs nothing but the text."""

    name = "estimate-v1"

    def count(self, text: str) -> int:
        total = SPECIAL_TOKENS
        for piece in _PIECES.findall(text):
            total += math.ceil(len(piece) / LETTERS_PER_TOKEN) if piece[0].isalpha() else 1
        return total


class TokenizerTokens:
    """Exact counts with a Hugging Face tokenizer (special tokens included)."""

    def __init__(self, tokenizer_id: str) -> None:
        from transformers import AutoTokenizer

        self.name = f"tokenizer:{tokenizer_id}"
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_id)

    def count(self, text: str) -> int:
        return len(self._tokenizer(text, truncation=False)["input_ids"])


def token_counter(tokenizer_id: str | None) -> TokenCounter:
    return TokenizerTokens(tokenizer_id) if tokenizer_id else EstimatedTokens()


def budget_problem(what: str, text: str, budget: int, counter: TokenCounter) -> str | None:
    """None when `text` fits `budget` (0 = unlimited), else a repair instruction."""
    if budget <= 0:
        return None
    used = counter.count(text)
    if used <= budget:
        return None
    words = len(text.split())
    target_words = max(1, int(words * (budget - SPECIAL_TOKENS) / max(1, used - SPECIAL_TOKENS)))
    return (
        f"{what}: about {used} tokens, over the budget of {budget}; "
        f"shorten it to at most about {target_words} words, dropping the least important descriptors"
    )
