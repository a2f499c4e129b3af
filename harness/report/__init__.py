"""The report of one or more run directories: PNG charts, index.html, summary.json."""

from harness.report.build import Report, build_report

__all__ = ["Report", "build_report"]
