"""The orchestrator never imports the heavy model libraries; these helpers let tests
check it in a fresh interpreter. Imported as `support.heavy_imports`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

HEAVY_MODULES = ("torch", "transformers", "diffusers")


def run_regen_cli(
    args: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`regen ...` in a fresh interpreter that prints, last on stderr, "HEAVY=" and the
    heavy modules it imported (sorted, comma-separated; none: "HEAVY=" alone)."""
    code = (
        "import sys\n"
        "from regen.cli.main import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "else:\n"
        "    code = 0\n"
        f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
