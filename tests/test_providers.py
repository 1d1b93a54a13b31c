"""Providers over real HTTP on both databases: registration, token, updates, region of interest."""

from __future__ import annotations

import hashlib

import pytest

from control.core.db import connection, database, init_database
from control.migrations import upgrade
from control.registry.membership import upload_targets
from control.registry.models import Provider, Token
from tests.support.client import Api
from tests.support.registry import MIB, created, error, group, join, provider, space, support

BODY = {"name": "prov1", "domain": "prov1.example.org", "admin_email": "ops@example.org"}


def test_register_returns_token_once_and_stores_only_its_digest(api: Api) -> None:
    resp = api.post("/providers", token=api.root, json={**BODY, "sftp_host": "10.0.0.5",
                                                        "sftp_user": "zfupload", "storage_path": "/srv/zf"})
    reg = created(resp)
    p, token = reg["provider"], reg["token"]
    assert resp.headers["Location"] == f"/api/v1/providers/{p['id']}"
    assert resp.headers["Cache-Control"] == "no-store"
    assert p["sftp_port"] == 22 and p["storage_path"] == "/srv/zf"
    shown = api.get(f"/providers/{p['id']}", token=token)
    assert shown.status_code == 200 and shown.json() == p
    assert token not in api.get("/providers", token=api.root).text
    with connection():
        hashes = [t.token_hash for t in Token.select().where(Token.provider == p["id"])]
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]


