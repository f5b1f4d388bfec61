# ruff: noqa: E402 - the source-checkout fallback must run before regen is imported
"""The regeneration loop two ways, on the same EvalRef-100 cases and the same services:

(a) paper-style: as the paper's script does it — one case after another, one image per
    Generate call, one Score call per image;
(b) the orchestrator: `--concurrency` cases in flight, one Generate call per round
    (all candidates in one batch), one Score call per round, batched across cases by
    the servers.

Both use the same seeds and the same loop (rounds, candidates, best over all rounds).
Each mode gets freshly started services (so busy times start at zero and no describer
answer is reused from the other mode: the describer's cache is turned off). Prints wall
time, the ratio, and each service's busy time (ServerInfo.busy_s deltas).

    python benchmarks/loop.py                       # tiny models, CPU, 8 cases
    python benchmarks/loop.py --preset default      # real models (GPU machine)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    import regen.orchestrator  # noqa: F401 - installed
except ModuleNotFoundError:  # a source checkout: use its src folders, here and in the services
    _paths = [
        str(REPO / p)
        for p in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["pythonpath"]
    ]
    sys.path[:0] = _paths
    os.environ["PYTHONPATH"] = os.pathsep.join([*_paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

from regen.common.settings import tiny_models_dir
from regen.orchestrator.clients import Clients
from regen.orchestrator.dataset import Case, load_reference_png, resolve_dataset
from regen.orchestrator.launcher import SERVICES, LocalServices
from regen.orchestrator.runner import embedded_env, ensure_tiny_models
from regen.orchestrator.runner import run as run_orchestrator
from regen.orchestrator.seeds import candidate_seed, variants_seed
from regen.orchestrator.settings import OrchestratorSettings, RetryPolicy
from regen.v1 import generator_pb2

SELECTION = {"clip": 0.5, "dinov2": 0.5}


async def busy(clients: Clients) -> dict[str, tuple[float, int, int]]:
    infos = await asyncio.gather(clients.describer.info(), clients.generator.info(), clients.scorer.info())
    return {
        name: (info.server.busy_s, info.server.batches, info.server.items)
        for name, info in zip(SERVICES, infos, strict=True)
    }


async def paper_style_case(clients: Clients, case: Case, args, ids: dict[str, str], budget: int) -> float:
    """One case the way the paper's script runs it; returns the best selection score."""
    seed, rounds, candidates = args.seed, args.rounds, args.candidates
    reference = load_reference_png(case)
    iut = (await clients.describer.understand(reference)).iut
    prompt = (await clients.describer.write_prompt(iut, budget)).prompt
    best: tuple[float, str, bytes] | None = None
    for r in range(1, rounds + 1):
        prompts = (
            await clients.describer.variants(prompt, candidates, budget, variants_seed(seed, case.id, r))
        ).prompts
        for k, text in enumerate(prompts, start=1):
            spec = generator_pb2.PromptSpec(text=text, seed=candidate_seed(seed, case.id, r, k))
            (image,) = await clients.generator.generate(generator_pb2.GenerateRequest(prompts=[spec]))
            (scores,) = await clients.scorer.score(reference, [image.png])
            selection = sum(w * scores[ids[name]] for name, w in SELECTION.items())
            if best is None or selection > best[0]:
                best = (selection, text, image.png)
        if r < rounds:
            differences = (await clients.describer.compare(reference, best[2], best[1])).differences
            prompt = (await clients.describer.revise(best[1], list(differences), budget)).prompt
    await clients.describer.judge(reference, best[2])
    return best[0]


async def paper_style(addresses: dict[str, str], cases: list[Case], args) -> tuple[float, dict]:
    clients = Clients.connect(addresses, RetryPolicy())
    try:
        await clients.wait_until_serving(60)
        ids = {m.name: m.id for m in (await clients.scorer.info()).metrics}
        budget = (await clients.generator.info()).prompt_token_budget
        before = await busy(clients)
        started = time.perf_counter()
        for case in cases:
            await paper_style_case(clients, case, args, ids, budget)
        wall = time.perf_counter() - started
        after = await busy(clients)
    finally:
        await clients.close()
    return wall, {n: tuple(a - b for a, b in zip(after[n], before[n], strict=True)) for n in SERVICES}


