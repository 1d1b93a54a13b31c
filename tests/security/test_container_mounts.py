"""Attack: a container task asking for the host's ``/`` (root on the worker).

Before the sandbox ``{"volumes": {"/": "/hostroot"}}`` mounted the host's root filesystem
read-write into a container running as root, created by an account in the docker group.
The API refuses ``volumes`` (422, ``test_grants``); the worker refuses it too (defence in
depth): the container program, the only one that talks to Docker, stops before it opens
the socket. What it does create (``container_options``) mounts the task's own directory
only, runs as the task's identity, unprivileged, with every capability dropped,
``no-new-privileges`` and the task's limits. A real container on a deployed worker with
Docker enabled runs in the lab (tests/lab/test_lab_sandbox.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.node.config import write_node_config
from control.node.runner import run_batch
from control.node.tasktypes.container import container_options, refusal
from tests.support.recorder import SECRET, Recorder, recording_server, spec_dir

CONTAINER = ["/usr/bin/python3", "-m", "control.node.tasktypes.container"]


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    with recording_server() as rec:
        yield rec


def test_the_worker_refuses_a_host_mount_before_talking_to_docker(recorder: tuple[Recorder, str],
                                                                   tmp_path: Path) -> None:
    rec, url = recorder
    node = write_node_config(tmp_path / "node.ini", name="wk1", api_url=url, node_key=SECRET, task_nice=0,
                             workdir=str(tmp_path / "work"), container_images="zonefarm-test/*")
    tdir = spec_dir(tmp_path, 31, [], name="container", mode="runner",
                    steps=[{"label": "", "argv": CONTAINER}],
                    params={"image": "zonefarm-test/busybox:1", "volumes": {"/": "/hostroot"}})
    outside = spec_dir(tmp_path, 32, [], name="container", mode="runner",
                       steps=[{"label": "", "argv": CONTAINER}], params={"image": "docker.io/library/alpine"})
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "DOCKER_HOST": "unix:///nonexistent.sock"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run_batch(str(node), [str(tdir), str(outside)])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    done = rec.of(31, "finished")[0]
    assert done["exit_code"] == 126 and "params.volumes" in done["failure"], done
    assert "refused: params.volumes" in rec.log(31) and "nonexistent.sock" not in rec.log(31)
    other = rec.of(32, "finished")[0]
    assert other["exit_code"] == 126 and "not among the images this node allows" in other["failure"]


def test_refusal_names_the_field() -> None:
    assert refusal({"image": "zonefarm-test/x:1", "volumes": {"/": "/h"}}, ("zonefarm-test/*",)).startswith(
        "params.volumes")
    assert "allows (none)" in refusal({"image": "busybox"}, ())
    assert refusal({"image": "zonefarm-test/x:1"}, ("zonefarm-test/*",)) is None


def test_the_container_gets_only_its_directory_and_no_privilege(tmp_path: Path) -> None:
    opts = container_options({"command": ["id"], "env": {"A": "1"}}, str(tmp_path), 60123, 60123,
                             {"memory_mb": 64, "cpus": 0.5, "processes": 32})
    mounts = opts["mounts"]
    assert len(mounts) == 1 and mounts[0]["Source"] == str(tmp_path) and mounts[0]["Target"] == "/task"
    assert mounts[0]["Type"] == "bind" and "volumes" not in opts and "binds" not in opts
    assert opts["user"] == "60123:60123" and opts["privileged"] is False
    assert opts["cap_drop"] == ["ALL"] and "cap_add" not in opts
    assert opts["security_opt"] == ["no-new-privileges:true"]
    assert opts["network_mode"] != "host" and opts["ipc_mode"] == "private" and "pid_mode" not in opts
    assert opts["mem_limit"] == opts["memswap_limit"] == "64m"
    assert opts["nano_cpus"] == 500_000_000 and opts["pids_limit"] == 32
    assert opts["environment"]["ZONEFARM_TASK_DIR"] == "/task"
    with pytest.raises(ValueError, match="never runs as root"):
        container_options({}, str(tmp_path), 0, 0, {"memory_mb": 64, "cpus": 1, "processes": 8})
