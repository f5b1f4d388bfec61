"""What any regen.v1.Scorer server must do, checked through plain gRPC.

Each check takes a channel to the server under test and raises AssertionError with the
reason when the server breaks the contract. `regen check scorer ADDRESS` runs them, and so
do the tests, on the scorer this repository ships.
"""

from __future__ import annotations

import io

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageFilter

from regen.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

TIMEOUT_S = 120


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _picture(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A textured test image; different seeds give clearly different pictures."""
    image = Image.effect_mandelbrot(size, (-2.0 + seed * 0.37, -1.2, 0.8 + seed * 0.11, 1.3), 64 + 17 * seed)
    return Image.merge("RGB", (image, image.rotate(90), image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def _stub(channel: grpc.Channel) -> scorer_pb2_grpc.ScorerStub:
    return scorer_pb2_grpc.ScorerStub(channel)


def _info(channel: grpc.Channel) -> scorer_pb2.ScorerInfo:
    return _stub(channel).Info(common_pb2.InfoRequest(), timeout=30)


def _score(channel: grpc.Channel, reference: bytes, candidates: list[bytes], metrics: tuple[str, ...] = ()) -> list:
    reply = _stub(channel).Score(
        scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=candidates, metrics=list(metrics)),
        timeout=TIMEOUT_S,
    )
    indexes = [c.index for c in reply.candidates]
    assert indexes == list(range(len(candidates))), f"answered indexes {indexes} for {len(candidates)} candidates"
    return [dict(c.scores) for c in reply.candidates]


def _refused(channel: grpc.Channel, reference: bytes, candidates: list[bytes], metrics: tuple[str, ...] = ()):
    try:
        _score(channel, reference, candidates, metrics)
    except grpc.RpcError as err:
        return err
    raise AssertionError("the request was accepted; it must be refused")


def check_health_is_serving(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"health under '' is {reply.status}"


def check_info_is_sane(channel: grpc.Channel) -> None:
    info = _info(channel)
    assert info.metrics, "Info lists no metrics"
    ids = [m.id for m in info.metrics]
    names = [m.name for m in info.metrics]
    assert len(set(ids)) == len(ids), f"metric ids repeat: {ids}"
    assert len(set(names)) == len(names), f"metric names repeat: {names}"
    for metric in info.metrics:
        assert metric.id and metric.name and metric.definition, f"metric {metric.id!r} lacks a name or definition"
        if metric.checkpoint:
            assert metric.checkpoint in metric.id or metric.revision in metric.id, (
                f"metric id {metric.id!r} does not name its checkpoint or revision"
            )
    assert info.max_candidates >= 1, f"max_candidates is {info.max_candidates}"


def check_identical_images_score_best(channel: grpc.Channel) -> None:
    info = _info(channel)
    reference = _png(_picture(1))
    other = _png(_picture(5))
    same, different = _score(channel, reference, [reference, other])
    assert set(same) == {m.id for m in info.metrics}, (
        f"scores for {sorted(same)}, Info lists {sorted(m.id for m in info.metrics)}"
    )
    for metric in info.metrics:
        higher = not metric.HasField("higher_is_better") or metric.higher_is_better
        better = same[metric.id] >= different[metric.id] if higher else same[metric.id] <= different[metric.id]
        assert better, (
            f"{metric.id}: an identical candidate scores {same[metric.id]}, another image {different[metric.id]}"
        )


def check_metrics_filter_by_name_or_id(channel: grpc.Channel) -> None:
    info = _info(channel)
    reference = _png(_picture(2))
    candidate = _png(_picture(2).filter(ImageFilter.GaussianBlur(2)))
    first = info.metrics[0]
    [scores] = _score(channel, reference, [candidate], (first.name,))
    assert list(scores) == [first.id], f"asked for {first.name!r}, got {sorted(scores)}"
    [scores] = _score(channel, reference, [candidate], (first.id,))
    assert list(scores) == [first.id], f"asked for {first.id!r}, got {sorted(scores)}"


def check_unknown_metric_is_invalid_argument(channel: grpc.Channel) -> None:
    reference = _png(_picture(3))
    err = _refused(channel, reference, [reference], (_info(channel).metrics[0].name, "no-such-metric"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"unknown metric answered {err.code()}"
    assert "metrics[1]" in err.details(), f"the message does not name metrics[1]: {err.details()!r}"


def check_empty_request_is_invalid_argument(channel: grpc.Channel) -> None:
    err = _refused(channel, _png(_picture(3)), [])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"no candidates answered {err.code()}"
    assert "candidate" in err.details(), f"the message does not name the candidates: {err.details()!r}"


def check_bad_reference_is_invalid_argument(channel: grpc.Channel) -> None:
    err = _refused(channel, b"\x89PNG\r\n\x1a\n broken", [_png(_picture(3))])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"a broken reference answered {err.code()}"
    assert "reference" in err.details(), f"the message does not name the reference: {err.details()!r}"


def check_bad_candidate_is_named_by_index(channel: grpc.Channel) -> None:
    good = _png(_picture(4))
    for label, bad in (("empty", b""), ("not an image", b"%PDF-1.7"), ("truncated", good[: len(good) // 2])):
        err = _refused(channel, good, [good, bad, good])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{label} candidate answered {err.code()}"
        assert "candidate 1" in err.details(), f"{label}: the message does not name candidate 1: {err.details()!r}"
        assert "candidate 0" not in err.details() and "candidate 2" not in err.details(), err.details()


def check_too_many_candidates_is_resource_exhausted(channel: grpc.Channel) -> None:
    limit = _info(channel).max_candidates
    small = _png(_picture(6, (16, 16)))
    err = _refused(channel, small, [small] * (limit + 1), (_info(channel).metrics[0].name,))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{limit + 1} candidates answered {err.code()}"
    assert str(limit) in err.details(), f"the message does not state the limit {limit}: {err.details()!r}"


def check_info_counts_the_work(channel: grpc.Channel) -> None:
    before = _info(channel).server.items
    reference = _png(_picture(7))
    _score(channel, reference, [reference, reference])
    after = _info(channel).server.items
    assert after >= before + 2, f"server.items went from {before} to {after} after scoring 2 candidates"


CHECKS = [value for name, value in sorted(globals().items()) if name.startswith("check_")]