def orchestrated(addresses: dict[str, str], args, out: Path) -> tuple[float, dict]:
    settings = OrchestratorSettings(
        dataset=args.dataset,
        out=out,
        limit=args.cases,
        rounds=args.rounds,
        candidates=args.candidates,
        seed=args.seed,
        concurrency=args.concurrency,
        progress="none",
        **addresses,
    )
    summary = run_orchestrator(settings)
    services = summary.benchmark["timings"]["services"]
    return summary.benchmark["timings"]["cases_wall_s"], {
        n: (services[n]["busy_s"], int(services[n]["batches"]), int(services[n]["items"])) for n in SERVICES
    }


def fresh_services(args, cache_root: Path):
    env = {
        **embedded_env(args.preset),
        # Each mode must compute every describer answer itself.
        "REGEN_DESCRIBER_CACHE_ENABLED": "false",
        # The tiny preset renders and scores one image per forward pass for bit-exact
        # reruns; this benchmark measures batching, as a GPU deployment runs it.
        "REGEN_GENERATOR_BATCH_INVARIANT": str(args.batch_invariant).lower(),
        "REGEN_SCORER_BATCH_INVARIANT": str(args.batch_invariant).lower(),
        "XDG_CACHE_HOME": str(cache_root),
        # ...but the tiny models stay where they were built, not under that cache.
        "REGEN_TINY_MODELS": str(tiny_models_dir()),
    }
    return LocalServices(preset=args.preset, env=env, startup_timeout_s=600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="evalref-100")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "default"])
    parser.add_argument(
        "--batch-invariant", action="store_true", help="one image per forward pass (the tiny preset's default)"
    )
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dataset == "evalref-100" and "REGEN_EVALREF_DIR" not in os.environ:
        shared = REPO.parent / "shared" / "data" / "EvalRef-100"
        if shared.is_dir():
            os.environ["REGEN_EVALREF_DIR"] = str(shared)
    cases = resolve_dataset(args.dataset).select(args.cases)
    if args.preset == "tiny":
        from regen.orchestrator.progress import PlainReporter

        ensure_tiny_models(PlainReporter())
    print(
        f"{len(cases)} cases ({', '.join(c.id for c in cases)}), {args.rounds} rounds x {args.candidates} candidates, "
        f"preset {args.preset}",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="regen-bench-") as tmp:
        with fresh_services(args, Path(tmp) / "cache-a") as services:
            addresses = {n: services.address(n) for n in SERVICES}
            results["a"] = asyncio.run(paper_style(addresses, cases, args))
        print(f"(a) paper-style done in {results['a'][0]:.1f} s", flush=True)
        with fresh_services(args, Path(tmp) / "cache-b") as services:
            addresses = {n: services.address(n) for n in SERVICES}
            results["b"] = orchestrated(addresses, args, Path(tmp) / "out")
        print(f"(b) orchestrator done in {results['b'][0]:.1f} s", flush=True)

    labels = {"a": "(a) paper-style, sequential, batch 1", "b": f"(b) orchestrator, concurrency {args.concurrency}"}
    header = f"{'mode':<40} {'wall s':>8}" + "".join(f" {n + ' busy s':>16} {'batches/items':>14}" for n in SERVICES)
    print()
    print(header)
    print("-" * len(header))
    for key in ("a", "b"):
        wall, svc = results[key]
        row = f"{labels[key]:<40} {wall:>8.2f}"
        row += "".join(f" {svc[n][0]:>16.2f} {f'{svc[n][1]}/{svc[n][2]}':>14}" for n in SERVICES)
        print(row)
    print(f"\nspeed-up (a)/(b): {results['a'][0] / results['b'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
