"""Templates (versions, owners, launch) and bulk submission, over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.support.client import Api

SPEC = {"name": "shell", "params": {"argv": ["echo", "hi"], "env": {"A": "1"}}, "priority": 2, "timeout": 60}


def make(api: Api, token: str, name: str = "nightly", **body: Any) -> dict[str, Any]:
    resp = api.post("/templates", token=token, json={"name": name, "spec": SPEC, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


def tasks_total(api: Api) -> int:
    return api.get("/tasks", token=api.root).json()["total"]


def test_versions_launch_and_the_task_records_its_template(api: Api) -> None:
    alice, token = api.submitter("alice")
    tpl = make(api, token)
    assert tpl["owner"] == alice["id"] and tpl["space"] is None and tpl["version"] == 1
    assert tpl["spec"] == SPEC  # stored as given: the schema's defaults are not frozen in
    changed = api.patch(f"/templates/{tpl['id']}", token=token,
                        json={"spec": {**SPEC, "params": {"argv": ["echo", "v2"]}}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2 and changed.json()["spec"]["params"] == {"argv": ["echo", "v2"]}
    old = api.get(f"/templates/{tpl['id']}/versions/1", token=token).json()
    assert old["version"] == 1 and old["spec"]["params"]["argv"] == ["echo", "hi"]
    assert [v["version"] for v in api.get(f"/templates/{tpl['id']}/versions", token=token).json()["items"]] == [1, 2]
    assert api.get(f"/templates/{tpl['id']}/versions/3", token=token).status_code == 404

    launched = api.post(f"/templates/{tpl['id']}/launch", token=token,
                        json={"params": {"env": {"B": "2"}}, "priority": 7})
    assert launched.status_code == 201, launched.text
    task = launched.json()
    assert (task["template"], task["template_version"], task["schedule"]) == (tpl["id"], 2, None)
    assert task["owner"] == alice["id"] and task["priority"] == 7 and task["timeout"] == 60
    assert task["params"] == {"argv": ["echo", "v2"], "env": {"B": "2"}}  # params merged key by key
    plain = api.post(f"/templates/{tpl['id']}/launch", token=token).json()
    assert plain["priority"] == 2 and plain["params"] == {"argv": ["echo", "v2"]}
    assert api.post(f"/templates/{tpl['id']}/launch", token=token, json={"timeout": None}).json()["timeout"] == 3600
    api.post("/tasks", token=token, json={"name": "shell", "params": {"argv": ["true"]}})  # not from the template
    assert api.get("/tasks", token=token, params={"template": tpl["id"]}).json()["total"] == 3


def test_bad_specs_and_overrides_name_the_field(api: Api) -> None:
    _, token = api.submitter("alice")
    bad = api.post("/templates", token=token, json={"name": "t", "spec": {"name": "shell", "params": {}}})
    assert bad.status_code == 422 and "params.argv" in bad.json()["error"]["message"]
    unknown = api.post("/templates", token=token, json={"name": "t", "spec": {"name": "nope"}})
    assert unknown.status_code == 422 and "name:" in unknown.json()["error"]["message"]
    tpl = make(api, token)
    assert api.post("/templates", token=token, json={"name": "nightly", "spec": SPEC}).status_code == 409
    shell = api.post(f"/templates/{tpl['id']}/launch", token=token, json={"params": {"shell": True}})
    assert shell.status_code == 422 and "params.shell" in shell.json()["error"]["message"]
    prio = api.post(f"/templates/{tpl['id']}/launch", token=token, json={"priority": 5000})
    assert prio.status_code == 422 and "priority" in prio.json()["error"]["message"]
    name = api.post(f"/templates/{tpl['id']}/launch", token=token, json={"name": "container"})
    assert name.status_code == 422  # the task type is the template's
    assert tasks_total(api) == 0


def test_launch_takes_the_rights_submitting_takes(api: Api) -> None:
    alice, token = api.submitter("alice")
    _, carol_token = api.user_with_token("carol")  # no grant
    space = api.post("/spaces", token=token, json={"name": "climate"}).json()["id"]
    carol = api.get("/users", token=api.root, params={"name": "carol"}).json()["items"][0]
    assert api.put(f"/spaces/{space}/users/{carol['id']}", token=token, json={"role": "member"}).status_code == 201
    shared = make(api, token, "shared", space=space)
    assert shared["space"] == space and shared["owner"] is None
    mine = make(api, token, "mine")
    # carol sees the space's template, not alice's own; and without a grant she may not launch it
    listed = api.get("/templates", token=carol_token).json()
    assert [t["name"] for t in listed["items"]] == ["shared"]
    assert api.get(f"/templates/{mine['id']}", token=carol_token).status_code == 403
    refused = api.post(f"/templates/{shared['id']}/launch", token=carol_token)
    assert refused.status_code == 403 and "no grant" in refused.json()["error"]["message"]
    api.grant(user=carol["id"], task_type="shell")
    assert api.post(f"/templates/{shared['id']}/launch", token=carol_token).status_code == 201
    # a member launches; changing the space's template takes its admin role
    assert api.patch(f"/templates/{shared['id']}", token=carol_token, json={"name": "x"}).status_code == 403
    assert api.delete(f"/templates/{shared['id']}", token=carol_token).status_code == 403
    in_space = {"name": "c", "space": space, "spec": SPEC}
    assert api.post("/templates", token=carol_token, json=in_space).status_code == 403
    assert api.patch(f"/templates/{shared['id']}", token=token, json={"name": "renamed"}).json()["version"] == 2
    sch = api.post("/schedules", token=token, json={"template": mine["id"], "interval": 60})
    assert sch.status_code == 201, sch.text
    assert api.delete(f"/templates/{mine['id']}", token=token).status_code == 204
    assert api.get(f"/schedules/{sch.json()['id']}", token=token).status_code == 404  # its schedules went with it
    assert api.get(f"/templates/{mine['id']}", token=token).status_code == 404
    assert api.get("/templates", token=api.root).json()["total"] == 1


def test_batch_is_all_or_nothing_with_per_item_errors(api: Api) -> None:
    _, token = api.submitter("alice", task_type="shell")
    tpl = make(api, token)
    items = [{"name": "shell", "params": {"argv": ["true"]}},
             {"template": tpl["id"], "params": {"argv": ["echo", "x"]}},
             {"name": "shell", "params": {"argv": ["true"]}, "priority": 9}]
    done = api.post("/tasks/batch", token=token, json={"tasks": items, "priority": 4})
    assert done.status_code == 201, done.text
    ids = done.json()["ids"]
    assert done.json()["count"] == 3 and len(set(ids)) == 3
    got = [api.get(f"/tasks/{i}", token=token).json() for i in ids]
    assert [t["priority"] for t in got] == [4, 2, 9]  # the default fills only where nothing (nor the template) sets one
    assert got[1]["template"] == tpl["id"] and got[1]["params"] == {"argv": ["echo", "x"], "env": {"A": "1"}}

    before = tasks_total(api)
    bad = [{"name": "shell", "params": {"argv": ["true"]}}, {"name": "shell", "params": {}},
           {"template": tpl["id"], "priority": 5000}, {"name": "shell", "params": {"argv": ["x"]}, "oops": 1},
           {"template": 999999}]
    refused = api.post("/tasks/batch", token=token, json={"tasks": bad})
    assert refused.status_code == 422, refused.text
    details = refused.json()["error"]["details"]
    assert {(d["index"], d["field"]) for d in details} == {(1, "params.argv"), (2, "priority"), (3, "oops"),
                                                            (4, "template")}
    assert tasks_total(api) == before  # nothing of the batch was written

    no_grant = api.post("/tasks/batch", token=token, json={"tasks": [items[0], {"name": "container",
                                                                                "params": {"image": "busybox"}}]})
    assert no_grant.status_code == 403, no_grant.text
    assert [d["index"] for d in no_grant.json()["error"]["details"]] == [1]
    assert tasks_total(api) == before
    too_many = api.post("/tasks/batch", token=token, json={"tasks": [items[0]] * 1001})
    assert too_many.status_code == 422 and "tasks" in too_many.json()["error"]["message"]


def test_batch_of_a_thousand_in_one_request(api: Api) -> None:
    resp = api.post("/tasks/batch", token=api.root,
                    json={"tasks": [{"name": "shell", "params": {"argv": ["true", str(i)]}} for i in range(1000)]})
    assert resp.status_code == 201, resp.text
    ids = resp.json()["ids"]
    assert len(ids) == 1000 and ids == sorted(ids)
    assert api.get(f"/tasks/{ids[-1]}", token=api.root).json()["params"] == {"argv": ["true", "999"]}
    events = api.get(f"/tasks/{ids[500]}/events", token=api.root).json()
    assert [e["to_state"] for e in events] == ["queued"] and "batch of 1000" in events[0]["reason"]
