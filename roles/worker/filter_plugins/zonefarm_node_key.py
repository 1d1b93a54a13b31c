"""Filter ``zonefarm_node_key``: a node's own key, derived on the Ansible controller.

    node_key = {{ worker_nodes_secret | zonefarm_node_key(worker_name, worker_key_generation) }}

Templates render on the controller, so the nodes secret never reaches the node: only the
key derived from it for this node's name and key generation is written there (with
``no_log``). The derivation is ``control.node.signing.derive_node_key``, the very
function the API checks with: imported from the package when the controller's Python has
it (the project's venv), else loaded by path from this checkout.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIGNING = Path(__file__).resolve().parents[3] / "control" / "node" / "signing.py"


def _derive() -> Callable[[str, str, int], str]:
    try:
        from control.node.signing import derive_node_key
    except ImportError:
        spec = importlib.util.spec_from_file_location("zonefarm_signing", SIGNING)
        assert spec is not None and spec.loader is not None, SIGNING
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        derive_node_key = module.derive_node_key
    return derive_node_key


def zonefarm_node_key(nodes_secret: str, name: str, generation: Any = 0) -> str:
    return _derive()(str(nodes_secret), str(name), int(generation))


class FilterModule:
    def filters(self) -> dict[str, Callable[..., str]]:
        return {"zonefarm_node_key": zonefarm_node_key}
