"""Fixtures for the module tests; the helpers live in ``_kolla.py`` (importable once)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from tests.library._kolla import ModuleExit, _exit, _fail


@pytest.fixture
def run_module() -> Iterator[Any]:
    """``run_module(mod, args)`` returns the exit_json result or raises ModuleFail."""

    def run(mod: ModuleType, args: dict[str, Any]) -> dict[str, Any]:
        with patch_module_args(args), mock.patch.object(basic.AnsibleModule, "exit_json", _exit), \
                mock.patch.object(basic.AnsibleModule, "fail_json", _fail):
            try:
                mod.main()
            except ModuleExit as done:
                return done.result
        raise AssertionError("module returned without exit_json")

    yield run
