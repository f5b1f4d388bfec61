"""The run's report page (`regen report RUN_DIR`, also written at the end of `regen run`):
`<run>/report.html`, self-contained and offline, with thumbnails under
`<run>/report_files/`."""

from regen.orchestrator.report.render import REPORT_FILE, write_report

__all__ = ["REPORT_FILE", "write_report"]
