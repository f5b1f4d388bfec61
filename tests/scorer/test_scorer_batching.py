"""Cross-request batching and the reference-embedding cache, in-process over the tiny
models, where the batches the metrics see can be observed directly."""

from __future__ import annotations

import asyncio

import pytest
from PIL import ImageFilter
from support.scenes import scene

from regen.common.images import encode_png
from regen.common.settings import load_settings
from regen.scorer.cache import LruCache
from regen.scorer.core import ScorerCore
from regen.scorer.metrics.embedding import EmbeddingMetric
from regen.scorer.settings import ScorerSettings


def settings(**overrides) -> ScorerSettings:
    return load_settings(ScorerSettings, preset="tiny", **overrides)


@pytest.fixture(scope="module")
def loaded(tiny_models) -> ScorerCore:
    """The tiny metrics, loaded once; each test wraps them in a core of its own settings."""
    return ScorerCore.load(settings(cpu_threads=1))


def core(loaded: ScorerCore, **overrides) -> ScorerCore:
    return ScorerCore(loaded.metrics, settings(**overrides))


def embedders(core: ScorerCore) -> list[EmbeddingMetric]:
    return [m for m in core.metrics if isinstance(m, EmbeddingMetric)]


def use_cache(core: ScorerCore, cache: LruCache) -> LruCache:
    for metric in embedders(core):
        metric.reference_cache = cache
    return cache


class BatchRecorder:
    """Wraps the core's score_batch and each embedding metric's embed to record batch sizes."""

    def __init__(self, core: ScorerCore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pairs: list[int] = []
        self.embedded: dict[str, list[int]] = {m.info.name: [] for m in embedders(core)}
        score_batch = core.score_batch

        def recording_score_batch(jobs):
            self.pairs.append(len(jobs))
            return score_batch(jobs)

        monkeypatch.setattr(core, "score_batch", recording_score_batch)
        for metric in embedders(core):
            monkeypatch.setattr(metric, "embed", self._recording_embed(metric.info.name, metric.embed))

    def _recording_embed(self, name, embed):
        def recording_embed(images):
            self.embedded[name].append(len(images))
            return embed(images)

        return recording_embed


def pngs(*names: str) -> list[bytes]:
    return [encode_png(scene(name, (128, 128))) for name in names]


def test_concurrent_requests_share_one_forward_batch(loaded, monkeypatch) -> None:
    references = pngs("portrait_1", "object_1", "scene_1")
    candidates = pngs("portrait_2", "object_2", "scene_2", "complex_2", "complex_3", "portrait_3")
    # Six candidates arrive in three requests; a long wait means only a full batch starts.
    scorer = core(loaded, max_batch=6, max_wait_ms=120_000)
    use_cache(scorer, LruCache(512))
    recorder = BatchRecorder(scorer, monkeypatch)

    async def together():
        return await asyncio.gather(*(scorer.score(references[k], candidates[2 * k : 2 * k + 2]) for k in range(3)))

    coalesced = asyncio.run(together())
    assert recorder.pairs == [6]
    assert recorder.embedded == {"clip": [9], "dinov2": [9]}  # 3 references + 6 candidates
    assert (scorer.stats.batches, scorer.stats.items) == (1, 6)

    one_by_one = core(loaded, max_batch=1, max_wait_ms=0)
    use_cache(one_by_one, LruCache(0))  # no cache: every reference recomputed

    async def alone():
        return [
            [(await one_by_one.score(references[k], [c]))[0] for c in candidates[2 * k : 2 * k + 2]] for k in range(3)
        ]

    for request_scores, single_scores in zip(coalesced, asyncio.run(alone()), strict=True):
        for together_scores, alone_scores in zip(request_scores, single_scores, strict=True):
            assert together_scores.keys() == alone_scores.keys()
            for metric_id, value in together_scores.items():
                assert value == pytest.approx(alone_scores[metric_id], abs=1e-4), metric_id


def test_batches_never_exceed_max_batch(loaded, monkeypatch) -> None:
    reference = pngs("object_3")[0]
    candidates = pngs("object_4", "object_5", "object_6")
    scorer = core(loaded, max_batch=4, max_wait_ms=50)
    use_cache(scorer, LruCache(512))
    recorder = BatchRecorder(scorer, monkeypatch)

    async def many():
        return await asyncio.gather(*(scorer.score(reference, candidates, ["clip"]) for _ in range(4)))

    results = asyncio.run(many())
    assert [len(r) for r in results] == [3, 3, 3, 3]
    assert sum(recorder.pairs) == 12
    assert max(recorder.pairs) <= 4
    assert all(size <= 4 + 1 for size in recorder.embedded["clip"])  # + the reference when not cached
    assert recorder.embedded["dinov2"] == []  # not requested, not run


def test_reference_embeddings_are_cached_across_rounds(loaded, monkeypatch) -> None:
    scorer = core(loaded)
    cache = use_cache(scorer, LruCache(16))
    reference = scene("complex_5", (128, 128))
    rounds = [[encode_png(reference.filter(ImageFilter.GaussianBlur(r + k))) for k in range(3)] for r in range(3)]
    recorder = BatchRecorder(scorer, monkeypatch)

    async def run_rounds():
        return [await scorer.score(encode_png(reference), candidates) for candidates in rounds]

    results = asyncio.run(run_rounds())
    # Round 1 embeds the reference with its candidates; rounds 2 and 3 only the candidates.
    assert recorder.embedded == {"clip": [4, 3, 3], "dinov2": [4, 3, 3]}
    assert (cache.misses, cache.hits) == (2, 4)
    # A cached reference gives the same scores as a fresh one.
    use_cache(scorer, LruCache(16))
    fresh = asyncio.run(scorer.score(encode_png(reference), rounds[2]))
    for cached_scores, fresh_scores in zip(results[2], fresh, strict=True):
        for metric_id, value in cached_scores.items():
            assert value == pytest.approx(fresh_scores[metric_id], abs=1e-5)


def test_reference_cache_is_bounded(loaded) -> None:
    scorer = core(loaded)
    cache = use_cache(scorer, LruCache(2))
    references = pngs("scene_4", "scene_5", "scene_6")

    async def score_all():
        for reference in references:
            await scorer.score(reference, [reference], ["clip"])

    asyncio.run(score_all())
    assert len(cache) == 2