def test_duplicate_name_is_409_and_name_filter_finds_it(api: Api) -> None:
    created(api.post("/providers", token=api.root, json=BODY))
    provider(api, "prov10")
    provider(api, "other")
    assert "prov1" in error(api.post("/providers", token=api.root, json=BODY), 409)
    found = api.get("/providers", token=api.root, params={"name": "prov1"}).json()
    assert sorted(x["name"] for x in found["items"]) == ["prov1", "prov10"]
    page = api.get("/providers", token=api.root, params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and [x["name"] for x in page["items"]] == ["prov10"]


@pytest.mark.parametrize("patch,field", [
    ({"name": None}, "name"),
    ({"domain": "bad domain!"}, "domain"),
    ({"admin_email": "nope"}, "admin_email"),
    ({"sftp_port": 70000}, "sftp_port"),
    ({"storage_path": "relative/dir"}, "storage_path"),
    ({"token": "mine"}, "token"),
])
def test_registration_schema_errors_name_the_field(api: Api, patch: dict, field: str) -> None:
    body = {k: v for k, v in {**BODY, **patch}.items() if v is not None}
    assert field in error(api.post("/providers", token=api.root, json=body), 422)


def test_only_root_registers_and_deletes(api: Api) -> None:
    _, ut = api.user_with_token("alice")
    p, pt = provider(api, "prov1")
    error(api.post("/providers", token=ut, json=BODY | {"name": "x"}), 403)
    error(api.post("/providers", token=pt, json=BODY | {"name": "y"}), 403)
    error(api.post("/providers", json=BODY | {"name": "z"}), 401)
    error(api.delete(f"/providers/{p['id']}", token=ut), 403)
    error(api.delete(f"/providers/{p['id']}", token=pt), 403)
    assert api.delete(f"/providers/{p['id']}", token=api.root).status_code == 204
    error(api.get(f"/providers/{p['id']}", token=api.root), 404)
    error(api.delete(f"/providers/{p['id']}", token=api.root), 404)
    error(api.get("/providers", token=pt), 401)  # its token went with it


def test_update_by_root_or_itself(api: Api) -> None:
    _, ut = api.user_with_token("alice")
    p, pt = provider(api, "prov1")
    q, qt = provider(api, "prov2")
    upd = api.patch(f"/providers/{p['id']}", token=pt, json={"storage_path": "/data/zf", "sftp_port": 2222})
    assert upd.status_code == 200
    assert upd.json()["storage_path"] == "/data/zf" and upd.json()["sftp_port"] == 2222
    assert api.patch(f"/providers/{p['id']}", token=api.root, json={"domain": "p1.example.net"}).json()[
        "domain"] == "p1.example.net"
    error(api.patch(f"/providers/{p['id']}", token=qt, json={"domain": "evil.example"}), 403)
    error(api.patch(f"/providers/{p['id']}", token=ut, json={"domain": "evil.example"}), 403)
    error(api.patch(f"/providers/{p['id']}", token=api.root, json={"name": "prov2"}), 409)
    assert "sftp_port" in error(api.patch(f"/providers/{p['id']}", token=pt, json={"sftp_port": 0}), 422)
    error(api.patch("/providers/424242", token=api.root, json={"domain": "x.example"}), 404)
    assert api.get(f"/providers/{q['id']}", token=qt).json()["name"] == "prov2"


def test_users_read_providers_but_a_provider_sees_only_itself(api: Api) -> None:
    _, ut = api.user_with_token("alice")
    p, pt = provider(api, "prov1")
    q, _ = provider(api, "prov2")
    assert api.get("/providers", token=ut).json()["total"] == 2
    assert api.get(f"/providers/{q['id']}", token=ut).status_code == 200
    mine = api.get("/providers", token=pt).json()
    assert [x["id"] for x in mine["items"]] == [p["id"]]
    error(api.get(f"/providers/{q['id']}", token=pt), 403)
    error(api.get(f"/providers/{p['id']}/spaces", token=ut), 403)


def test_rotating_the_token_retires_the_old_one(api: Api) -> None:
    p, old = provider(api, "prov1")
    rotated = api.post(f"/providers/{p['id']}/token", token=old)
    assert rotated.status_code == 200
    new = rotated.json()["token"]
    assert new != old
    error(api.get(f"/providers/{p['id']}", token=old), 401)
    assert api.get(f"/providers/{p['id']}", token=new).status_code == 200
    again = api.post(f"/providers/{p['id']}/token", token=api.root).json()["token"]
    error(api.get(f"/providers/{p['id']}", token=new), 401)
    assert api.get(f"/providers/{p['id']}", token=again).status_code == 200
    _, ut = api.user_with_token("alice")
    error(api.post(f"/providers/{p['id']}/token", token=ut), 403)
    error(api.post("/providers/424242/token", token=api.root), 404)


def test_provider_reads_only_its_region(api: Api) -> None:
    owner, ot = api.user_with_token("olga")
    member = api.make_user("mia")
    outsider = api.make_user("otto")
    mine = space(api, ot, "mine")["id"]
    theirs = space(api, ot, "theirs")["id"]
    g = group(api, ot, "lab")["id"]
    child = group(api, ot, "lab-sub")["id"]
    lone = group(api, ot, "lone")["id"]
    api.put(f"/groups/{g}/children/{child}", token=ot)
    api.put(f"/spaces/{mine}/groups/{g}", token=ot, json={"role": "member"})
    join(api, ot, "groups", child, member["id"])
    join(api, ot, "spaces", theirs, outsider["id"])
    p, pt = provider(api, "prov1")
    support(api, ot, mine, p["id"])
    assert [x["id"] for x in api.get("/spaces", token=pt).json()["items"]] == [mine]
    assert api.get(f"/spaces/{mine}/users", token=pt).json()["items"][0]["id"] == owner["id"]
    eff = {u["username"] for u in api.get(f"/spaces/{mine}/effective_users", token=pt).json()["items"]}
    assert eff == {"olga", "mia"}
    assert sorted(x["id"] for x in api.get("/groups", token=pt).json()["items"]) == sorted([g, child])
    assert api.get(f"/groups/{child}/users", token=pt).status_code == 200
    for path in (f"/spaces/{theirs}", f"/spaces/{theirs}/users", f"/groups/{lone}"):
        error(api.get(path, token=pt), 403)
    # reading is all a provider does to the registry
    error(api.patch(f"/spaces/{mine}", token=pt, json={"name": "x"}), 403)
    error(api.put(f"/spaces/{mine}/users/{outsider['id']}", token=pt, json={}), 403)
    error(api.post("/groups", token=pt, json={"name": "pgroup"}), 403)
    error(api.post("/spaces", token=pt, json={"name": "pspace"}), 403)


def test_migration_0003_adds_storage_columns_to_an_older_database(db_url: str) -> None:
    """A database from before 0003 (provider without storage columns) gains them, keeps its rows,
    and a second upgrade is harmless."""
    init_database(db_url)
    try:
        with connection():
            for column in ("sftp_host", "sftp_port", "sftp_user", "storage_path"):
                database.execute_sql(f"ALTER TABLE provider DROP COLUMN {column}")
            database.execute_sql("DELETE FROM schema_version WHERE version = 3")
            database.execute_sql("INSERT INTO provider (name, domain, admin_email, created_at, updated_at) "
                                 "VALUES ('old', 'old.example.org', 'o@example.org', 0, 0)")
        assert upgrade() == ["m0003_provider_storage"]
        assert upgrade() == []
        with connection():
            old = Provider.get(Provider.name == "old")
            assert (old.domain, old.sftp_port, old.sftp_host, old.storage_path) == ("old.example.org", 22, None, None)
    finally:
        database.close_all()


def test_upload_targets_name_each_supporting_providers_space_directory(api: Api) -> None:
    """What the dispatcher reads to upload a space's outputs (docs/farm-contract.md)."""
    s = space(api, api.root, "outputs")["id"]
    p, _ = provider(api, "store1", sftp_host="10.0.0.7", sftp_user="zfup", storage_path="/srv/zf/")
    q, _ = provider(api, "bare")
    support(api, api.root, s, p["id"], 3 * MIB)
    support(api, api.root, s, q["id"])
    with connection():
        targets = upload_targets(s)
    assert [(t["name"], t["path"], t["size"]) for t in targets] == [("store1", f"/srv/zf/{s}", 3 * MIB),
                                                                   ("bare", None, 10 * MIB)]
    assert targets[0]["sftp_host"] == "10.0.0.7" and targets[0]["sftp_port"] == 22
