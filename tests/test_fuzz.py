"""schemathesis against the live server on SQLite: every operation of the served OpenAPI
document, every check, a fixed seed and a bounded number of examples, as root and as an
ordinary user. It must find nothing: no 500, no answer that differs from the document, no
invalid request accepted and no valid one refused.

`tests/fuzz/schemathesis.toml` lists, per operation, the few schema-valid requests a server
may still refuse with 422 because only the registry knows they are wrong (an owner that
does not exist, an unknown task type, a key that does not parse). Nothing is excluded.
The node routes are signed with a node's key, which the fuzzer does not have: it sees their
401s (and that they do not skip authentication).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from control.core.config import Settings
from control.web.app import build_app
from control.web.routing import ROUTES
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.client import Api
from tests.support.server import LiveServer

FUZZ = Path(__file__).resolve().parent / "fuzz"
ST = str(Path(sys.executable).with_name("st"))
# Fixed, so a run is repeatable; FUZZ_SEED and FUZZ_EXAMPLES explore further by hand.
SEED = int(os.environ.get("FUZZ_SEED", "20260611"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))  # per operation and phase: about a minute per run


def _run(api: Api, tmp_path: Path, who: str) -> str:
    args = [ST, "--config-file", str(FUZZ / "schemathesis.toml"), "run", f"{api.base}/api/v1/openapi.json",
            "--checks", "all", "--seed", str(SEED), "--max-examples", str(EXAMPLES), "--workers", "1",
            "--request-timeout", "30", "--generation-database", "none", "--no-color"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZONEFARM_", "SCHEMATHESIS_"))}
    env["PYTHONPATH"] = str(FUZZ.parent.parent)
    if who == "root":
        args += ["--header", f"Authorization: Bearer {ROOT_SECRET}"]
    else:
        api.make_user("fuzzer", password="fuzzer-password")
        env.update(SCHEMATHESIS_HOOKS=str(FUZZ / "user_auth.py"), FUZZ_API=f"{api.base}/api/v1",
                   FUZZ_USERNAME="fuzzer", FUZZ_PASSWORD="fuzzer-password")  # noqa: S106
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    return output


@pytest.mark.slow
@pytest.mark.timeout(900)  # a run is bounded by its examples; a loaded machine is slower, not wrong
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("who", ["root", "user"])
def test_schemathesis_finds_nothing(db_url: str, tmp_path: Path, who: str) -> None:
    # Long-polls are cut to 1 s so the run is not spent waiting. The fuzzer's own failures (its
    # logins, all from 127.0.0.1, and wrong current_password on PATCH /users/{id} as the user)
    # must not lock the user's session out of POST /auth/token: test_tokens.py tests the throttle.
    settings = Settings(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                        data_dir=str(tmp_path / "data"), listen="127.0.0.1:0", changes_max_wait=1,
                        login_max_failures=1_000_000, login_max_failures_per_address=1_000_000)
    server = LiveServer(build_app(settings)).start()
    try:
        output = _run(Api(server.url, ROOT_SECRET), tmp_path, who)
    finally:
        server.stop()
    # every operation but the document itself, which the schemathesis CLI leaves out on its own
    operations = {(spec.method, spec.full_path) for spec in ROUTES} - {("GET", "/api/v1/openapi.json")}
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-5000:]
    # every route was selected and tested (the CLI may or may not count the document itself)
    assert int(selected[1]) == int(selected[2]) == int(tested[1]) >= len(operations), output[-5000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and generated[1] == generated[2] and int(generated[1]) > 10 * len(operations), output[-5000:]
