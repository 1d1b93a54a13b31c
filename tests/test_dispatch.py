"""End to end: real ``zonefarm dispatcher`` processes, real ansible-runner jobs, real callbacks.

Nodes are names mapped to this machine (``tests.support.farm``). The API is the real app on
loopback (``live_server``) and runs on SQLite and PostgreSQL. Docker (container tasks) and
sshd (pipeline uploads) are real daemons the tests start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.core.config import Settings
from control.node.config import write_node_config
from control.node.signing import derive_node_key
from tests.conftest import NODES_SECRET, farm_test_settings
from tests.support.apiproc import clean_env
from tests.support.client import Api
from tests.support.farm import ROOT, Farm
from tests.support.pg import free_port
from tests.support.server import LiveServer
from tests.support.sshd import Sshd

pytestmark = pytest.mark.slow
LEASE = 4


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Short leases so lost runners are noticed within seconds; the test images allowed."""
    return farm_test_settings(db_url, tmp_path, LEASE, container_images="zonefarm-test/*")


def test_shell_per_node_region_and_broadcast(farm: Farm) -> None:
    for name, region in (("wk1", "eu"), ("wk2", "eu"), ("wk3", "us")):
        farm.add_node(name, region=region)
    farm.start_dispatcher("d1")
    one = farm.submit("shell", {"argv": ["sh", "-c", "echo node=$NODE_TAG; pwd"], "env": {"NODE_TAG": "x1"},
                                "cwd": "/tmp"}, target={"node": "wk3"})
    region = farm.submit("shell", {"argv": ["sh", "-c", "echo region-run"]}, target={"region": "eu"})
    everywhere = farm.submit("shell", {"argv": ["true"]}, target={"all": True})
    failing = farm.submit("shell", {"argv": ["sh", "-c", "echo broken >&2; exit 4"]}, max_attempts=1)

    done = farm.wait(one["id"])
    assert done["state"] == "succeeded" and done["exit_code"] == 0 and done["node"] == "wk3"
    assert farm.log(one["id"]) == "node=x1\n/tmp\n"
    assert [e["to_state"] for e in farm.events(one["id"])] == ["queued", "assigned", "running", "succeeded"]

    reg = farm.wait(region["id"])
    assert reg["state"] == "succeeded"
    assert sorted(c["node"] for c in reg["children"]) == ["wk1", "wk2"]
    for child in reg["children"]:
        assert farm.log(child["id"]) == "region-run\n"

    every = farm.wait(everywhere["id"])
    assert every["state"] == "succeeded"
    assert sorted(c["node"] for c in every["children"]) == ["wk1", "wk2", "wk3"]

    bad = farm.wait(failing["id"])
    assert bad["state"] == "failed" and bad["exit_code"] == 4 and farm.log(failing["id"]) == "broken\n"

    # one job per round, artifacts rotated to artifacts_keep
    jobs = list((Path(farm.settings.data_dir) / "dispatch" / "jobs").iterdir())
    assert 1 <= len(jobs) <= 3


