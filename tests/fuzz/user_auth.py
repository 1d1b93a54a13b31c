"""schemathesis hook (``SCHEMATHESIS_HOOKS``): fuzz as an ordinary user, logged in over the API.

The fuzzer revokes its own token now and then (``DELETE /auth/token``, ``DELETE
/users/{id}/tokens``): a 401 makes schemathesis call ``get`` again (its default
``retry_on``), so the run goes on as the user instead of collecting 401s. The credentials
come from the environment ``tests/test_fuzz.py`` starts ``st`` with.
"""

from __future__ import annotations

import os
from typing import Any

import requests
import schemathesis


@schemathesis.auth()
class UserToken:
    def get(self, case: Any, context: Any) -> str:
        resp = requests.post(os.environ["FUZZ_API"] + "/auth/token", timeout=30,
                             data={"grant_type": "password", "username": os.environ["FUZZ_USERNAME"],
                                   "password": os.environ["FUZZ_PASSWORD"]})
        resp.raise_for_status()
        return str(resp.json()["access_token"])

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
