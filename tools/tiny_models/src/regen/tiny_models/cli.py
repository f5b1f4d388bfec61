"""`regen tiny-models [--out DIR] [--force] [--only NAME...] [--seed N]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from regen.tiny_models.build import BuildResult, build_models, model_names


def default_out_dir() -> Path:
    """REGEN_TINY_MODELS, else ~/.cache/regen/tiny-models (regen.common.settings)."""
    from regen.common.settings import tiny_models_dir

    return tiny_models_dir()


def format_result(r: BuildResult) -> str:
    what = "built" if r.built else "current"
    return f"{r.name:<17} {r.size_bytes / 1e6:6.2f} MB {r.seconds:7.2f} s  {what:<7}  {r.path}"


def cli_main(
    out: Path | None = None,
    force: bool = False,
    only: list[str] | None = None,
    seed: int = 0,
) -> int:
    """Build the tiny models and print one line per model; returns an exit status."""
    out_dir = Path(out) if out is not None else default_out_dir()
    try:
        results = build_models(out_dir, seed=seed, only=only or None, force=force)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(format_result(r), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="regen tiny-models",
        description="Build tiny random-weight models of the real architectures, offline, for tests.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="target folder (default: REGEN_TINY_MODELS or ~/.cache/regen/tiny-models)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even models that are current")
    names = model_names()
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"some of: {', '.join(names)}")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    args = parser.parse_args(argv)
    return cli_main(args.out, force=args.force, only=args.only, seed=args.seed)