def test_cancel_and_timeout_kill_the_process(farm: Farm) -> None:
    work = farm.add_node("wk1")
    farm.start_dispatcher("d1")
    slow = farm.submit("shell", {"argv": ["sh", "-c", "echo begun; sleep 120"]})
    late = farm.submit("shell", {"argv": ["sleep", "120"]}, timeout=2)
    farm.wait(slow["id"], ("running",))
    deadline = time.monotonic() + 20
    while "begun" not in farm.log(slow["id"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert farm.log(slow["id"]) == "begun\n"  # output arrives while the task runs
    resp = farm.api.post(f"/tasks/{slow['id']}/cancel", token=farm.api.root)
    assert resp.status_code == 200, resp.text
    cancelled = farm.wait(slow["id"], timeout=30)
    assert cancelled["state"] == "cancelled"
    timed = farm.wait(late["id"], timeout=30)
    assert timed["state"] == "timed_out"
    for task in (slow, late):
        tdir = work / "tasks" / str(task["id"]) / "1"
        child = int((tdir / "child.pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    assert (work / "tasks" / str(slow["id"]) / "1" / "killed").read_text() == "cancelled"


def test_killed_runner_is_lost_requeued_and_finished_elsewhere(farm: Farm) -> None:
    farm.add_node("wk1", concurrency=1)
    farm.add_node("wk2", concurrency=1)
    farm.start_dispatcher("d1")
    task = farm.submit("shell", {"argv": ["sh", "-c", "sleep 3; echo finished-on-$(basename $(dirname $(dirname "
                                          "$(dirname $ZONEFARM_TASK_DIR))))"]})
    first = farm.wait(task["id"], ("running",))
    tdir = farm.nodes[first["node"]] / "tasks" / str(task["id"]) / "1"
    os.kill(int((tdir / "runner.pid").read_text()), signal.SIGKILL)
    os.killpg(int((tdir / "child.pid").read_text()), signal.SIGKILL)
    done = farm.wait(task["id"], timeout=60)
    assert done["state"] == "succeeded" and done["attempt"] == 2
    assert done["node"] != first["node"]
    states = [e["to_state"] for e in farm.events(task["id"])]
    assert states == ["queued", "assigned", "running", "lost", "queued", "assigned", "running", "succeeded"]


def test_two_dispatchers_never_run_a_task_twice(farm: Farm) -> None:
    """Both dispatchers claim (a few tasks a round each, so neither takes the whole queue in one
    round), and no task runs twice."""
    works = [farm.add_node(f"wk{i}", concurrency=5) for i in range(1, 4)]
    ids = [farm.submit("shell", {"argv": ["true"]})["id"] for _ in range(18)]
    farm.start_dispatcher("d1", "--claim-limit", "6")  # three rounds' worth: while one's job runs, the other claims
    farm.start_dispatcher("d2", "--claim-limit", "6")
    for task_id in ids:
        assert farm.wait(task_id)["state"] == "succeeded"
    launched = {}
    for work in works:
        for spec in work.glob("tasks/*/*/spec.json"):
            task_id = int(spec.parent.parent.name)
            assert task_id not in launched, f"task {task_id} launched twice"
            launched[task_id] = spec
    assert sorted(launched) == sorted(ids)
    claims = [e["reason"].split()[2] for i in ids for e in farm.events(i) if e["to_state"] == "assigned"]
    assert set(claims) == {"d1", "d2"}, f"claims by dispatcher: {claims}"  # both did work, not one alone


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the split itself: both databases in test_claims
def test_one_dispatcher_per_region(farm: Farm) -> None:
    """Two dispatchers with disjoint regions (dispatch_regions): each claims only for its region's
    nodes, a region nobody was given (ap) is served by both, and when d-us dies (-9) its region
    goes to d-eu once its hold lapses (dispatch_region_lease)."""
    from control.core.db import connection
    from control.farm import regions
    for name, region in (("eu1", "eu"), ("us1", "us"), ("ap1", "ap")):
        farm.add_node(name, region=region, concurrency=4)
    lease = {"ZONEFARM_DISPATCH_REGION_LEASE": "3"}
    farm.start_dispatcher("d-eu", ZONEFARM_DISPATCH_REGIONS="eu", **lease)
    d_us = farm.start_dispatcher("d-us", ZONEFARM_DISPATCH_REGIONS="us", **lease)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both have announced their regions before any task exists
        with connection():
            if regions.held(time.time(), 3) == {"eu": {"d-eu"}, "us": {"d-us"}}:
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"regions never announced\n{farm.dispatcher_logs()[-3000:]}")
    names = ("eu1", "us1", "ap1")
    batch = farm.api.post("/tasks/batch", token=farm.api.root, json={"tasks": [  # one round's worth at once
        {"name": "shell", "params": {"argv": ["true"]}, "target": {"node": name}} for name in names for _ in range(3)]})
    assert batch.status_code == 201, batch.text
    ids = {name: batch.json()["ids"][3 * i:3 * i + 3] for i, name in enumerate(names)}

    def claimers(task_ids: list[int]) -> set[str]:
        return {e["reason"].split()[2] for i in task_ids for e in farm.events(i) if e["to_state"] == "assigned"}

    for task_id in sum(ids.values(), []):
        assert farm.wait(task_id)["state"] == "succeeded", farm.events(task_id)
    assert claimers(ids["eu1"]) == {"d-eu"} and claimers(ids["us1"]) == {"d-us"}
    assert claimers(ids["ap1"]) <= {"d-eu", "d-us"}
    d_us.kill()
    d_us.wait(10)
    farm.dispatchers.remove(d_us)
    orphans = [farm.submit("shell", {"argv": ["true"]}, target={"node": "us1"})["id"] for _ in range(2)]
    for task_id in orphans:
        assert farm.wait(task_id)["state"] == "succeeded", farm.events(task_id)
    assert claimers(orphans) == {"d-eu"}


def test_nodes_secret_never_leaks(farm: Farm) -> None:
    work = farm.add_node("wk1")
    farm.start_dispatcher("d1")
    task = farm.submit("shell", {"argv": ["sh", "-c", "env; cat $ZONEFARM_TASK_DIR/task.json"]})
    assert farm.wait(task["id"])["state"] == "succeeded"
    texts = [farm.log(task["id"]), json.dumps(farm.task(task["id"])), json.dumps(farm.events(task["id"])),
             farm.dispatcher_logs()]
    assert "ZONEFARM_TASK_DIR" in texts[0]
    node_key = derive_node_key(NODES_SECRET, "wk1")
    for text in texts:
        assert NODES_SECRET not in text and node_key not in text
    scanned = 0
    for base in (Path(farm.settings.data_dir), work):
        for path in base.rglob("*"):
            if path.is_file():
                scanned += 1
                assert NODES_SECRET.encode() not in path.read_bytes(), path
                assert node_key.encode() not in path.read_bytes(), path
    assert scanned > 5
    config = farm.tmp / "nodes" / "wk1" / "node.ini"
    # the node holds its own key only, never the zone's nodes secret
    assert node_key in config.read_text() and NODES_SECRET not in config.read_text()
    assert (config.stat().st_mode & 0o777) == 0o600


def test_unreachable_node_releases_its_tasks(farm: Farm) -> None:
    farm.add_node("ghost", ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=free_port())
    farm.start_dispatcher("d1")
    task = farm.submit("shell", {"argv": ["true"]}, max_attempts=2)
    done = farm.wait(task["id"], timeout=90)
    assert done["state"] == "failed"
    reasons = [e["reason"] for e in farm.events(task["id"])]
    assert any("launch failed on node ghost" in r for r in reasons), reasons
    assert [e["to_state"] for e in farm.events(task["id"])].count("assigned") == 2


# --- container ---------------------------------------------------------------------------

IMAGE = "zonefarm-test/busybox:1"


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny image built here with ``docker import`` of busybox-static: no registry needed."""
    from tests.support.dockerd import ensure_docker

    ensure_docker()
    import docker

    client = docker.from_env()
    try:
        client.images.get(IMAGE)
        return IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        pytest.fail("busybox-static is missing: run `make deps`")
    tar_path = tmp_path_factory.mktemp("image") / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "echo", "ls", "cat", "sleep", "env"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    subprocess.run(["docker", "import", "--change", "ENV PATH=/bin", str(tar_path), IMAGE], check=True,
                   capture_output=True)
    return IMAGE


@pytest.mark.docker
def test_container_task(farm: Farm, busybox_image: str) -> None:
    farm.add_node("wk1", container_images="zonefarm-test/*")  # the node's own list (the zone's checks first)
    farm.start_dispatcher("d1")
    # (`||`, not `&&`: a loop ends with its last command's status, and a line that is not Uid: must not fail it)
    uid = 'while read k v rest; do [ "$k" != Uid: ] || echo $v; done < /proc/self/status'
    task = farm.submit("container", {"image": busybox_image, "command": ["sh", "-c", f"echo hi $WHO; {uid}"],
                                     "env": {"WHO": "container"}, "pull": "missing"})
    missing = farm.submit("container", {"image": "zonefarm-test/absent:1", "pull": "never"}, max_attempts=1)
    done = farm.wait(task["id"])
    assert done["state"] == "succeeded", (done["reason"], farm.log(task["id"]))
    greeting, uid = farm.log(task["id"]).splitlines()
    assert greeting == "hi container" and int(uid) >= 60100  # a task account of the sandbox's, never root
    gone = farm.wait(missing["id"])
    assert gone["state"] == "failed" and gone["exit_code"] == 125
    assert "pull is 'never'" in farm.log(missing["id"])


@pytest.mark.docker
def test_container_cancel_stops_the_container(farm: Farm, busybox_image: str) -> None:
    import docker

    farm.add_node("wk1", container_images="zonefarm-test/*")
    farm.start_dispatcher("d1")
    task = farm.submit("container", {"image": busybox_image, "command": ["sleep", "300"], "pull": "never"})
    farm.wait(task["id"], ("running",))
    client = docker.from_env()
    name = f"zonefarm-task-{task['id']}-1"
    deadline = time.monotonic() + 20
    while not client.containers.list(filters={"name": name}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.containers.list(filters={"name": name})
    farm.api.post(f"/tasks/{task['id']}/cancel", token=farm.api.root)
    assert farm.wait(task["id"], timeout=40)["state"] == "cancelled"
    # The state changes when the API takes the cancel; the node removes the container as it
    # stops the runner, within the sandbox's kill grace. A container still there after 20 s
    # outlived its task.
    deadline = time.monotonic() + 20
    while client.containers.list(all=True, filters={"name": name}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.containers.list(all=True, filters={"name": name}) == []


# --- pipeline ----------------------------------------------------------------------------

@pytest.fixture
def sftp_storage() -> Iterator[Path]:
    """Provider storage sshd may chroot to: every directory above it root's and not writable by others
    (a pytest tmp_path sits under the world-writable /tmp, which sshd refuses as a chroot)."""
    base = Path(tempfile.mkdtemp(prefix="zonefarm-test-sftp-", dir="/var/lib"))
    base.chmod(0o755)
    storage = base / "storage"
    storage.mkdir(mode=0o755)
    yield storage
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sshd(tmp_path: Path, sftp_storage: Path) -> Iterator[Sshd]:
    server = Sshd(tmp_path / "sshd", chroot=sftp_storage)
    yield server
    server.stop()


def _space_with_storage(farm: Farm, sshd: Sshd, storage: Path) -> int:
    api = farm.api
    provider = api.post("/providers", token=api.root, json={
        "name": "prov1", "domain": "prov1.example.org", "admin_email": "ops@example.org",
        "sftp_host": "127.0.0.1", "sftp_port": sshd.port, "sftp_user": "root", "storage_path": str(storage)})
    assert provider.status_code == 201, provider.text
    user, token = api.user_with_token("alice")
    space = api.post("/spaces", token=token, json={"name": "climate"})
    assert space.status_code == 201, space.text
    ticket = api.post(f"/spaces/{space.json()['id']}/support_tokens", token=token, json={})
    assert ticket.status_code == 201, ticket.text
    support = api.post(f"/providers/{provider.json()['provider']['id']}/supports", token=provider.json()["token"],
                       json={"token": ticket.json()["token"], "size": 10 * 1024 * 1024})
    assert support.status_code == 201, support.text
    return int(space.json()["id"])


def test_pipeline_uploads_over_sftp(farm: Farm, sshd: Sshd, sftp_storage: Path) -> None:
    storage = sftp_storage
    space_id = _space_with_storage(farm, sshd, storage)
    farm.add_node("wk1", ssh_key=str(sshd.base / "client_key"), known_hosts=str(sshd.base / "known_hosts"))
    farm.start_dispatcher("d1")
    task = farm.submit("pipeline", {
        "prepare": [["mkdir", "-p", "out"]],
        "generate": [["sh", "-c", "echo data-$LABEL > out/result.txt"], ["sh", "-c", "echo 2 > out/second.txt"]],
        "outputs": ["out/result.txt", "out/second.txt"], "env": {"LABEL": "v1"}}, space=space_id)
    done = farm.wait(task["id"], timeout=90)
    assert done["state"] == "succeeded", farm.log(task["id"])
    remote = storage / str(space_id) / f"task-{task['id']}" / "out"
    assert (remote / "result.txt").read_text() == "data-v1\n"
    assert (remote / "second.txt").read_text() == "2\n"
    assert not list(remote.glob(".*part*"))  # temporary names were renamed
    assert [u["path"] for u in done["outputs"]["uploaded"]] == ["out/result.txt", "out/second.txt"]
    assert [u["remote"] for u in done["outputs"]["uploaded"]] == [
        f"{space_id}/task-{task['id']}/out/result.txt", f"{space_id}/task-{task['id']}/out/second.txt"]
    log = farm.log(task["id"])
    assert "stage prepare" in log and "stage upload" in log


def test_pipeline_upload_failure_is_retried_then_fails(farm: Farm, sshd: Sshd, sftp_storage: Path,
                                                        tmp_path: Path) -> None:
    storage = sftp_storage
    space_id = _space_with_storage(farm, sshd, storage)
    # the node trusts a different host key: every attempt is refused, so the task fails clearly
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} " + (sshd.base / "client_key.pub").read_text().split()[0] + " "
                     + (sshd.base / "client_key.pub").read_text().split()[1] + "\n")
    farm.add_node("wk1", ssh_key=str(sshd.base / "client_key"), known_hosts=str(wrong))
    farm.start_dispatcher("d1")
    task = farm.submit("pipeline", {"generate": [["sh", "-c", "echo x > r.txt"]], "outputs": ["r.txt"]},
                       space=space_id, max_attempts=1)
    done = farm.wait(task["id"], timeout=90)
    assert done["state"] == "failed" and done["exit_code"] == 75
    log = farm.log(task["id"])
    assert "upload attempt 3/3 failed" in log and "upload attempt 1/3 failed" in log
    assert not (storage / str(space_id)).exists() or not list((storage / str(space_id)).rglob("r.txt"))


def test_node_agent_cli_registers_and_heartbeats(api: Api, live_server: LiveServer, tmp_path: Path) -> None:
    config = write_node_config(tmp_path / "node.ini", name="cli1", api_url=live_server.url,
                               node_key=derive_node_key(NODES_SECRET, "cli1"),
                               region="eu", queues="default,large", concurrency=3, workdir=str(tmp_path / "work"),
                               labels={"gpu": "no"})

    def node(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "control.cli", "node", *argv, "--node-config", str(config)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=clean_env())

    registered = node("register")
    assert registered.returncode == 0, registered.stderr
    shown = api.get("/nodes/cli1", token=api.root).json()
    assert shown["region"] == "eu" and shown["queues"] == ["default", "large"] and shown["concurrency"] == 3
    assert shown["labels"] == {"gpu": "no"} and shown["workdir"] == str(tmp_path / "work")
    beat = node("heartbeat")
    assert beat.returncode == 0, beat.stderr
    assert json.loads(beat.stdout)["node"]["state"] == "online"
    assert NODES_SECRET not in registered.stdout + registered.stderr + beat.stdout + beat.stderr
    os.chmod(config, 0o640)
    refused = node("heartbeat")
    assert refused.returncode != 0 and "chmod 600" in refused.stderr


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_dispatchers_fire_each_due_time_once_with_one_killed_halfway(farm: Farm) -> None:
    """Two ``zonefarm dispatcher`` processes on PostgreSQL fire one schedule every second; d1 is
    killed (-9) once it has fired some. Each due time fires once (no duplicate), in phase, and
    d2 carries on alone. No node: the tasks stay queued, which skip_if_running=false allows."""
    api = farm.api
    tpl = api.post("/templates", token=api.root, json={"name": "tick", "spec": {"name": "shell",
                                                                               "params": {"argv": ["true"]}}})
    assert tpl.status_code == 201, tpl.text
    sch = api.post("/schedules", token=api.root, json={"template": tpl.json()["id"], "interval": 1,
                                                      "skip_if_running": False})
    assert sch.status_code == 201, sch.text
    schedule_id = sch.json()["id"]

    def firings() -> list[float]:
        """The due time of each task the schedule made, from its first event."""
        tasks = api.get("/tasks", token=api.root, params={"schedule": schedule_id, "limit": 500}).json()["items"]
        return sorted(farm.events(t["id"])[0]["data"]["due"] for t in tasks)

    def wait_for(ok: Any, what: str, timeout: float = 60) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = firings()
            if ok(now):
                return now
            time.sleep(0.3)
        raise AssertionError(f"{what}: {firings()}\n{farm.dispatcher_logs()[-3000:]}")

    d1 = farm.start_dispatcher("d1")
    farm.start_dispatcher("d2")
    by_d1 = wait_for(lambda f: len(f) >= 3 and _fired_by(farm, api, schedule_id, "d1"), "d1 never fired")
    d1.kill()  # kill -9, whatever it is doing
    d1.wait(10)
    farm.dispatchers.remove(d1)
    after = wait_for(lambda f: len(f) >= len(by_d1) + 4, "d2 did not carry on alone")
    dues = after
    assert len(dues) == len(set(dues)), f"a due time fired twice: {dues}"
    steps = [b - a for a, b in zip(dues, dues[1:], strict=False)]
    assert all(s >= 1 and abs(s - round(s)) < 1e-6 for s in steps), f"not in phase: {dues}"
    assert _fired_by(farm, api, schedule_id, "d2")


def _fired_by(farm: Farm, api: Api, schedule_id: int, ident: str) -> bool:
    """Whether dispatcher ``ident`` launched a task of the schedule (the actor of its first event)."""
    from control.core.db import connection
    from control.farm.models import Task, TaskEvent
    with connection():
        return (TaskEvent.select().join(Task)
                .where(Task.schedule_id == schedule_id, TaskEvent.to_state == "queued",
                       TaskEvent.actor == f"dispatcher:{ident}").exists())


def test_dispatcher_killed_mid_round_loses_and_doubles_nothing(farm: Farm) -> None:
    works = [farm.add_node("wk1", concurrency=10), farm.add_node("wk2", concurrency=10)]
    first = farm.start_dispatcher("d1")
    ids = [farm.submit("shell", {"argv": ["sh", "-c", "echo ran >> ran.log; sleep 1"]})["id"] for _ in range(8)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(farm.task(i)["state"] != "queued" for i in ids):
        time.sleep(0.05)
    first.kill()  # kill -9 in the middle of its round
    first.wait(10)
    farm.dispatchers.remove(first)
    farm.start_dispatcher("d2")
    for task_id in ids:
        done = farm.wait(task_id, timeout=90)
        assert done["state"] == "succeeded", farm.events(task_id)
        finals = [e for e in farm.events(task_id) if e["to_state"] == "succeeded"]
        assert len(finals) == 1  # one completion, whichever attempt produced it
    # every task ran exactly once: an attempt launched by d1 finished under its runner; one d1 never
    # launched was requeued when its claim lease ran out and d2 ran it
    ran: dict[int, int] = {}
    for work in works:  # each attempt's directory comes back to the runner as tasks/<id>/<attempt>/work
        for log in work.glob("tasks/*/*/work/ran.log"):
            task_id = int(log.parent.parent.parent.name)
            ran[task_id] = ran.get(task_id, 0) + len(log.read_text().splitlines())
    assert ran == {task_id: 1 for task_id in ids}


def test_rotation_keeps_newest_finished_jobs_and_running_ones(tmp_path: Path) -> None:
    from control.farm.dispatcher.loop import Dispatcher

    dispatcher = Dispatcher(Settings(data_dir=str(tmp_path), artifacts_keep=2), ident="d1")
    jobs = []
    for i in range(5):
        job = dispatcher.jobs_dir / f"20261127T0000{i:02d}-other-{i:06d}"
        (job / "artifacts" / "job").mkdir(parents=True)
        if i != 1:  # job 1 is still running under another dispatcher sharing the data dir
            (job / "artifacts" / "job" / "status").write_text("successful")
        jobs.append(job)
    dispatcher.rotate()
    assert sorted(p.name for p in dispatcher.jobs_dir.iterdir()) == sorted(j.name for j in (jobs[1], jobs[3], jobs[4]))


def test_callback_module_reports_to_the_real_api(farm: Farm) -> None:
    """``zonefarm_callback`` run by ansible itself, signed by module_utils, checked by the API."""
    from control.core.db import connection
    from control.farm.claims import claim

    farm.add_node("wk1")
    task = farm.submit("shell", {"argv": ["true"]})
    with connection():
        (claimed,) = claim("test", 1)
    assert claimed.id == task["id"]
    config = farm.tmp / "nodes" / "wk1" / "node.ini"
    env = clean_env()
    env.update(ANSIBLE_LIBRARY=str(ROOT / "library"), ANSIBLE_MODULE_UTILS=str(ROOT / "module_utils"),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")

    def report(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            ["ansible", "localhost", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
             "-m", "zonefarm_callback", "-a",
             f"config_path={config} task_id={task['id']} attempt={claimed.attempt} " + " ".join(args)],
            capture_output=True, text=True, env=env, cwd=farm.tmp, timeout=120)
        assert NODES_SECRET not in proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout.split("=>", 1)[1])

    assert report("event=started")["response"]["state"] == "running"
    assert report("event=log", "data=hello")["status"] == 200
    assert report("event=finished", "exit_code=0")["response"]["state"] == "succeeded"
    again = report("event=finished", "exit_code=1")  # the same terminal report twice changes nothing
    assert again["response"]["state"] == "succeeded"
    done = farm.task(task["id"])
    assert done["state"] == "succeeded" and done["exit_code"] == 0 and farm.log(task["id"]) == "hello"
