#!/usr/bin/python
"""Ansible module: start a node's batch of zonefarm tasks detached, then return at once."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zonefarm_launch
short_description: Start zonefarm task attempts detached on a worker
description:
  - Writes one C(spec.json) (mode 0600) per task attempt under
    C(<workdir>/tasks/<id>/<attempt>/) (0700) and starts one detached C(zonefarm runner) process
    that runs them all and reports through signed callbacks. The runner hands each task to the
    task sandbox (C(control.node.sandbox)), which runs it under an identity of its own.
  - The batch is data: every entry is checked on its own, and an entry that cannot run (no
    argv, a NUL byte, a value of the wrong type) is returned in C(rejected) with the reason,
    while the other entries are launched. One bad task never fails the others of its round.
  - Under systemd (PID 1) and as root the runner is a transient unit started with C(systemd-run);
    otherwise (no systemd, or the unprivileged service account) it is double-forked into
    its own session and its pid written to C(runner.pid) in every task directory.
  - An attempt whose C(spec.json) already exists is skipped, so repeating a job never
    runs an attempt twice.
  - The node key is not an option: the runner reads it from the node's 0600 INI file.
options:
  workdir:
    description: The node's work directory (task directories live under it).
    type: path
    required: true
  config_path:
    description: The node's INI file holding the node key (mode 0600).
    type: path
    required: true
  python:
    description: Interpreter that can import the C(control) package; runs the runner.
    type: str
    required: true
  tasks:
    description:
      - Batch entries (C(id), C(attempt), C(name), C(params), C(timeout), C(upload)).
    type: list
    elements: dict
    required: true
  command:
    description:
      - Program run for each task, with C(ZONEFARM_TASK_DIR) in its environment.
      - Empty means the task's own C(params.argv), C(params.env) and C(params.cwd) (shell),
        or the commands named by I(steps).
    type: list
    elements: str
    default: []
  steps:
    description:
      - Params holding lists of commands (each an argv) run one after the other in the
        sandbox, announced as C(stage <name>) (the pipeline's C(prepare) and C(generate)).
    type: list
    elements: str
    default: []
  mode:
    description:
      - C(task) runs the commands as the task's identity. C(runner) runs I(command), a trusted
        program of the type, in the runner's account once the sandbox has given the task an
        identity and a directory (the container type: only it talks to Docker).
    type: str
    choices: [task, runner]
    default: task
  after:
    description:
      - Trusted program run in the runner's account after the task's commands ended with
        exit code 0 (the pipeline's upload, which needs the upload key the task never sees).
    type: list
    elements: str
    default: []
  lease:
    description: The task lease in seconds; the runner reports progress three times per lease.
    type: int
    default: 60
  launcher:
    description: How to detach the runner; C(auto) picks systemd when it is PID 1.
    type: str
    choices: [auto, systemd, fork]
    default: auto
"""

RETURN = r"""
launched:
  description: Task ids started by this call.
  type: list
  returned: always
rejected:
  description: Entries that cannot run, each C(id) and C(reason); the dispatcher fails those tasks only.
  type: list
  returned: always
skipped:
  description: Task ids whose attempt was already launched.
  type: list
  returned: always
runner_pid:
  description: Pid of the detached runner (fork launcher), or 0.
  type: int
  returned: always
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule

RUNNER_LOG = "runner.log"


def systemd_is_init():
    """systemd-run needs root here: the service account has no user manager and polkit refuses it."""
    return os.path.isdir("/run/systemd/system") and os.geteuid() == 0


def write_spec(tdir, spec):
    """Create the attempt directory and its spec; False if it existed (already launched)."""
    os.makedirs(os.path.dirname(tdir), mode=0o700, exist_ok=True)
    try:
        os.mkdir(tdir, 0o700)
    except FileExistsError:
        if os.path.exists(os.path.join(tdir, "spec.json")):
            return False
    path = os.path.join(tdir, "spec.json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(spec, fh)
    os.rename(tmp, path)
    return True


class BadEntry(ValueError):
    """One batch entry that cannot run; the message names the field."""


def _text(value, where):
    if not isinstance(value, str):
        raise BadEntry(f"{where} must be a string")
    if "\x00" in value:
        raise BadEntry(f"{where} holds a NUL byte")
    return value


def _argv(value, where):
    if not isinstance(value, list) or not value:
        raise BadEntry(f"{where} must be a non-empty list of strings")
    return [_text(a, f"{where}[{i}]") for i, a in enumerate(value)]


def _object(value, where):
    """An object of the entry, or an empty one where it is absent; BadEntry for anything else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEntry(f"{where} must be an object")
    return value


def _env(value):
    out = {}
    for key, item in _object(value, "params.env").items():
        _text(key, "params.env name")
        if not key or "=" in key:
            raise BadEntry(f"params.env name {key!r} is not a variable name")
        out[key] = _text(item, f"params.env.{key}")
    return out


def _limits(value):
    value = _object(value, "limits")
    out = {}
    for key in ("memory_mb", "cpus", "processes"):
        item = value.get(key)
        if item is None:
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not item > 0:
            raise BadEntry(f"limits.{key} must be a number above 0")
        out[key] = item
    return out


