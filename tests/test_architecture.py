"""The architecture's import rules (``[importlinter]`` in setup.cfg), checked by the real lint-imports.

The worker side (``control.node``, ``control.provider``) runs on machines that have none
of the control plane, and the bounded contexts are layered cli > web > migrations > farm >
registry > core. Each contract is also shown to fail: a copy of the package with one
forbidden import added must be refused, or a contract that checks nothing would pass too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the test extra (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(where)}  # the package under test, not an installed one
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(where / "setup.cfg")], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


APART = "Worker side, provider agent and user client import nothing"


@pytest.mark.parametrize("module, statement, contract", [
    ("control/node/signing.py", "import control.web.app", APART),
    ("control/provider/agent.py", "from control.core import db", APART),
    ("control/node/runner.py", "import control.farm.models", APART),
    ("control/client/api.py", "import control.registry.models", APART),
    ("control/farm/states.py", "import control.web.routing", "Registry and farm do not import the web layer"),
    ("control/registry/access.py", "import control.farm.models", "Layers"),
    ("control/core/paths.py", "import control.registry.models", "Layers"),
])
def test_a_forbidden_import_is_caught(tmp_path: Path, module: str, statement: str, contract: str) -> None:
    shutil.copytree(ROOT / "control", tmp_path / "control", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    with open(tmp_path / module, "a") as fh:
        fh.write(f"\n{statement}  # added by the test: must break a contract\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    broken = [line for line in proc.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), proc.stdout
