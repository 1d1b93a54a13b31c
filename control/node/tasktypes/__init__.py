"""Worker-side programs for task types that are more than an argv.

They are the *trusted* half of a type, our code, run in the runner's (the node agent's)
account, never as the task's identity:

* ``container``: run by the sandbox in ``mode: runner`` once it has given the task an
  identity and a directory; it creates the container from the validated spec, as that
  identity, with only that directory mounted (the only program that talks to Docker);
* ``pipeline upload``: the runner's ``after`` step, once the task's own stages ended well;
  it holds the upload key the task never sees.

They read the attempt's ``spec.json`` from ``ZONEFARM_ATTEMPT_DIR`` and leave
``outputs.json`` (and ``failure``, a one-line reason) there, where the task cannot write.
The user's own commands (shell argv, pipeline stages) run in the sandbox, which writes
the task's params to ``task.json`` in the task's directory for any program of the task
that wants them (``load_spec`` finds either).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_spec() -> tuple[Path, dict[str, Any]]:
    """(directory to leave outputs in, spec): the attempt's for trusted programs, else the task's own."""
    attempt = os.environ.get("ZONEFARM_ATTEMPT_DIR")
    if attempt:
        return Path(attempt), json.loads((Path(attempt) / "spec.json").read_text())
    tdir = Path(os.environ["ZONEFARM_TASK_DIR"])
    return tdir, json.loads((tdir / "task.json").read_text())


def say(message: str) -> None:
    """One line of the task log, flushed so the runner's next log callback carries it."""
    print(f"zonefarm: {message}", flush=True)


def write_outputs(tdir: Path, outputs: dict[str, Any]) -> None:
    (tdir / "outputs.json").write_text(json.dumps(outputs))


def write_failure(tdir: Path, reason: str) -> None:
    """Why the task failed, in one line: the runner sends it with ``finished`` (the task's reason)."""
    (tdir / "failure").write_text(reason.replace("\n", " ")[:1000])
