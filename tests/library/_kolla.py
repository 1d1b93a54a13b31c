"""Kolla-ansible style module tests: load the module file, patch exit_json/fail_json.

``ansible.module_utils.zonefarm_signing`` and ``zonefarm_secretfile`` are the same files as
``control.node.signing`` and ``control.node.secretfile`` (symlinks in ``module_utils/``), so
they are registered under those names before loading.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ansible.module_utils import basic

import control.node.secretfile
import control.node.signing

LIBRARY = Path(__file__).resolve().parents[2] / "library"


class ModuleExit(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result)
        self.result = result


class ModuleFail(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg"))
        self.result = result


def load_module(name: str) -> ModuleType:
    sys.modules.setdefault("ansible.module_utils.zonefarm_signing", control.node.signing)
    sys.modules.setdefault("ansible.module_utils.zonefarm_secretfile", control.node.secretfile)
    spec = importlib.util.spec_from_file_location(f"zf_library_{name}", LIBRARY / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exit(self: basic.AnsibleModule, **kw: Any) -> None:
    raise ModuleExit(kw)


def _fail(self: basic.AnsibleModule, **kw: Any) -> None:
    raise ModuleFail(kw)
