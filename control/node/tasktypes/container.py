"""The ``container`` task type: run an image through the Docker SDK and stream its output.

The container is named after the task attempt, so a rerun of the same attempt replaces
a leftover one, and SIGTERM (cancel, timeout) stops and removes it: killing only this
process would leave the container running.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound, NotFound

from control.node.tasktypes import load_spec, say, write_outputs

STOP_TIMEOUT = 2


def _ensure_image(client: docker.DockerClient, image: str, pull: str) -> None:
    try:
        client.images.get(image)
        return
    except ImageNotFound:
        if pull == "never":
            raise LookupError(f"image {image!r} is not on this node and pull is 'never'") from None
    repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    say(f"pulling {repo}:{tag}")
    client.images.pull(repo, tag=tag)


def _remove(client: docker.DockerClient, name: str) -> None:
    try:
        client.containers.get(name).remove(force=True)
    except NotFound:
        pass


def run(spec: dict[str, Any]) -> int:
    params = spec["params"]
    name = f"zonefarm-task-{spec['id']}-{spec['attempt']}"
    client = docker.from_env()
    try:
        _ensure_image(client, params["image"], params.get("pull", "missing"))
    except (LookupError, DockerException) as exc:
        say(f"cannot get the image: {exc}")
        return 125
    _remove(client, name)
    volumes = {host: {"bind": target, "mode": "rw"} for host, target in (params.get("volumes") or {}).items()}
    container = client.containers.create(
        params["image"], command=params.get("command"), environment=params.get("env") or {},
        volumes=volumes, name=name, detach=True,
        labels={"zonefarm.task": str(spec["id"]), "zonefarm.attempt": str(spec["attempt"])})

    def stop(signum: int, frame: FrameType | None) -> None:
        say(f"stopping container {name} (signal {signum})")
        other = docker.from_env()
        try:
            other.containers.get(name).stop(timeout=STOP_TIMEOUT)
        except DockerException:
            pass
        _remove(other, name)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        container.start()
        for chunk in container.logs(stream=True, follow=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        code = int(container.wait().get("StatusCode", 1))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    container.remove(force=True)
    return code


def main() -> int:
    tdir, spec = load_spec()
    code = run(spec)
    write_outputs(tdir, {"image": spec["params"]["image"], "exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
