"""Worker-side programs for task types that are more than an argv.

Each is run by the task runner as the task's child process (``python -m
control.node.tasktypes.<type>``) with ``ZONEFARM_TASK_DIR`` set, reads its parameters from
``spec.json`` there, writes its output to stdout (which becomes the task log) and may
leave ``outputs.json``. Being a child process keeps cancel and timeout uniform: the
runner signals the process group, and these programs clean up on SIGTERM.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_spec() -> tuple[Path, dict[str, Any]]:
    tdir = Path(os.environ["ZONEFARM_TASK_DIR"])
    return tdir, json.loads((tdir / "spec.json").read_text())


def say(message: str) -> None:
    """One line of the task log, flushed so the runner's next log callback carries it."""
    print(f"zonefarm: {message}", flush=True)


def write_outputs(tdir: Path, outputs: dict[str, Any]) -> None:
    (tdir / "outputs.json").write_text(json.dumps(outputs))
