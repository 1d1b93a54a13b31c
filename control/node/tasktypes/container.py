"""The ``container`` task type: run an allowed image through the Docker SDK and stream its output.

This program is the only part of zonefarm that talks to the Docker socket, and it runs in
the node agent's account (which may), never as the task's identity (which may not). The
sandbox has already taken an identity for the task (a pool account: uid and gid in
``ZONEFARM_TASK_UID``/``ZONEFARM_TASK_GID``) and made its directory (``ZONEFARM_TASK_DIR``,
0700, that identity's). What it trusts: the attempt's ``spec.json`` written by the launch
module, and the node's ``container_images`` list (``ZONEFARM_CONTAINER_IMAGES``). It
refuses what the API refuses too (defence in depth): a ``volumes`` param, an image outside
the list. The container it creates (``container_options``):

* mounts nothing from the host but the task's own directory, at ``/task``;
* runs as the task's identity (never root), unprivileged, with every capability dropped,
  ``no-new-privileges``, its own network, PID and IPC namespaces (Docker's defaults, never
  ``host``);
* has the task's memory (no swap), CPU and process limits.

The container is named after the task attempt, so a rerun of the same attempt replaces
a leftover one, and SIGTERM (cancel, timeout) stops and removes it: killing only this
process would leave the container running.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import sys
from types import FrameType
from typing import Any

from control.node.tasktypes import load_spec, say, write_failure, write_outputs

TASK_MOUNT = "/task"
REFUSED_PARAMS = {"volumes": "host paths may not be mounted into a container task"}
EXIT_REFUSED = 126


def allowed_images() -> tuple[str, ...]:
    raw = os.environ.get("ZONEFARM_CONTAINER_IMAGES", "")
    return tuple(p for p in raw.replace(",", " ").split() if p)


def refusal(params: dict[str, Any], allowed: tuple[str, ...]) -> str | None:
    """Why this node will not run these params, naming the field; None when it will."""
    for key, why in REFUSED_PARAMS.items():
        if key in params:
            return f"params.{key}: {why}"
    image = params.get("image")
    if not isinstance(image, str) or not image:
        return "params.image: required"
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed):
        listed = ", ".join(allowed) if allowed else "none"
        return f"params.image: image {image!r} is not among the images this node allows ({listed})"
    return None


def container_options(params: dict[str, Any], task_dir: str, uid: int, gid: int,
                      limits: dict[str, Any]) -> dict[str, Any]:
    """Everything ``containers.create`` gets besides the image: the container's whole sandbox.

    The only mount is the task's own directory; the rest of the host stays out.
    """
    from docker.types import Mount

    if uid == 0 or gid == 0:
        raise ValueError("a container task never runs as root")
    env = {str(k): str(v) for k, v in (params.get("env") or {}).items()}
    env.update(ZONEFARM_TASK_DIR=TASK_MOUNT, HOME=TASK_MOUNT)
    memory = f"{int(limits['memory_mb'])}m"
    return {
        "command": params.get("command"),
        "environment": env,
        "user": f"{uid}:{gid}",
        "working_dir": TASK_MOUNT,
        "mounts": [Mount(target=TASK_MOUNT, source=task_dir, type="bind", read_only=False)],
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "network_mode": "bridge",
        "ipc_mode": "private",
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(float(limits["cpus"]) * 1e9),
        "pids_limit": int(limits["processes"]),
    }


def _ensure_image(client: Any, image: str, pull: str) -> None:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
        return
    except ImageNotFound:
        if pull == "never":
            raise LookupError(f"image {image!r} is not on this node and pull is 'never'") from None
    repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    say(f"pulling {repo}:{tag}")
    client.images.pull(repo, tag=tag)


def _remove(client: Any, name: str) -> None:
    from docker.errors import NotFound

    try:
        client.containers.get(name).remove(force=True)
    except NotFound:
        pass


def run(spec: dict[str, Any], attempt_dir: Any) -> int:
    params = spec["params"]
    why = refusal(params, allowed_images())
    if why:  # before the Docker socket is even opened
        say(f"refused: {why}")
        write_failure(attempt_dir, why)
        return EXIT_REFUSED
    import docker
    from docker.errors import DockerException
    try:
        options = container_options(params, os.environ["ZONEFARM_TASK_DIR"], int(os.environ["ZONEFARM_TASK_UID"]),
                                    int(os.environ["ZONEFARM_TASK_GID"]),
                                    json.loads(os.environ.get("ZONEFARM_LIMITS") or "{}"))
    except (KeyError, ValueError) as exc:
        say(f"refused: the task has no identity of its own to run the container as ({exc})")
        write_failure(attempt_dir, "the container task got no identity of its own from the sandbox")
        return EXIT_REFUSED
    name = f"zonefarm-task-{spec['id']}-{spec['attempt']}"
    client = docker.from_env()
    try:
        _ensure_image(client, params["image"], params.get("pull", "missing"))
    except (LookupError, DockerException) as exc:
        say(f"cannot get the image: {exc}")
        return 125
    _remove(client, name)
    container = client.containers.create(
        params["image"], name=name, detach=True,
        labels={"zonefarm.task": str(spec["id"]), "zonefarm.attempt": str(spec["attempt"])}, **options)

    def stop(signum: int, frame: FrameType | None) -> None:
        """Remove the container at once (``docker rm -f``: SIGKILL, then gone). The sandbox
        SIGKILLs this process ``KILL_GRACE`` seconds after its SIGTERM; a polite ``docker stop``
        with its own timeout did not fit in that grace on a busy host, and the container
        outlived its cancelled task."""
        say(f"stopping container {name} (signal {signum})")
        try:
            _remove(docker.from_env(), name)
        except DockerException as exc:
            say(f"could not remove container {name}: {exc}")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        container.start()
        for chunk in container.logs(stream=True, follow=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        code = int(container.wait().get("StatusCode", 1))
        container.reload()
        if (container.attrs.get("State") or {}).get("OOMKilled"):
            reason = (f"memory limit exceeded: the container was killed at its limit of "
                      f"{options['mem_limit'][:-1]} MiB")
            say(reason)
            write_failure(attempt_dir, reason)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    container.remove(force=True)
    return code


def remove_attempt(task_id: int, attempt: int) -> int:
    """Remove the containers of one attempt (by label): how many. The runner calls this after a
    killed container task, from outside the sandbox's process group, because the group's SIGKILL
    (the kill's grace) can end this program in the middle of removing its container."""
    import docker

    client = docker.from_env()
    found = client.containers.list(all=True, filters={"label": [f"zonefarm.task={task_id}",
                                                                 f"zonefarm.attempt={attempt}"]})
    for container in found:
        container.remove(force=True)
    return len(found)


def main() -> int:
    if sys.argv[1:2] == ["--remove"]:
        removed = remove_attempt(int(sys.argv[2]), int(sys.argv[3]))
        if removed:
            say(f"removed {removed} container(s) of the stopped task")
        return 0
    attempt_dir, spec = load_spec()
    code = run(spec, attempt_dir)
    write_outputs(attempt_dir, {"image": spec["params"].get("image"), "exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
