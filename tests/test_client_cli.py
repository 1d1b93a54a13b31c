"""The user's ``zonefarm`` client, run as a subprocess against a live API, dispatcher and node.

Each command runs as ``python -m control ...`` in its own session (no controlling
terminal), with HOME and XDG_CONFIG_HOME in the test's temp dir, so the credentials
file is the test's own. The API is the real app on loopback (SQLite and PostgreSQL);
tasks run through a real ``zonefarm dispatcher`` and ansible-runner on a node mapped to
this machine (``tests.support.farm``).
"""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pytest

from control.client import credentials
from control.client.commands import TASK_STATES, parse_duration, parse_params, parse_size
from control.client.watch import exit_status
from control.core.config import Settings
from control.web.app import build_app
from tests.conftest import NODES_SECRET, ROOT_SECRET, farm_test_settings
from tests.support.apiproc import ApiProcess, api_env, clean_env
from tests.support.client import Api
from tests.support.farm import ROOT, Farm
from tests.support.nodes import SignedNode
from tests.support.pg import free_port
from tests.support.registry import provider
from tests.support.server import LiveServer

LEASE = 4
PASSWORD = "correct horse battery"


@pytest.fixture
def token_ttl() -> int:
    """Lifetime of user access tokens; a test parametrises it to make them expire."""
    return 3600


