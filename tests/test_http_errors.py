"""Every error the API can answer is JSON with the right status, never HTML or a 500."""

from __future__ import annotations

import requests

from tests.support.client import Api


def _is_json_error(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] and err["message"]
    return err


def test_malformed_json_is_400(api: Api) -> None:
    resp = api.post("/users", token=api.root, data=b"{not json", headers={"Content-Type": "application/json"})
    _is_json_error(resp, 400)


def test_non_object_json_is_422(api: Api) -> None:
    resp = api.post("/users", token=api.root, json=[1, 2, 3])
    _is_json_error(resp, 422)


def test_missing_and_invalid_credentials_are_401(api: Api) -> None:
    err = _is_json_error(api.get("/users"), 401)
    assert "bearer" in err["message"]
    _is_json_error(api.get("/users", token="not-a-token"), 401)
    _is_json_error(api.get("/users", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401)


def test_unknown_id_is_404(api: Api) -> None:
    _is_json_error(api.get("/users/999999", token=api.root), 404)


def test_unknown_route_is_json_404(api: Api) -> None:
    _is_json_error(api.get("/no-such-thing", token=api.root), 404)


def test_wrong_method_is_405(api: Api) -> None:
    resp = api.request("PUT", "/users", token=api.root, json={})
    _is_json_error(resp, 405)


def test_body_over_1mib_is_413(api: Api) -> None:
    big = b'{"username": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    resp = api.post("/users", token=api.root, data=big, headers={"Content-Type": "application/json"})
    _is_json_error(resp, 413)


def test_failed_write_loses_nothing(api: Api) -> None:
    before = api.get("/users", token=api.root).json()["total"]
    api.post("/users", token=api.root, json={"username": "x", "password": "short"})
    assert api.get("/users", token=api.root).json()["total"] == before
