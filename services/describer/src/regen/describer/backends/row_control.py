"""Per-row decoding control for one batched `generate` call.

Rows of one batch may belong to different tasks: each row has its own JSON grammar
(xgrammar), token limits, and either greedy decoding or sampling with its own seeded
generator. Sampling happens here, not in `generate` (which runs greedy): this processor
draws the row's token with the row's own `torch.Generator` and leaves only that token
allowed. So a sampled answer depends on its seed, not on which other requests shared
its batch.

xgrammar's own `contrib.hf.LogitsProcessor` takes one grammar per row too, but it
asserts on every token of a row that stopped for another reason (a token limit), and it
has no per-row limits or seeds; hence this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor

if TYPE_CHECKING:
    from xgrammar import CompiledGrammar, GrammarMatcher


class RowControl(LogitsProcessor):
    def __init__(
        self,
        *,
        grammars: Sequence[CompiledGrammar | None],
        temperatures: Sequence[float],
        seeds: Sequence[int],
        max_tokens: Sequence[int],
        min_tokens: Sequence[int],
        stop_ids: Sequence[int],
        vocab_size: int,
    ) -> None:
        self.batch = len(grammars)
        self.stop_ids = list(stop_ids)
        self._stop_set = set(stop_ids)
        self.max_tokens = list(max_tokens)
        self.min_tokens = list(min_tokens)
        self.temperatures = list(temperatures)
        self.matchers: list[GrammarMatcher | None] = []
        self.bitmask: torch.Tensor | None = None
        if any(g is not None for g in grammars):
            import xgrammar as xgr

            self._xgr = xgr
            self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
            self.bitmask = xgr.allocate_token_bitmask(self.batch, vocab_size)
        else:
            self.matchers = [None] * self.batch
        self.generators = [
            torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF) if t > 0 else None
            for seed, t in zip(seeds, temperatures, strict=True)
        ]
        self.generated = 0
        self.finished = [False] * self.batch
        # Rows stopped by their token limit rather than by ending their answer.
        self.cut = [False] * self.batch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generated > 0:
            self._accept(input_ids[:, -1].tolist())
        constrained = [(i, m) for i, m in enumerate(self.matchers) if m is not None and not self.finished[i]]
        if constrained and self.bitmask is not None:
            for i, matcher in constrained:
                matcher.fill_next_token_bitmask(self.bitmask, i)
            self._xgr.apply_token_bitmask_inplace(
                scores, self.bitmask.to(scores.device, non_blocking=True), indices=[i for i, _m in constrained]
            )
        for i in range(self.batch):
            if self.finished[i]:
                continue
            if self.generated < self.min_tokens[i]:
                scores[i, self.stop_ids] = float("-inf")
            if self.generated >= self.max_tokens[i] - 1:
                self._force(scores, i, self.stop_ids[0])
                self.cut[i] = True
            elif self.temperatures[i] > 0:
                self._force(scores, i, self._sample(scores[i], i))
        self.generated += 1
        return scores

    def _accept(self, last_tokens: list[int]) -> None:
        for i, token in enumerate(last_tokens):
            if self.finished[i]:
                continue
            if token in self._stop_set:
                self.finished[i] = True
                continue
            matcher = self.matchers[i]
            if matcher is not None and not matcher.accept_token(token):
                raise RuntimeError(f"row {i}: token {token} was sampled outside its grammar")

    def _sample(self, row_scores: torch.Tensor, i: int) -> int:
        probs = torch.softmax(row_scores.float().cpu() / self.temperatures[i], dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generators[i]).item())

    @staticmethod
    def _force(scores: torch.Tensor, i: int, token: int) -> None:
        scores[i].fill_(float("-inf"))
        scores[i, token] = 0.0
