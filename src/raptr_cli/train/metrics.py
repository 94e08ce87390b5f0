"""One small logger interface, fanned out to sinks: the always-on metrics.jsonl, the console
(rich, supplied by the CLI so core code never imports rich) and accelerate's trackers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Protocol


class Sink(Protocol):
    def log(self, row: dict) -> None: ...
    def close(self) -> None: ...


def _parse(line: str) -> dict | None:
    """A row, or None for a blank or torn line (a kill or power cut mid-write)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


class JsonlSink:
    """Append-only metrics.jsonl, flushed per row so a killed run keeps everything it logged."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = path
        if truncate_after_step is not None and path.exists():
            # On resume, drop rows the resumed run will log again so the curve has no duplicates.
            keep = [
                line
                for line in path.read_text().splitlines()
                if (row := _parse(line)) is not None and row.get("step", 0) <= truncate_after_step
            ]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, path)  # a crash mid-rewrite keeps the old history
        self.fh = open(path, "a", encoding="utf-8")

    def log(self, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class TrackerSink:
    """Forwards numeric training/eval values to accelerate's trackers (tensorboard, wandb, ...)."""

    def __init__(self, accelerator):
        self.acc = accelerator

    def log(self, row: dict) -> None:
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if "step" in row and values:
            self.acc.log(values, step=row["step"])

    def close(self) -> None:
        self.acc.end_training()


class MetricsLogger:
    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def log(self, row: dict) -> None:
        for s in self.sinks:
            s.log(row)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def read_metrics(path: Path) -> list[dict]:
    return [row for line in path.read_text().splitlines() if (row := _parse(line)) is not None]
