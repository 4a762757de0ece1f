"""train/metrics.jsonl: a line per logged step and per validation, consistent across resumes."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """train/metrics.jsonl; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
