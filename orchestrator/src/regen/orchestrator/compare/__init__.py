"""`regen compare RUN_DIR...`: a leaderboard of generators run like for like, with paired
significance tests and a side-by-side view."""

from regen.orchestrator.compare.output import default_out, markdown, terminal_table, write_leaderboard
from regen.orchestrator.compare.runs import CompareError

__all__ = ["CompareError", "default_out", "markdown", "terminal_table", "write_leaderboard"]
