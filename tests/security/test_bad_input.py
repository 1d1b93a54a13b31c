"""Attack: input that crashed the worker, or filled the control plane.

Before: a NUL byte in ``argv`` or ``env`` crashed the runner (``Popen`` raised), so the task
sat ``assigned`` until its lease ended; a task printing without end filled the database
with its log. Now the runner and the sandbox refuse the NUL (the task ends ``failed`` at
once, naming the field; the API's 422 is in test_grants.py), and the stored log stops at
``task_log_max`` characters with one truncation line while the task finishes normally.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control.core.config import Settings
from control.farm.callbacks import TRUNCATED
from control.node.config import write_node_config
from control.node.runner import run_batch
from tests.support.recorder import SECRET, Recorder, recording_server, spec_dir
from tests.support.secfarm import SecFarm, sec_settings

LOG_MAX = 5000


@pytest.fixture
def farm_settings(db_url: str, tmp_path: Path) -> Settings:
    return sec_settings(db_url, tmp_path, task_log_max=LOG_MAX)


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    with recording_server() as rec:
        yield rec


def test_a_nul_byte_ends_its_task_and_the_runner_goes_on(recorder: tuple[Recorder, str], tmp_path: Path) -> None:
    rec, url = recorder
    node = write_node_config(tmp_path / "node.ini", name="wk1", api_url=url, node_key=SECRET, task_nice=0,
                             workdir=str(tmp_path / "work"))
    in_argv = spec_dir(tmp_path, 41, ["echo", "a\x00b"])
    in_env = spec_dir(tmp_path, 42, ["true"], env={"K": "v\x00w"})
    fine = spec_dir(tmp_path, 43, ["echo", "fine"])
    assert run_batch(str(node), [str(in_argv), str(in_env), str(fine)]) == 0
    for task_id, field in ((41, "argv[1]"), (42, "env.K")):
        done = rec.wait_for(task_id, "finished", timeout=5)
        assert done["exit_code"] == 126 and "NUL" in done["failure"] and field in done["failure"], done
        assert not (tmp_path / "work" / "tasks" / str(task_id) / "1" / "runner.error").exists()
    assert rec.wait_for(43, "finished")["exit_code"] == 0 and rec.log(43) == "fine\n"


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_the_stored_log_is_capped_and_the_task_still_finishes(farm: SecFarm) -> None:
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    chatty = farm.submit("shell", {"argv": ["sh", "-c", "i=0; while [ $i -lt 600 ]; do "
                                            "echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"]})
    done = farm.wait(chatty["id"], timeout=90)
    assert done["state"] == "succeeded" and done["exit_code"] == 0
    log = farm.log(chatty["id"])
    marker = TRUNCATED.format(limit=LOG_MAX)
    assert log.endswith(marker) and log.count("truncated") == 1
    assert len(log) == LOG_MAX + len(marker)
    assert log.startswith("line-0-") and "line-599-" not in log
