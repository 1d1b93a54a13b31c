"""Users, tokens and SSH keys over real HTTP, on both databases."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.client import Api


def _ssh_key(tmp_path, name="id") -> str:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path), "-C", "t@zf"],
                   check=True)
    return (tmp_path / f"{name}.pub").read_text().strip()


def test_root_creates_user_and_user_logs_in(api: Api) -> None:
    user = api.make_user("alice", full_name="Alice A", email="alice@example.org")
    assert user["username"] == "alice" and user["active"] is True
    token = api.login("alice")
    me = api.get(f"/users/{user['id']}", token=token)
    assert me.status_code == 200 and me.json()["email"] == "alice@example.org"


def test_token_response_shape_and_bad_password(api: Api) -> None:
    api.make_user("bob")
    ok = api.post("/auth/token", data={"grant_type": "password", "username": "bob", "password": "password123"})
    body = ok.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0 and body["access_token"]
    bad = api.post("/auth/token", data={"grant_type": "password", "username": "bob", "password": "nope-nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    unknown = api.post("/auth/token", data={"grant_type": "password", "username": "ghost", "password": "x"})
    assert unknown.status_code == 401
    wrong_grant = api.post("/auth/token", data={"grant_type": "client_credentials", "username": "bob",
                                                "password": "password123"})
    assert wrong_grant.status_code == 422 and "grant_type" in wrong_grant.json()["error"]["message"]


def test_revoked_token_stops_working(api: Api) -> None:
    _, token = api.user_with_token("carol")
    assert api.get("/users", token=token).status_code == 200
    assert api.delete("/auth/token", token=token).status_code == 204
    again = api.get("/users", token=token)
    assert again.status_code == 401


def test_inactive_user_cannot_log_in_or_use_token(api: Api) -> None:
    user, token = api.user_with_token("dave")
    assert api.patch(f"/users/{user['id']}", token=api.root, json={"active": False}).status_code == 200
    assert api.get("/users", token=token).status_code == 401
    resp = api.post("/auth/token", data={"grant_type": "password", "username": "dave", "password": "password123"})
    assert resp.status_code == 401


def test_users_only_root_creates_and_deletes(api: Api) -> None:
    user, token = api.user_with_token("erin")
    resp = api.post("/users", token=token, json={"username": "mallory", "password": "password123"})
    assert resp.status_code == 403
    assert api.delete(f"/users/{user['id']}", token=token).status_code == 403
    assert api.delete(f"/users/{user['id']}", token=api.root).status_code == 204
    assert api.get(f"/users/{user['id']}", token=api.root).status_code == 404


def test_user_sees_others_without_email_and_cannot_edit_them(api: Api) -> None:
    other = api.make_user("frank", email="frank@example.org")
    _, token = api.user_with_token("grace")
    shown = api.get(f"/users/{other['id']}", token=token).json()
    assert shown["email"] is None
    assert api.patch(f"/users/{other['id']}", token=token, json={"full_name": "X"}).status_code == 403


def test_user_cannot_activate_itself(api: Api) -> None:
    user, token = api.user_with_token("heidi")
    assert api.patch(f"/users/{user['id']}", token=token, json={"active": True}).status_code == 403
    ok = api.patch(f"/users/{user['id']}", token=token, json={"full_name": "Heidi H"})
    assert ok.status_code == 200 and ok.json()["full_name"] == "Heidi H"


def test_duplicate_username_is_409(api: Api) -> None:
    api.make_user("ivan")
    resp = api.post("/users", token=api.root, json={"username": "ivan", "password": "password123"})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize("body,field", [
    ({"password": "password123"}, "username"),
    ({"username": "Bad Name!", "password": "password123"}, "username"),
    ({"username": "judy", "password": "short"}, "password"),
    ({"username": "judy", "password": "password123", "email": "not-an-email"}, "email"),
    ({"username": "judy", "password": "password123", "colour": "red"}, "colour"),
])
def test_schema_violations_name_the_field(api: Api, body: dict, field: str) -> None:
    resp = api.post("/users", token=api.root, json=body)
    assert resp.status_code == 422
    assert field in resp.json()["error"]["message"]


def test_list_users_paginates_and_filters(api: Api) -> None:
    for i in range(7):
        api.make_user(f"pager{i}")
    api.make_user("other")
    page = api.get("/users", token=api.root, params={"limit": 3, "offset": 0, "name": "pager"}).json()
    assert page["total"] == 7 and len(page["items"]) == 3
    rest = api.get("/users", token=api.root, params={"limit": 5, "offset": 5, "name": "pager"}).json()
    assert [u["username"] for u in rest["items"]] == ["pager5", "pager6"]
    bad = api.get("/users", token=api.root, params={"limit": 0})
    assert bad.status_code == 422 and "limit" in bad.json()["error"]["message"]


def test_ssh_keys_add_list_delete(api: Api, tmp_path) -> None:
    user, token = api.user_with_token("ken")
    key = _ssh_key(tmp_path)
    added = api.post(f"/users/{user['id']}/keys", token=token, json={"name": "laptop", "key": key})
    assert added.status_code == 201, added.text
    fp = added.json()["fingerprint"]
    expected = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "id.pub")],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    assert added.json()["fingerprint_openssh"] == expected
    # the base64 body alone is accepted too (Zimfarm's form), and is the same key
    dup = api.post(f"/users/{user['id']}/keys", token=token, json={"name": "again", "key": key.split()[1]})
    assert dup.status_code == 409
    listed = api.get(f"/users/{user['id']}/keys", token=token).json()
    assert [k["fingerprint"] for k in listed] == [fp]
    assert api.delete(f"/users/{user['id']}/keys/{fp}", token=token).status_code == 204
    assert api.get(f"/users/{user['id']}/keys", token=token).json() == []
    assert api.delete(f"/users/{user['id']}/keys/{fp}", token=token).status_code == 404


def test_malformed_ssh_key_is_422(api: Api) -> None:
    user, token = api.user_with_token("leo")
    resp = api.post(f"/users/{user['id']}/keys", token=token,
                    json={"name": "junk", "key": "ssh-ed25519 AAAAnotreallyakeyatall"})
    assert resp.status_code == 422 and "key" in resp.json()["error"]["message"]