@pytest.fixture
def settings(db_url: str, tmp_path: Path, token_ttl: int) -> Settings:
    # loopback webhook receivers, as a test site allows them (test_webhooks_from_the_cli)
    return farm_test_settings(db_url, tmp_path, LEASE, token_ttl=token_ttl, webhook_allow="127.0.0.0/8",
                              webhook_poll_interval=0.05)


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Cli:
    """``zonefarm`` as a user runs it, with a private HOME and config dir."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.url = url
        self.home = tmp / "home"
        self.xdg = tmp / "xdg"
        self.home.mkdir(exist_ok=True)
        self.env = clean_env()
        self.env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.xdg), PYTHONUNBUFFERED="1")
        for name in ("ZONEFARM_URL", "ZONEFARM_TOKEN", "ZONEFARM_CA_FILE", "_ZONEFARM_COMPLETE"):
            self.env.pop(name, None)

    @property
    def cred_env(self) -> dict[str, str]:
        return {"XDG_CONFIG_HOME": str(self.xdg), "HOME": str(self.home)}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "control", *args]

    def __call__(self, *args: str, stdin: str = "", timeout: float = 120, **env: str) -> Result:
        proc = subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True, cwd=ROOT,
                              env={**self.env, **env}, timeout=timeout, start_new_session=True)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**self.env, **env},
                                start_new_session=True)

    def login(self, username: str = "alice", password: str = PASSWORD) -> Result:
        return self("login", self.url, "--username", username, stdin=password + "\n")

    def stored(self) -> credentials.Credentials:
        creds = credentials.load(self.cred_env)
        assert creds is not None
        return creds


@pytest.fixture
def cli(live_server: LiveServer, tmp_path: Path) -> Cli:
    return Cli(tmp_path, live_server.url)


@pytest.fixture
def alice(api: Api) -> dict[str, Any]:
    """A user who may submit (a grant for every type and queue: submitting is a grant)."""
    user = api.make_user("alice", PASSWORD)
    api.grant(user=user["id"])
    return user


def _json(result: Result) -> Any:
    assert result.rc == 0, result
    return json.loads(result.out)


# ---------------------------------------------------------------------- no API needed


def test_params_are_json_when_they_parse_and_strings_otherwise() -> None:
    got = parse_params(None, None, ('argv=["echo","hi"]', "n=3", "flag=true", "name=plain text", "empty=",
                                    "nan=NaN", 'quoted="3"', "eq=a=b"))  # type: ignore[arg-type]
    assert got == {"argv": ["echo", "hi"], "n": 3, "flag": True, "name": "plain text", "empty": "",
                   "nan": "NaN", "quoted": "3", "eq": "a=b"}


def test_sizes() -> None:
    assert parse_size(None, None, "1073741824") == 1073741824  # type: ignore[arg-type]
    assert parse_size(None, None, "10G") == 10 * 10**9  # type: ignore[arg-type]
    assert parse_size(None, None, "10GiB") == 10 * 2**30  # type: ignore[arg-type]
    assert parse_size(None, None, "1.5MiB") == int(1.5 * 2**20)  # type: ignore[arg-type]
    assert parse_size(None, None, "512 kb") == 512_000  # type: ignore[arg-type]


def test_durations() -> None:
    assert parse_duration(None, None, "3600") == 3600  # type: ignore[arg-type]
    assert parse_duration(None, None, "90m") == 5400  # type: ignore[arg-type]
    assert parse_duration(None, None, "1d12h") == 36 * 3600  # type: ignore[arg-type]
    assert parse_duration(None, None, "2w") == 14 * 86400  # type: ignore[arg-type]
    for bad in ("", "h", "12x", "1h1d", "-5"):
        with pytest.raises(click.BadParameter):
            parse_duration(None, None, bad)  # type: ignore[arg-type]


def test_exit_status_of_a_finished_task() -> None:
    assert exit_status({"state": "succeeded", "exit_code": 0}) == 0
    assert exit_status({"state": "failed", "exit_code": 4}) == 4
    assert exit_status({"state": "cancelled", "exit_code": -15}) == 143
    assert exit_status({"state": "timed_out", "exit_code": None}) == 1
    assert exit_status({"state": "failed", "exit_code": 300}) == 1


def test_client_knows_every_task_state() -> None:
    from control.farm.models import TASK_STATES as SERVER_STATES

    assert set(TASK_STATES) == set(SERVER_STATES)


def test_client_imports_nothing_of_the_server() -> None:
    code = ("import sys, control.client.commands, control.client.api; "
            "bad = sorted(m for m in sys.modules if m.startswith(('control.web', 'control.registry', "
            "'control.farm', 'control.core.db', 'control.migrations'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    cli = Cli(tmp_path, "http://127.0.0.1:9")
    both = cli("task", "submit", "shell", "--node", "wk1", "--all")
    assert both.rc == 2 and "at most one of --node, --region and --all" in both.err
    bad_param = cli("task", "submit", "shell", "--param", "novalue")
    assert bad_param.rc == 2 and "expected KEY=VALUE" in bad_param.err
    assert cli("no-such-command").rc == 2
    not_logged_in = cli("task", "ls")
    assert not_logged_in.rc == 2 and "not logged in" in not_logged_in.err
    assert cli("login", "ftp://example.org").rc == 2


def test_bash_completion(tmp_path: Path) -> None:
    cli = Cli(tmp_path, "http://127.0.0.1:9")
    script = cli(_ZONEFARM_COMPLETE="bash_source")
    assert script.rc == 0
    assert "_zonefarm_completion()" in script.out and "complete -o nosort -F _zonefarm_completion zonefarm" \
        in script.out
    words = cli(_ZONEFARM_COMPLETE="bash_complete", COMP_WORDS="zonefarm ta", COMP_CWORD="1")
    assert words.rc == 0 and "plain,task" in words.out.split()
    sub = cli(_ZONEFARM_COMPLETE="bash_complete", COMP_WORDS="zonefarm node ", COMP_CWORD="2")
    names = {line.split(",", 1)[1] for line in sub.out.split()}
    assert {"ls", "cordon", "drain", "agent", "register"} <= names  # the client's and the worker's


def test_help_lists_client_and_server_commands(tmp_path: Path) -> None:
    out = Cli(tmp_path, "http://127.0.0.1:9")("--help")
    assert out.rc == 0
    for name in ("login", "task", "space", "changes", "node", "api", "dispatcher", "db"):
        assert f"  {name} " in out.out
    server = Cli(tmp_path, "http://127.0.0.1:9")("config", "doc")  # still the argparse command
    assert server.rc == 0 and "| `token_ttl` |" in server.out


def test_unreachable_api_is_an_api_error(tmp_path: Path) -> None:
    cli = Cli(tmp_path, "http://127.0.0.1:9")
    out = cli("task", "ls", ZONEFARM_URL="http://127.0.0.1:9", ZONEFARM_TOKEN="whatever")
    assert out.rc == 3 and "cannot reach http://127.0.0.1:9/api/v1" in out.err
    assert "whatever" not in out.err


# ---------------------------------------------------------------------- against the API


def test_login_stores_private_credentials_and_logout_revokes(cli: Cli, alice: dict[str, Any], api: Api) -> None:
    out = cli.login()
    assert out.rc == 0, out
    assert PASSWORD not in out.out + out.err
    path = cli.xdg / "zonefarm" / "credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    creds = cli.stored()
    assert creds.url == cli.url + "/api/v1" and creds.username == "alice"
    assert creds.expires_at is not None and creds.expires_at > time.time() + 3000
    assert api.get("/tasks", token=creds.token).status_code == 200
    who = _json(cli("whoami", "--json"))
    assert who["username"] == "alice" and who["source"] == "credentials file"

    path.chmod(0o644)  # others could have read it: refuse rather than use it
    loose = cli("task", "ls")
    assert loose.rc == 2 and "chmod 600" in loose.err
    path.chmod(0o600)

    # a stored token is never sent to another API
    other = cli("task", "ls", ZONEFARM_URL="http://127.0.0.1:9/api/v1")
    assert other.rc == 2 and "stored login is for" in other.err

    out = cli("logout")
    assert out.rc == 0, out
    assert not path.exists()
    assert api.get("/tasks", token=creds.token).status_code == 401  # revoked, not just forgotten


def _read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the command exited and closed its side
                break
            if not data:
                break
            seen += data
    return seen


def test_login_on_a_terminal_prompts_without_echo(cli: Cli, alice: dict[str, Any]) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(cli.argv("login", cli.url), stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env=cli.env, start_new_session=True)
    os.close(slave)
    try:
        assert b"Username:" in _read_until(master, b"Username:")
        os.write(master, b"alice\n")
        assert b"Password:" in _read_until(master, b"Password:")
        os.write(master, PASSWORD.encode() + b"\n")
        rest = _read_until(master, b"Logged in")
        assert proc.wait(60) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    assert b"Logged in to" in rest and PASSWORD.encode() not in rest  # typed, but never echoed
    assert cli.stored().username == "alice"


def test_bad_credentials_exit_3_with_the_apis_message(cli: Cli, alice: dict[str, Any]) -> None:
    out = cli.login(password="not the password")
    assert out.rc == 3
    assert "invalid username or password" in out.err
    assert not (cli.xdg / "zonefarm" / "credentials").exists()
    out = cli("task", "ls", ZONEFARM_URL=cli.url, ZONEFARM_TOKEN="zfu_not-a-real-token")
    assert out.rc == 3 and "invalid or revoked token (HTTP 401)" in out.err
    assert "zfu_not-a-real-token" not in out.err
    assert cli.login().rc == 0
    missing = cli("task", "show", "999")
    assert missing.rc == 3 and "task 999 not found" in missing.err.replace("'", "")


def test_submit_wait_follows_to_the_end_and_exits_with_the_outcome(cli: Cli, farm: Farm,
                                                                   alice: dict[str, Any]) -> None:
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    assert cli.login().rc == 0

    ok = cli("task", "submit", "shell", "--param", 'argv=["sh","-c","echo hi; sleep 1"]', "--wait")
    assert ok.rc == 0, ok
    task_id = int(ok.out.split()[1])
    assert f"task {task_id} succeeded on wk1" in ok.out
    # piped: plain progress lines, one per change, never the terminal's redraws
    assert "\r" not in ok.err and "\x1b" not in ok.err
    progress = [line for line in ok.err.splitlines() if line.startswith(f"task {task_id} ")]
    assert progress[-1].startswith(f"task {task_id} succeeded 100% ")
    assert len(progress) == len(set(progress)) and len(progress) <= 6

    bad = cli("task", "submit", "shell", "-p", 'argv=["sh","-c","echo broken >&2; exit 4"]', "--max-attempts", "1",
              "--wait", "--json")
    assert bad.rc == 1, bad
    final = json.loads(bad.out)
    assert final["state"] == "failed" and final["exit_code"] == 4

    shown = _json(cli("task", "show", str(task_id), "--json"))
    assert shown["state"] == "succeeded" and shown["params"] == {"argv": ["sh", "-c", "echo hi; sleep 1"]}
    sized = _json(cli("task", "submit", "shell", "-p", 'argv=["true"]', "--cpu", "0.5", "--memory", "1MiB",
                      "--resource", "gpu=0", "--label", "rack=r9", "--json"))  # no node has the label: it waits
    assert sized["resources"] == {"cpu": 0.5, "memory": 1 << 20} and sized["target"]["labels"] == {"rack": "r9"}
    assert "any [rack=r9]" in cli("task", "show", str(sized["id"])).out
    listed = _json(cli("task", "ls", "--json", "--state", "failed"))
    assert [t["id"] for t in listed["items"]] == [final["id"]]
    why = _json(cli("task", "why", str(final["id"]), "--json"))
    assert why["state"] == "failed" and "exit code 4" in why["reason"]
    assert [e["to_state"] for e in why["events"]][-1] == "failed"
    text = cli("task", "ls")
    assert text.rc == 0 and f"{task_id}" in text.out and "succeeded" in text.out
    logs = cli("task", "logs", str(final["id"]))
    assert logs.rc == 0 and logs.out == "broken\n"


def test_submit_targets_and_cancel(cli: Cli, alice: dict[str, Any], api: Api) -> None:
    """``--region`` and ``--all`` become the API's broadcast targets; ``task cancel`` stops a queued
    task at once and says so, and a second cancel is the API's refusal (exit 3). No dispatcher:
    the tasks stay queued, which is what cancelling needs."""
    for name, region in (("wk1", "eu"), ("wk2", "us")):
        assert SignedNode(api, name, NODES_SECRET).register(region=region).status_code in (200, 201)
    assert cli.login().rc == 0
    refused = cli("task", "submit", "shell", "-p", 'argv=["true"]', "--region", "eu")
    assert refused.rc == 3 and "no grant to broadcast" in refused.err  # a broadcast is a grant of its own
    for held in api.get("/grants", token=api.root).json()["items"]:  # alice's single-node grant
        assert api.delete(f"/grants/{held['id']}", token=api.root).status_code == 204
    api.grant(user=alice["id"], targets="all")
    regional = _json(cli("task", "submit", "shell", "-p", 'argv=["true"]', "--region", "eu", "--json"))
    assert (regional["target"]["kind"], regional["target"]["value"]) == ("region", "eu")
    everywhere = _json(cli("task", "submit", "shell", "-p", 'argv=["true"]', "--all", "--json"))
    assert everywhere["target"]["kind"] == "all"
    for task in (regional, everywhere):
        assert api.get(f"/tasks/{task['id']}", token=api.root).json()["target"] == task["target"]
    both = cli("task", "submit", "shell", "-p", 'argv=["true"]', "--region", "eu", "--all")
    assert both.rc == 2 and "at most one of" in both.err

    done = cli("task", "cancel", str(regional["id"]))
    assert done.rc == 0 and done.out.strip() == f"task {regional['id']} cancelled", done
    assert api.get(f"/tasks/{regional['id']}", token=api.root).json()["state"] == "cancelled"
    again = cli("task", "cancel", str(regional["id"]))
    assert again.rc == 3 and again.err.strip(), again
    cancelled = _json(cli("task", "cancel", str(everywhere["id"]), "--json"))
    assert cancelled["id"] == everywhere["id"] and cancelled["state"] == "cancelled"
    assert cli("task", "cancel", "999").rc == 3
    assert api.get("/tasks", token=api.root, params={"state": "queued"}).json()["total"] == 0


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the last holder of the terminal's other side closed it
            return
        if not data:
            return
        into.append(data)


def test_wait_on_a_terminal_redraws_one_progress_line(cli: Cli, farm: Farm, alice: dict[str, Any]) -> None:
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    assert cli.login().rc == 0
    master, slave = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    try:
        proc = subprocess.run(cli.argv("task", "submit", "shell", "-p", 'argv=["sleep","2"]', "--wait"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, text=True,
                              cwd=ROOT, env=cli.env, timeout=120, start_new_session=True)
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    screen = b"".join(chunks).decode()
    assert proc.returncode == 0, (proc.stdout, screen)
    assert "\r\x1b[K" in screen
    assert "running" in screen and "] 100.0%" in screen and "[####################]" in screen
    assert screen.count("\n") <= 2  # one line redrawn in place, not a line per poll


def test_logs_follow_streams_a_running_task_and_exits_with_its_code(cli: Cli, farm: Farm,
                                                                     alice: dict[str, Any]) -> None:
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    assert cli.login().rc == 0
    sub = _json(cli("task", "submit", "shell", "-p", 'argv=["sh","-c","echo begun; sleep 4; echo done; exit 3"]',
                    "--max-attempts", "1", "--json"))
    task_id = sub["id"]
    farm.wait(task_id, ("running",))
    proc = cli.popen("task", "logs", str(task_id), "-f")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "begun\n"
        assert farm.task(task_id)["state"] == "running"  # printed while the task still ran
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert rest == "done\n"
    assert proc.returncode == 3, err
    assert farm.task(task_id)["state"] == "failed"
    lines = _json_lines(cli("task", "logs", str(task_id), "--json"))
    assert "".join(c["text"] for c in lines) == "begun\ndone\n" and lines[-1]["complete"] is True


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the API's database is not what this is about
def test_logs_follow_rides_out_an_api_restart(db_url: str, tmp_path: Path) -> None:
    """``zonefarm api`` (gunicorn) is killed -9 and started again on its port while ``logs -f`` follows."""
    build_app(Settings(), init_db=False)  # registers the routes, so the test client's OpenAPI checker knows them
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = api_env(tmp_path, ZONEFARM_DATABASE=db_url, ZONEFARM_ROOT_SECRET=ROOT_SECRET,
                  ZONEFARM_NODES_SECRET=NODES_SECRET, ZONEFARM_LISTEN=f"127.0.0.1:{port}",
                  ZONEFARM_TASK_LEASE="30", ZONEFARM_NODE_LEASE="120")
    apis = [ApiProcess(["api"], env, tmp_path / "api-0.log", port)]
    farm = Farm(Api(url, ROOT_SECRET), url, Settings(database=db_url, data_dir=str(tmp_path / "data")), tmp_path,
                lease=30, nodes_secret=NODES_SECRET)
    proc = None
    try:
        apis[0].wait_ready()
        farm.add_node("wk1")
        farm.start_dispatcher("d1")
        cli = Cli(tmp_path, url)
        root = {"ZONEFARM_URL": url, "ZONEFARM_TOKEN": ROOT_SECRET}
        task = _json(cli("task", "submit", "shell", "-p", 'argv=["sh","-c","echo before; sleep 10; echo after"]',
                         "--json", **root))
        farm.wait(task["id"], ("running",))
        proc = cli.popen("task", "logs", str(task["id"]), "-f", **root)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "before\n"
        apis[0].kill()
        time.sleep(2)
        apis.append(ApiProcess(["api"], env, tmp_path / "api-1.log", port))
        apis[1].wait_ready()
        rest, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert rest == "after\n"
        assert "retrying for 60 s" in err and "cannot reach" in err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        farm.stop()
        for api_proc in apis:
            api_proc.stop()


def _json_lines(result: Result) -> list[Any]:
    assert result.rc == 0, result
    return [json.loads(line) for line in result.out.splitlines()]


@pytest.mark.parametrize("token_ttl", [2])
def test_expired_token_is_refreshed_or_a_new_login_is_asked_for(cli: Cli, alice: dict[str, Any], api: Api) -> None:
    """The API gives a refresh token at login, and the CLI renews an expired token with it silently.

    The CLI learns of the expiry both ways: from the expiry it recorded, and from the API's
    401 when the record is wrong (here: pushed into the future by hand).
    """
    assert cli.login().rc == 0
    first = cli.stored()
    assert first.refresh_token, "the password grant gives the CLI a refresh token"
    time.sleep(3)
    assert api.get("/tasks", token=first.token).status_code == 401  # really expired
    out = cli("task", "ls", "--json")
    assert out.rc == 0, out
    json.loads(out.out)
    second = cli.stored()
    assert second.token != first.token and second.refresh_token != first.refresh_token
    assert api.get("/tasks", token=second.token).status_code == 200

    # The recorded expiry is wrong (clock skew): the API's 401 triggers the refresh instead.
    time.sleep(3)
    credentials.save(replace(second, expires_at=time.time() + 3600), cli.cred_env)
    out = cli("task", "ls", "--json")
    assert out.rc == 0, out
    third = cli.stored()
    assert third.token not in (first.token, second.token)
    # The spent refresh token is gone for good (the API makes them single use).
    reuse = api.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": first.refresh_token})
    assert reuse.status_code in (400, 401)

    # A refresh token the API refuses (here: one already spent): only a new login helps.
    assert api.delete("/auth/token", token=third.token).status_code == 204
    credentials.save(replace(third, refresh_token=first.refresh_token), cli.cred_env)
    out = cli("task", "ls", "--json")
    assert out.rc == 3, out
    assert "refresh token was refused" in out.err and f"zonefarm login {cli.url}" in out.err
    assert cli.stored().refresh_token is None  # forgotten: it will never work again


def test_nodes_spaces_and_changes(cli: Cli, farm: Farm, alice: dict[str, Any], api: Api) -> None:
    farm.add_node("wk1", region="eu")
    root = {"ZONEFARM_URL": cli.url, "ZONEFARM_TOKEN": ROOT_SECRET}
    nodes = _json(cli("node", "ls", "--json", **root))
    assert [n["name"] for n in nodes["items"]] == ["wk1"]
    assert "wk1" in cli("node", "ls", **root).out
    assert cli("node", "cordon", "wk1", **root).rc == 0
    assert _json(cli("node", "show", "wk1", "--json", **root))["cordoned"] is True
    assert _json(cli("node", "ls", "--json", "--uncordoned", **root))["items"] == []
    drained = _json(cli("node", "drain", "wk1", "--wait", "--json", **root))
    assert drained["draining"] is True and drained["drained"] is True
    assert cli("node", "uncordon", "wk1", **root).rc == 0
    assert _json(cli("node", "show", "wk1", "--json", **root))["cordoned"] is False
    missing = cli("node", "cordon", "nope", **root)
    assert missing.rc == 3 and "node nope not found" in missing.err.replace("'", "")

    assert cli.login().rc == 0
    refused = cli("node", "cordon", "wk1")  # a user is not the administrator
    assert refused.rc == 3 and "only the administrator" in refused.err

    created = _json(cli("space", "create", "climate", "--json"))
    assert created["name"] == "climate"
    spaces = _json(cli("space", "ls", "--json"))
    assert [(s["name"], s["role"]) for s in spaces["items"]] == [("climate", "owner")]
    provider(api, "prov1")
    ticket = cli("space", "support-token", "climate", "--size", "2GiB")
    assert ticket.rc == 0, ticket
    # the administrator may redeem a support token on the provider's behalf
    sup = _json(cli("space", "support", "climate", "--token-stdin", "--provider", "prov1", "--json",
                    stdin=ticket.out, **root))
    assert sup["size"] == 2 * 2**30 and sup["provider_name"] == "prov1"
    listed = _json(cli("space", "support", "climate", "--json"))
    assert [s["provider_name"] for s in listed["items"]] == ["prov1"]
    assert cli("space", "support", "climate", "prov1").rc == 2  # neither --size nor --revoke
    assert cli("space", "support", "climate", "prov1", "--revoke").rc == 0
    assert _json(cli("space", "support", "climate", "--json"))["items"] == []

    feed = _json(cli("changes", "--json"))
    entities = [(c["entity"], c["op"]) for c in feed["changes"]]
    assert ("space", "create") in entities and ("support", "delete") in entities
    assert feed["last_seq"] >= feed["changes"][-1]["seq"]

    # -f long-polls: a change made while it waits is printed as it happens
    proc = cli.popen("changes", "-f", "--json", "--since", str(feed["last_seq"]))
    try:
        time.sleep(1)
        assert cli("space", "create", "oceans").rc == 0
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["entity"] == "space" and line["op"] == "create" and line["data"]["name"] == "oceans"
    finally:
        proc.terminate()
        proc.wait(10)


def _user_cli(cli: Cli, tmp_path: Path, name: str, api: Api) -> Cli:
    """Another user at another machine: an account and a login of its own."""
    api.make_user(name, PASSWORD)
    (tmp_path / name).mkdir()
    other = Cli(tmp_path / name, cli.url)
    assert other.login(name).rc == 0
    return other


def test_invite_and_join(cli: Cli, alice: dict[str, Any], api: Api, tmp_path: Path) -> None:
    assert cli.login().rc == 0
    assert cli("space", "create", "climate").rc == 0
    bob = _user_cli(cli, tmp_path, "bob", api)
    carol = _user_cli(cli, tmp_path, "carol", api)
    assert _json(bob("space", "ls", "--json"))["items"] == []

    issued = cli("space", "invite", "climate", "--role", "member", "--uses", "1", "--ttl", "2h")
    assert issued.rc == 0, issued
    token = issued.out.strip()
    assert token and issued.out == token + "\n"  # only the token on stdout: it can be piped
    assert "shown only now" in issued.err and "zonefarm space join" in issued.err

    joined = bob("space", "join", stdin=token + "\n")
    assert joined.rc == 0, joined
    assert "you joined space" in joined.out and "climate as member" in joined.out
    assert [(s["name"], s["role"]) for s in _json(bob("space", "ls", "--json"))["items"]] == [("climate", "member")]
    assert "climate" in bob("space", "ls").out

    used = carol("space", "join", "--token-stdin", stdin=token)
    assert used.rc == 3, used
    assert "this space invite has been used 1 of 1 times (HTTP 410)" in used.err
    assert token not in used.out + used.err
    assert _json(carol("space", "ls", "--json"))["items"] == []

    invites = _json(cli("space", "invites", "climate", "--json"))["items"]
    assert [(i["role"], i["uses"], i["max_uses"], i["state"]) for i in invites] == [("member", 1, 1, "used")]
    shown = cli("space", "invites", "climate")
    assert "used" in shown.out and token not in shown.out
    assert 7100 < _expires_in(invites[0]) <= 7200

    # a revoked invite is refused too; a member is no admin and cannot list them
    spare = _json(cli("space", "invite", "climate", "--uses", "5", "--json"))
    assert cli("space", "invites", "climate", "--revoke", str(spare["invite"]["id"])).rc == 0
    revoked = carol("space", "join", stdin=spare["token"])
    assert revoked.rc == 3 and "was revoked" in revoked.err
    assert bob("space", "invites", "climate").rc == 3
    assert bob("space", "invite", "climate").rc == 3

    # groups: carol joins alice's group as admin, then brings a group of her own into the space
    assert cli("group", "create", "lab").rc == 0
    admin_invite = cli("group", "invite", "lab", "--role", "admin").out.strip()
    assert carol("group", "join", stdin=admin_invite).rc == 0
    assert [(g["name"], g["role"]) for g in _json(carol("group", "ls", "--json"))["items"]] == [("lab", "admin")]
    assert _json(carol("group", "invites", "lab", "--json"))["items"][0]["state"] == "used"
    assert carol("group", "create", "team").rc == 0
    for_group = cli("space", "invite", "climate", "--for", "group", "--role", "admin").out.strip()
    as_user = carol("space", "join", stdin=for_group)  # meant for a group: a user alone is refused
    assert as_user.rc == 3
    as_group = carol("space", "join", "--as-group", "team", stdin=for_group)
    assert as_group.rc == 0, as_group
    assert "joined space" in as_group.out and "as admin" in as_group.out
    space_id = _json(cli("space", "ls", "--json"))["items"][0]["id"]
    groups = api.get(f"/spaces/{space_id}/groups", token=cli.stored().token).json()["items"]
    assert [(g["name"], g["role"]) for g in groups] == [("team", "admin")]
    assert ("climate", "admin") in [(s["name"], s["role"]) for s in _json(carol("space", "ls", "--json"))["items"]]


def _expires_in(item: dict[str, Any]) -> float:
    return datetime.fromisoformat(item["expires_at"]).timestamp() - time.time()


def test_support_takes_a_token_the_provider_redeems(cli: Cli, alice: dict[str, Any], api: Api) -> None:
    prov, prov_token = provider(api, "prov1")
    as_provider = {"ZONEFARM_URL": cli.url, "ZONEFARM_TOKEN": prov_token}
    assert cli.login().rc == 0
    assert cli("space", "create", "climate").rc == 0

    direct = cli("space", "support", "climate", "prov1", "--size", "2GiB")  # the old way: no consent
    assert direct.rc == 3, direct
    assert "only the administrator or the provider itself" in direct.err
    assert "zonefarm space support-token climate --provider prov1" in direct.err
    assert "zonefarm space support climate --token-stdin --provider prov1" in direct.err
    assert _json(cli("space", "support", "climate", "--json"))["items"] == []

    issued = cli("space", "support-token", "climate", "--provider", "prov1", "--size", "1GiB", "--ttl", "1d")
    assert issued.rc == 0, issued
    token = issued.out.strip()
    assert token and issued.out == token + "\n"
    assert "shown only now" in issued.err

    redeemed = cli("space", "support", "climate", "--token-stdin", "--provider", "prov1", "--size", "2GiB",
                   "--json", stdin=token + "\n", **as_provider)
    sup = _json(redeemed)
    assert (sup["space_name"], sup["provider_id"], sup["size"]) == ("climate", prov["id"], 2 * 2**30)
    assert [(s["provider_name"], s["size"]) for s in _json(cli("space", "support", "climate", "--json"))["items"]] \
        == [("prov1", 2 * 2**30)]
    again = cli("space", "support", "climate", "--token-stdin", "--provider", "prov1", stdin=token, **as_provider)
    assert again.rc == 3 and "already redeemed" in again.err and token not in again.err
    tokens = _json(cli("space", "support-tokens", "climate", "--json"))["items"]
    assert [(t["state"], t["used_by"], t["size"]) for t in tokens] == [("used", prov["id"], 2**30)]
    assert 86300 < _expires_in(tokens[0]) <= 86400

    # resizing is the provider's call
    resized = _json(cli("space", "support", "climate", "prov1", "--size", "3GiB", "--json", **as_provider))
    assert resized["size"] == 3 * 2**30

    # a token for another space than the one named: the support is made, and the command says so
    assert cli("space", "create", "oceans").rc == 0
    other = cli("space", "support-token", "oceans", "--size", "1GiB").out.strip()
    mixed = cli("space", "support", "climate", "--token-stdin", "--provider", "prov1", stdin=other, **as_provider)
    assert mixed.rc == 1 and "was for space" in mixed.err and "oceans" in mixed.err
    assert [s["size"] for s in _json(cli("space", "support", "oceans", "--json"))["items"]] == [2**30]

    assert cli("space", "support", "climate", "prov1", "--revoke").rc == 0
    assert _json(cli("space", "support", "climate", "--json"))["items"] == []



@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the client speaks HTTP: one database is enough
def test_templates_and_schedules(cli: Cli, alice: dict[str, Any], api: Api) -> None:
    assert cli.login().rc == 0
    token = api.login("alice", PASSWORD)
    made = api.post("/templates", token=token, json={"name": "nightly", "spec": {
        "name": "shell", "params": {"argv": ["echo", "hi"]}, "priority": 3}})
    assert made.status_code == 201, made.text
    api.patch(f"/templates/{made.json()['id']}", token=token, json={"spec": {"name": "shell",
                                                                            "params": {"argv": ["echo", "v2"]}}})
    assert "nightly" in cli("template", "ls").out
    shown = _json(cli("template", "show", "nightly", "--version", "1", "--json"))
    assert shown["version"] == 1 and shown["spec"]["params"]["argv"] == ["echo", "hi"]
    launched = _json(cli("template", "launch", "nightly", "-p", "env={\"A\": \"1\"}", "--priority", "9", "--json"))
    assert launched["template_version"] == 2 and launched["priority"] == 9
    assert launched["params"] == {"argv": ["echo", "v2"], "env": {"A": "1"}}
    plain = cli("template", "launch", "nightly")
    assert plain.rc == 0 and "launched from template" in plain.out
    assert cli("template", "show", "nope").rc == 3
    sch = api.post("/schedules", token=token, json={"template": made.json()["id"], "cron": "0 3 * * *"})
    assert sch.status_code == 201, sch.text
    listed = cli("schedule", "ls", "--template", "nightly")
    assert listed.rc == 0 and "0 3 * * * (UTC)" in listed.out
    assert [s["id"] for s in _json(cli("schedule", "ls", "--json"))["items"]] == [sch.json()["id"]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the client speaks HTTP: one database is enough
def test_template_create_and_schedule_lifecycle(cli: Cli, alice: dict[str, Any], api: Api) -> None:
    assert cli.login().rc == 0
    made = _json(cli("template", "create", "backup", "shell", "-p", 'argv=["echo","b"]', "--priority", "4",
                     "--cpu", "0.5", "--label", "disk=ssd", "--json"))
    assert made["version"] == 1 and made["spec"]["priority"] == 4
    assert made["spec"]["params"] == {"argv": ["echo", "b"]} and made["spec"]["resources"]["cpu"] == 0.5
    assert made["spec"]["target"]["labels"] == {"disk": "ssd"}
    assert cli("template", "create", "twice", "shell", "--node", "a", "--all").rc == 2
    every = cli("schedule", "create", "backup", "--every", "1h")
    assert every.rc == 0 and "next run" in every.out, every
    sid = int(every.out.split()[1])
    cron = _json(cli("schedule", "create", str(made["id"]), "--cron", "0 3 * * *", "--timezone", "Europe/Paris",
                     "--paused", "--allow-overlap", "--json"))
    assert (cron["enabled"], cron["skip_if_running"], cron["next_run"]) == (False, False, None)
    assert cli("schedule", "create", "backup").rc == 2  # neither --cron nor --every
    bad = cli("schedule", "create", "backup", "--cron", "not a cron")
    assert bad.rc == 3 and "HTTP 422" in bad.err
    paused = cli("schedule", "pause", str(sid))
    assert paused.rc == 0 and paused.out.strip() == f"schedule {sid} paused"
    assert api.get(f"/schedules/{sid}", token=api.login("alice", PASSWORD)).json()["enabled"] is False
    resumed = _json(cli("schedule", "resume", str(sid), "--json"))
    assert resumed["enabled"] is True and resumed["next_run"]
    assert cli("schedule", "rm", str(cron["id"])).rc == 0
    assert [s["id"] for s in _json(cli("schedule", "ls", "--json"))["items"]] == [sid]
    assert cli("schedule", "pause", str(cron["id"])).rc == 3  # gone


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_webhooks_from_the_cli(cli: Cli, alice: dict[str, Any], api: Api, settings: Settings,
                               tmp_path: Path) -> None:
    """The secret is printed once, alone on stdout; the real sender delivers the test event to a real
    receiver that checks it with that secret; another user sees and removes none of alice's."""
    from control.farm.webhooks.delivery import Sender
    from tests.support.receiver import receiving
    assert cli.login().rc == 0
    with receiving() as receiver:
        made = cli("webhook", "create", receiver.url + "/ok", "--event", "task.failed", "--event", "task.failed",
                   "--event", "node.lost", "--description", "ops")
        assert made.rc == 0, made
        secret = made.out.strip()
        assert "\n" not in secret and len(secret) >= 32 and "shown this once" in made.err
        hook_id = int(made.err.split()[1])
        receiver.secrets[hook_id] = secret
        listed = cli("webhook", "ls")
        assert listed.rc == 0 and receiver.url + "/ok" in listed.out and "node.lost,task.failed" in listed.out
        assert secret not in listed.out
        assert cli("webhook", "create", receiver.url, "--event", "task.failed", "--all").rc == 3  # root's only
        queued = cli("webhook", "test", str(hook_id))
        assert queued.rc == 0 and "queued" in queued.out
        sender = Sender(settings, "cli-test-sender").start()
        try:
            got = receiver.wait_for("/ok")
        finally:
            sender.stop()
        assert got[0].verified == "ok" and got[0].json["event"] == "webhook.test"
        log = _json(cli("webhook", "deliveries", str(hook_id), "--json"))["items"]
        assert [(d["event"], d["status"], d["attempts"]) for d in log] == [("webhook.test", "delivered", 1)]
        assert "delivered" in cli("webhook", "deliveries", str(hook_id), "--status", "delivered").out
    bob = _user_cli(cli, tmp_path, "bob", api)
    assert _json(bob("webhook", "ls", "--json"))["items"] == []
    assert bob("webhook", "rm", str(hook_id)).rc == 3
    assert cli("webhook", "rm", str(hook_id)).rc == 0
    assert api.get("/webhooks", token=api.root).json()["total"] == 0