def build_spec(entry, command, lease, steps=(), mode="task", after=()):
    """The attempt's spec from one batch entry; BadEntry says why it cannot run."""
    try:
        task_id = int(entry["id"])
        attempt = int(entry.get("attempt") or 1)
    except (KeyError, TypeError, ValueError):
        raise BadEntry("every entry needs an integer id and attempt") from None
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise BadEntry("params must be an object")
    spec = {
        "id": task_id,
        "attempt": attempt,
        "name": entry.get("name", ""),
        "params": params,
        "timeout": entry.get("timeout"),
        "upload": entry.get("upload"),
        "lease": lease,
        "env": _env(params.get("env")),
        "limits": _limits(entry.get("limits")),
        "mode": mode,
        "after": list(after),
        "cwd": None,
    }
    if command:
        spec["steps"] = [{"label": "", "argv": list(command)}]
    elif steps:
        spec["steps"] = []
        for name in steps:
            commands = params.get(name) or []
            if not isinstance(commands, list):
                raise BadEntry(f"params.{name} must be a list of commands")
            for i, argv in enumerate(commands):
                spec["steps"].append({"label": f"stage {name}",
                                      "argv": _argv(argv, f"params.{name}[{i}]")})
        if not spec["steps"]:
            raise BadEntry("params.{} holds no command to run".format(" and params.".join(steps)))
    else:
        spec["steps"] = [{"label": "", "argv": _argv(params.get("argv"), "params.argv")}]
        cwd = params.get("cwd")
        if cwd is not None:  # a relative one is inside the task's own directory (the sandbox joins them)
            spec["cwd"] = _text(cwd, "params.cwd")
    json.dumps(spec)  # anything that cannot travel as JSON is refused here, not in the runner
    return spec


def runner_argv(python, config_path, dirs):
    return [python, "-m", "control.node.runner", "run", "--node-config", config_path] + dirs


def runner_env():
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def fork_runner(argv, env, log_path, pid_paths):
    """Double fork: the runner gets its own session, init adopts it, the module returns."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child
        try:
            os.close(read_fd)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.close(write_fd)
                null = os.open(os.devnull, os.O_RDONLY)
                log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.closerange(3, 65536)
                os.chdir(os.path.dirname(log_path))
                os.execve(argv[0], argv, env)  # noqa: S606 - our argv, no shell
            os.write(write_fd, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        raw = fh.read()
    os.waitpid(pid, 0)
    if not raw:
        raise OSError("the runner could not be forked")
    runner_pid = int(raw)
    for path in pid_paths:
        with open(path, "w") as fh:
            fh.write(str(runner_pid))
    return runner_pid


def main():
    module = AnsibleModule(
        argument_spec=dict(
            workdir=dict(type="path", required=True),
            config_path=dict(type="path", required=True),
            python=dict(type="str", required=True),
            tasks=dict(type="list", elements="dict", required=True),
            command=dict(type="list", elements="str", default=[]),
            steps=dict(type="list", elements="str", default=[]),
            mode=dict(type="str", choices=["task", "runner"], default="task"),
            after=dict(type="list", elements="str", default=[]),
            lease=dict(type="int", default=60),
            launcher=dict(type="str", choices=["auto", "systemd", "fork"], default="auto"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isfile(p["config_path"]):
        module.fail_json(msg="config_path {} does not exist".format(p["config_path"]))
    if p["mode"] == "runner" and not p["command"]:
        module.fail_json(msg="mode runner needs the type's command")
    specs, rejected = [], []
    for entry in p["tasks"]:
        try:
            specs.append(build_spec(entry, p["command"], p["lease"], p["steps"], p["mode"], p["after"]))
        except Exception as exc:  # noqa: BLE001 - one entry's problem stays that entry's
            ident = entry.get("id") if isinstance(entry, dict) else None
            rejected.append({"id": ident, "reason": str(exc)[:500] or type(exc).__name__})
    launched, skipped, dirs = [], [], []
    if module.check_mode:
        module.exit_json(changed=bool(specs), launched=[], skipped=[], rejected=rejected, runner_pid=0)
    os.makedirs(p["workdir"], mode=0o700, exist_ok=True)
    for spec in specs:
        tdir = os.path.join(p["workdir"], "tasks", str(spec["id"]), str(spec["attempt"]))
        if write_spec(tdir, spec):
            launched.append(spec["id"])
            dirs.append(tdir)
        else:
            skipped.append(spec["id"])
    if not dirs:
        module.exit_json(changed=False, launched=[], skipped=skipped, rejected=rejected, runner_pid=0)
    argv = runner_argv(p["python"], p["config_path"], dirs)
    launcher = p["launcher"]
    if launcher == "auto":
        launcher = "systemd" if systemd_is_init() else "fork"
    runner_pid = 0
    try:
        if launcher == "systemd":
            unit = f"zonefarm-run-{os.getpid()}-{int(time.time() * 1000)}"
            rc, out, err = module.run_command(
                ["systemd-run", "--quiet", "--collect", "--unit", unit,
                 "--working-directory", p["workdir"]] + argv, environ_update=runner_env())
            if rc != 0:
                module.fail_json(msg=f"systemd-run failed: {err.strip()}", launched=[], skipped=skipped,
                                 rejected=rejected)
        else:
            runner_pid = fork_runner(argv, runner_env(), os.path.join(p["workdir"], RUNNER_LOG),
                                     [os.path.join(d, "runner.pid") for d in dirs])
    except OSError as exc:
        module.fail_json(msg=f"cannot start the runner: {exc}", launched=[], skipped=skipped, rejected=rejected)
    module.exit_json(changed=True, launched=launched, skipped=skipped, rejected=rejected, runner_pid=runner_pid)


if __name__ == "__main__":
    main()
