"""Cross-request batching and the reference-embedding cache, in-process over the tiny
models, where the batches the model sees can be observed directly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from regen.common.grpc_server import CoreSlot
from regen.common.images import encode_png
from regen.common.settings import load_settings
from regen.scorer.cache import LruCache
from regen.scorer.engine import ScorerEngine
from regen.scorer.scoring import BatchedScorer
from regen.scorer.settings import ScorerSettings


@pytest.fixture(scope="module")
def engine(tiny_models) -> ScorerEngine:
    return ScorerEngine.load(load_settings(ScorerSettings, preset="tiny", cpu_threads=1))


def settings(**overrides) -> ScorerSettings:
    return load_settings(ScorerSettings, preset="tiny", **overrides)


class BatchRecorder:
    """Wraps the engine's score_batch and each embedder's embed to record batch sizes."""

    def __init__(self, engine: ScorerEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pairs: list[int] = []
        self.embedded: dict[str, list[int]] = {e.spec.name: [] for e in engine.embedders}
        score_batch = engine.score_batch

        def recording_score_batch(jobs):
            self.pairs.append(len(jobs))
            return score_batch(jobs)

        monkeypatch.setattr(engine, "score_batch", recording_score_batch)
        for embedder in engine.embedders:
            monkeypatch.setattr(embedder, "embed", self._recording_embed(embedder.spec.name, embedder.embed))

    def _recording_embed(self, name, embed):
        def recording_embed(images, **kwargs):
            self.embedded[name].append(len(images))
            return embed(images, **kwargs)

        return recording_embed


def pngs(evalref: Path, *names: str) -> list[bytes]:
    return [encode_png(Image.open(evalref / f"{name}.png").resize((128, 128))) for name in names]


def test_concurrent_requests_share_one_forward_batch(engine, evalref: Path, monkeypatch) -> None:
    references = pngs(evalref, "portrait_1", "object_1", "scene_1")
    candidates = pngs(evalref, "portrait_2", "object_2", "scene_2", "complex_2", "complex_3", "portrait_3")
    # Six candidates arrive in three requests; a long wait means only a full batch starts.
    scorer = BatchedScorer(CoreSlot(engine), settings(max_batch=6, max_wait_ms=120_000))
    recorder = BatchRecorder(engine, monkeypatch)

    async def together():
        return await asyncio.gather(*(scorer.score(references[k], candidates[2 * k : 2 * k + 2]) for k in range(3)))

    coalesced = asyncio.run(together())
    assert recorder.pairs == [6]
    assert recorder.embedded == {"clip": [9], "dinov2": [9]}  # 3 references + 6 candidates
    assert (scorer.stats.batches, scorer.stats.items) == (1, 6)

    engine.reference_cache = LruCache(0)  # no cache: every reference recomputed
    one_by_one = BatchedScorer(CoreSlot(engine), settings(max_batch=1, max_wait_ms=0))

    async def alone():
        return [
            [(await one_by_one.score(references[k], [c]))[0] for c in candidates[2 * k : 2 * k + 2]] for k in range(3)
        ]

    for request_scores, single_scores in zip(coalesced, asyncio.run(alone()), strict=True):
        for together_scores, alone_scores in zip(request_scores, single_scores, strict=True):
            assert together_scores.keys() == alone_scores.keys()
            for metric_id, value in together_scores.items():
                assert value == pytest.approx(alone_scores[metric_id], abs=1e-4), metric_id


def test_batches_never_exceed_max_batch(engine, evalref: Path, monkeypatch) -> None:
    reference = pngs(evalref, "object_3")[0]
    candidates = pngs(evalref, "object_4", "object_5", "object_6")
    scorer = BatchedScorer(CoreSlot(engine), settings(max_batch=4, max_wait_ms=50))
    recorder = BatchRecorder(engine, monkeypatch)

    async def many():
        return await asyncio.gather(*(scorer.score(reference, candidates, ["clip"]) for _ in range(4)))

    results = asyncio.run(many())
    assert [len(r) for r in results] == [3, 3, 3, 3]
    assert sum(recorder.pairs) == 12
    assert max(recorder.pairs) <= 4
    assert all(size <= 4 + 1 for size in recorder.embedded["clip"])  # + the reference when not cached
    assert recorder.embedded["dinov2"] == []  # not requested, not run


def test_reference_embeddings_are_cached_across_rounds(engine, evalref: Path, monkeypatch) -> None:
    engine.reference_cache = LruCache(16)
    reference = Image.open(evalref / "complex_5.png").resize((128, 128))
    rounds = [[encode_png(reference.filter(ImageFilter.GaussianBlur(r + k))) for k in range(3)] for r in range(3)]
    scorer = BatchedScorer(CoreSlot(engine), settings())
    recorder = BatchRecorder(engine, monkeypatch)

    async def run_rounds():
        return [await scorer.score(encode_png(reference), candidates) for candidates in rounds]

    results = asyncio.run(run_rounds())
    # Round 1 embeds the reference with its candidates; rounds 2 and 3 only the candidates.
    assert recorder.embedded == {"clip": [4, 3, 3], "dinov2": [4, 3, 3]}
    assert (engine.reference_cache.misses, engine.reference_cache.hits) == (2, 4)
    # A cached reference gives the same scores as a fresh one.
    engine.reference_cache = LruCache(16)
    fresh = asyncio.run(scorer.score(encode_png(reference), rounds[2]))
    for cached_scores, fresh_scores in zip(results[2], fresh, strict=True):
        for metric_id, value in cached_scores.items():
            assert value == pytest.approx(fresh_scores[metric_id], abs=1e-5)


def test_reference_cache_is_bounded(engine, evalref: Path) -> None:
    engine.reference_cache = LruCache(2)
    scorer = BatchedScorer(CoreSlot(engine), settings())
    references = pngs(evalref, "scene_4", "scene_5", "scene_6")

    async def score_all():
        for reference in references:
            await scorer.score(reference, [reference], ["clip"])

    asyncio.run(score_all())
    assert len(engine.reference_cache) == 2
