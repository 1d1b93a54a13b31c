"""Attack: a task that is root, or the node agent, or may open the Docker socket.

Before the sandbox a task ran as the runner's account: ``uid=0`` in the local deployment
(and in this suite), ``zonefarm`` with the docker group under the roles. Now ``id`` shows an
identity of the task's own: neither root nor the agent's uid, no group that opens
``/var/run/docker.sock``, no capability, and an environment with no secret or path to one.
"""

from __future__ import annotations

import grp
import os

import pytest

from tests.support.secfarm import SecFarm, agent_uid

pytestmark = pytest.mark.slow
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the farm: worker side


@SQLITE
def test_id_is_neither_root_nor_the_agent_and_has_no_docker_group(farm: SecFarm) -> None:
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    probe = farm.submit("shell", {"argv": ["sh", "-c", "id -u; id -g; id -G; grep -E '^(Cap(Prm|Eff|Bnd)|NoNewPrivs):' "
                                                       "/proc/self/status; env"]})
    done = farm.wait(probe["id"])
    assert done["state"] == "succeeded", farm.log(probe["id"])
    lines = farm.log(probe["id"]).splitlines()
    uid, gid, groups = int(lines[0]), int(lines[1]), {int(g) for g in lines[2].split()}
    assert uid != 0 and uid != agent_uid(), f"the task ran as {uid}"
    assert gid != 0 and 0 not in groups
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        docker_gid = None
    if docker_gid is not None:
        assert docker_gid not in groups
    if os.path.exists("/var/run/docker.sock"):
        st = os.stat("/var/run/docker.sock")
        assert st.st_gid not in groups and st.st_uid != uid  # nothing of ours opens the socket
    status = {line.split(":")[0]: line.split(":")[1].strip() for line in lines[3:7]}
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"  # set-id programs (sudo, su) cannot lift it
    env = dict(line.split("=", 1) for line in lines[7:] if "=" in line)
    assert not {k for k in env if k in ("ZONEFARM_SSH_KEY", "ZONEFARM_KNOWN_HOSTS", "ZONEFARM_NODES_SECRET")}
    config_dir = str(farm.config_dir("wk1"))
    assert not [v for v in env.values() if config_dir in v], "a path into the node's config reached the task"


@SQLITE
def test_two_tasks_at_once_get_two_identities(farm: SecFarm) -> None:
    """A pool account is held by one task at a time: two running tasks never share a uid."""
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    tasks = [farm.submit("shell", {"argv": ["sh", "-c", "id -u; sleep 2"]}) for _ in range(3)]
    uids = set()
    for task in tasks:
        assert farm.wait(task["id"])["state"] == "succeeded"
        uids.add(int(farm.log(task["id"]).split()[0]))
    assert len(uids) == 3 and 0 not in uids
