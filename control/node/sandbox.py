"""The task sandbox: the root half of the task runner, run once per task attempt.

The runner (``control.node.runner``) stays in the node agent's account: it holds the node
key and the upload key, sends the callbacks and uploads outputs. It never runs user code
itself. For every attempt it starts this helper, which is the only code that runs as
root on the task's behalf:

* **as root** (the local deployment, tests): ``python -m control.node.sandbox POLICY``;
* **from the service account** (the roles): ``sudo -n zonefarm-sandbox POLICY``, allowed by
  one sudoers line that pins both the program and the policy path, so the caller chooses
  neither the program nor the rules it enforces.

The runner writes one JSON request on the helper's stdin (what to run: steps, env, cwd,
limits, the task's own params) and closes it. The helper then

1. takes a **task identity**: a pool account held exclusively (``flock``) for the attempt
   (backend ``pool``), or a systemd ``DynamicUser=yes`` transient unit (backend ``systemd``);
2. makes the task's **own directory**, mode 0700, owned by that identity and nothing else:
   ``<root>/tasks/<agent uid>/<id>-<attempt>-<random>`` (pool), or the unit's
   ``StateDirectory`` (systemd);
3. runs each step as that identity, with the task's limits: setrlimit plus a memory
   watchdog (pool), or ``MemoryMax``/``CPUQuota``/``TasksMax`` with ``ProtectSystem=strict``,
   ``ProtectHome``, ``PrivateTmp``, ``NoNewPrivileges`` (systemd);
4. when the task ends (or SIGTERM asks it to: cancel, timeout), kills every process of the
   identity, sweeps what it left in ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (pool), and hands
   the directory to the agent: entries owned by the identity are chowned to the caller,
   set-id bits cleared, nothing else touched (no symlink is followed, a hard link to a file
   the task does not own is left alone);
5. reports on **stderr**, one JSON line: exit code, reason (``memory limit exceeded ...``,
   ``killed by SIGTERM, which zonefarm did not send ...``), where the directory is, whether
   this helper was told to stop (``stopped``) and whether the host is going down
   (``node_stopping``). The task's stdout and stderr are the helper's stdout.

``mode: runner`` (container tasks) takes the identity and the directory the same way but
runs the given trusted program as the *caller* (the agent, which may use Docker), with the
identity's uid and gid in ``ZONEFARM_TASK_UID``/``ZONEFARM_TASK_GID``: the container runs as
that account, the program that talks to Docker never does.

Standard library only: it runs as root from a sudoers rule, and imports nothing but the
interpreter's own modules. Nothing here follows a path the caller could have swapped
for a symlink while root acts on it: directories are opened ``O_NOFOLLOW`` and every
change is made relative to their file descriptors.
"""

from __future__ import annotations

import configparser
import ctypes
import errno
import fcntl
import json
import math
import os
import pwd
import resource
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

SECTION = "sandbox"
DEFAULT_ROOT = "/var/lib/zonefarm-sandbox"
DEFAULT_POOL_FIRST_UID = 60100
DEFAULT_POOL_SIZE = 64
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when the task is stopped
WATCH_EVERY = 0.2  # seconds between memory samples (pool backend)
CGROUP_V1_MEMORY = "/sys/fs/cgroup/memory"  # the v1 memory controller, where a host has one
POOL_WAIT = 30.0  # seconds to wait for a free pool account before failing the attempt
MAX_REQUEST = 4 * 1024 * 1024
SWEEP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 - swept of what a task left, not used
PR_SET_NO_NEW_PRIVS = 38
SYSTEMD_BOOTED = "/run/systemd/system"  # sd_booted(3): systemd is PID 1
LIVE_STATES = ("initializing", "starting", "running", "degraded", "maintenance")  # is-system-running
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec only calls it
TASK_FILE = "task.json"  # the task's own params, in its directory (tasktypes.load_spec)
# Exit codes of the helper itself (the task's own code otherwise).
EXIT_REFUSED = 126  # the request was refused: nothing ran
EXIT_UNAVAILABLE = 125  # no identity could be had (pool exhausted, systemd refused)


class SandboxError(Exception):
    """A request this helper refuses, or an identity it cannot get; the message says which."""


# --- policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one task may use. ``memory_mb`` MiB, ``cpus`` CPUs (1.5 = one and a half), ``processes``."""

    memory_mb: int
    cpus: float
    processes: int

    def as_dict(self) -> dict[str, Any]:
        return {"memory_mb": self.memory_mb, "cpus": self.cpus, "processes": self.processes}


DEFAULT_LIMITS = Limits(memory_mb=2048, cpus=1.0, processes=512)
DEFAULT_MAXIMA = Limits(memory_mb=16384, cpus=8.0, processes=4096)


@dataclass(frozen=True)
class Policy:
    """The node's sandbox rules, from a root-owned INI file (``[sandbox]``) or the defaults.

    ``backend``: ``systemd`` (systemd-run, DynamicUser) or ``pool`` (dedicated accounts,
    ``pool_first_uid`` .. ``pool_first_uid + pool_size - 1``, each with the group of the
    same number); ``auto`` picks systemd where it is PID 1. ``root`` holds the pool's locks
    (``pool/``, 0700) and the task directories (``tasks/``, 0711).
    """

    backend: str = "auto"
    root: str = DEFAULT_ROOT
    pool_first_uid: int = DEFAULT_POOL_FIRST_UID
    pool_size: int = DEFAULT_POOL_SIZE
    defaults: Limits = DEFAULT_LIMITS
    maxima: Limits = DEFAULT_MAXIMA
    path: str = ""

    @property
    def pool_uids(self) -> range:
        return range(self.pool_first_uid, self.pool_first_uid + self.pool_size)

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "systemd" if os.path.isdir(SYSTEMD_BOOTED) and shutil.which("systemd-run") else "pool"

    def effective(self, asked: dict[str, Any] | None) -> tuple[Limits, list[str]]:
        """The limits a task runs with: its own, defaults for what it left out, capped at the maxima.

        Returns the limits and a note per value lowered to this node's maximum (they go into
        the task's log, so a user sees why a task got less than it asked for).
        """
        asked = asked or {}
        notes = []
        values: dict[str, Any] = {}
        for name in ("memory_mb", "cpus", "processes"):
            value = asked.get(name)
            if value is None:
                value = getattr(self.defaults, name)
            cast = float if name == "cpus" else int
            try:
                value = cast(value)
            except (TypeError, ValueError):
                raise SandboxError(f"limits.{name} must be a number, got {value!r}") from None
            if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise SandboxError(f"limits.{name} must be more than 0, got {value!r}")
            top = getattr(self.maxima, name)
            if value > top:
                notes.append(f"limits.{name} {value} lowered to this node's maximum {top}")
                value = top
            values[name] = value
        return Limits(**values), notes


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise SandboxError(message)


def load_policy(path: str | os.PathLike[str] | None) -> Policy:
    """Read ``[sandbox]`` from ``path``; an empty path means the built-in defaults."""
    if not path:
        return Policy()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except (OSError, configparser.Error) as exc:
        raise SandboxError(f"sandbox policy {path}: {exc}") from None
    if not parser.has_section(SECTION):
        raise SandboxError(f"sandbox policy {path}: missing [{SECTION}]")
    sec = parser[SECTION]
    known = {"backend", "root", "pool_first_uid", "pool_size"} | {
        f"{n}_{kind}" for n in ("memory_mb", "cpus", "processes") for kind in ("default", "max")}
    unknown = set(sec) - known
    _check(not unknown, f"sandbox policy {path}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        def limits(kind: str, base: Limits) -> Limits:
            return Limits(memory_mb=sec.getint(f"memory_mb_{kind}", base.memory_mb),
                          cpus=sec.getfloat(f"cpus_{kind}", base.cpus),
                          processes=sec.getint(f"processes_{kind}", base.processes))

        policy = Policy(backend=sec.get("backend", "auto").strip(), root=sec.get("root", DEFAULT_ROOT).strip(),
                        pool_first_uid=sec.getint("pool_first_uid", DEFAULT_POOL_FIRST_UID),
                        pool_size=sec.getint("pool_size", DEFAULT_POOL_SIZE),
                        defaults=limits("default", DEFAULT_LIMITS), maxima=limits("max", DEFAULT_MAXIMA),
                        path=str(path))
    except ValueError as exc:
        raise SandboxError(f"sandbox policy {path}: {exc}") from None
    _check(policy.backend in ("auto", "pool", "systemd"),
           f"sandbox policy {path}: backend must be auto, pool or systemd, got {policy.backend!r}")
    _check(os.path.isabs(policy.root) and os.path.normpath(policy.root) == policy.root and policy.root != "/",
           f"sandbox policy {path}: root must be a normalized absolute path other than /")
    _check(policy.pool_first_uid >= 1000 and policy.pool_size >= 1,
           f"sandbox policy {path}: pool_first_uid must be 1000 or more and pool_size 1 or more")
    for kind, lim in (("default", policy.defaults), ("max", policy.maxima)):
        for name, value in lim.as_dict().items():
            _check(value > 0, f"sandbox policy {path}: {name}_{kind} must be more than 0")
    return policy


def require_root_owned(path: str) -> None:
    """The policy and every directory above it: root's, writable by nobody else.

    Checked when a non-root caller reaches this helper through sudo: a policy the caller
    could replace (or a directory it could rename things in) would let it write the rules.
    """
    current = os.path.abspath(path)
    while True:
        st = os.lstat(current)
        _check(not stat.S_ISLNK(st.st_mode), f"sandbox policy: {current} is a symbolic link")
        _check(st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH),
               f"sandbox policy: {current} must be owned by root and writable by root only")
        if current == "/":
            return
        current = os.path.dirname(current)


# --- request ---------------------------------------------------------------------------


@dataclass
class Request:
    """What the runner asks for. Every string was checked: no NUL byte, the shapes as documented."""

    task_id: int
    attempt: int
    steps: list[tuple[str, list[str]]]
    env: dict[str, str]
    cwd: str | None
    limits: dict[str, Any]
    timeout: float | None
    mode: str = "task"
    task: dict[str, Any] = field(default_factory=dict)


def _string(value: Any, where: str) -> str:
    _check(isinstance(value, str), f"{where} must be a string")
    _check("\x00" not in value, f"{where} holds a NUL byte")
    return value


def parse_request(raw: bytes) -> Request:
    _check(len(raw) <= MAX_REQUEST, f"request larger than {MAX_REQUEST} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SandboxError(f"request is not JSON: {exc}") from None
    _check(isinstance(data, dict), "request must be an object")
    try:
        task_id, attempt = int(data["id"]), int(data["attempt"])
    except (KeyError, TypeError, ValueError):
        raise SandboxError("request needs integer id and attempt") from None
    mode = data.get("mode", "task")
    _check(mode in ("task", "runner"), f"mode must be task or runner, got {mode!r}")
    raw_steps = data.get("steps")
    _check(isinstance(raw_steps, list) and raw_steps, "steps must be a non-empty list")
    steps = []
    for i, step in enumerate(raw_steps):
        _check(isinstance(step, dict), f"steps[{i}] must be an object")
        argv = step.get("argv")
        _check(isinstance(argv, list) and argv, f"steps[{i}].argv must be a non-empty list")
        label = step.get("label") or ""
        steps.append((_string(label, f"steps[{i}].label"),
                      [_string(a, f"steps[{i}].argv[{j}]") for j, a in enumerate(argv)]))
    _check(mode == "task" or len(steps) == 1, "mode runner takes exactly one step")
    env = data.get("env") or {}
    _check(isinstance(env, dict), "env must be an object")
    clean_env = {}
    for key, value in env.items():
        _string(key, "env name")
        _check(key != "" and "=" not in key, f"env name {key!r} is not a variable name")
        clean_env[key] = _string(value, f"env.{key}")
    cwd = data.get("cwd")
    if cwd is not None:
        _string(cwd, "cwd")  # relative: inside the task's directory (Helper.workdir)
    limits = data.get("limits") or {}
    _check(isinstance(limits, dict), "limits must be an object")
    timeout = data.get("timeout")
    _check(timeout is None or (isinstance(timeout, (int, float)) and timeout > 0), "timeout must be positive")
    task = data.get("task") or {}
    _check(isinstance(task, dict), "task must be an object")
    return Request(task_id=task_id, attempt=attempt, steps=steps, env=clean_env, cwd=cwd, limits=limits,
                   timeout=float(timeout) if timeout else None, mode=mode, task=task)


# --- the caller ------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who asked: the agent's account (sudo tells us), or root itself."""

    uid: int
    gid: int
    via_sudo: bool

    @classmethod
    def detect(cls) -> Caller:
        if os.environ.get("SUDO_UID"):  # set by sudo itself; the caller cannot forge it through sudo
            return cls(int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID") or os.environ["SUDO_UID"]), True)
        return cls(os.getuid(), os.getgid(), False)

    def groups(self) -> list[int]:
        try:
            name = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return [self.gid]
        return os.getgrouplist(name, self.gid)


def _say(message: str) -> None:
    """One line into the task's log (the helper's stdout is the task's output)."""
    os.write(1, f"zonefarm: {message}\n".encode(errors="replace"))


def _step_failed(label: str, code: int) -> bool:
    """Whether a step's exit code stops the steps after it; a labelled step says so in the log."""
    if code != 0 and label:
        _say(f"{label} failed with exit code {code}")
    return code != 0


def _report(**data: Any) -> None:
    """One JSON line on the control channel (stderr), read by the runner."""
    os.write(2, (json.dumps(data) + "\n").encode())


# --- directories -----------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _own_dir(parent_fd: int | None, path: str, mode: int, uid: int, gid: int) -> int:
    """Open (making it if absent) a directory ``path`` (relative to ``parent_fd``), owned uid:gid, ``mode``.

    An existing entry must be a real directory: a symlink is refused (``O_NOFOLLOW``).
    """
    try:
        os.mkdir(path, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass
    fd = os.open(path, _DIR_FLAGS, dir_fd=parent_fd)
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
    return fd


def _open_root(policy: Policy) -> int:
    """``<root>`` (0711, root's), made with its parents if missing; every component a real directory."""
    fd = os.open("/", _DIR_FLAGS)
    parts = [p for p in policy.root.split("/") if p]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        try:
            os.mkdir(part, 0o711 if last else 0o755, dir_fd=fd)
        except FileExistsError:
            pass
        nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = nxt
    st = os.fstat(fd)
    _check(st.st_uid == 0, f"sandbox root {policy.root} must be owned by root")
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.fchmod(fd, 0o711)
    return fd


def hand_back(dir_fd: int, owner: int, to_uid: int, to_gid: int) -> None:
    """Give the agent what the task left: entries owned by ``owner`` become ``to_uid:to_gid``.

    Nothing is followed: symlinks are chowned as links, a hard-linked file the task does
    not own stays as it is (``fs.protected_hardlinks`` keeps such links to files the task
    could read and write anyway), and set-id bits are cleared so no file of the task can
    run with the agent's rights. The top directory becomes 0700.
    """
    top = os.fstat(dir_fd)
    if top.st_uid == owner:
        os.fchown(dir_fd, to_uid, to_gid)
    os.fchmod(dir_fd, 0o700)
    for _root, dirs, files, rootfd in os.fwalk(dir_fd=dir_fd, follow_symlinks=False):
        for name in dirs + files:
            try:
                st = os.stat(name, dir_fd=rootfd, follow_symlinks=False)
                if st.st_uid != owner:
                    continue
                os.chown(name, to_uid, to_gid, dir_fd=rootfd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    os.chmod(name, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID), dir_fd=rootfd)
            except FileNotFoundError:
                continue
        # what the task made unreadable to its owner: the agent must still be able to read it
        for name in dirs + files:
            try:
                st = os.stat(name, dir_fd=rootfd, follow_symlinks=False)
                if st.st_uid != to_uid or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    continue
                wanted = stat.S_IRWXU if stat.S_ISDIR(st.st_mode) else stat.S_IRUSR | stat.S_IWUSR
                if stat.S_IMODE(st.st_mode) & wanted != wanted:
                    os.chmod(name, stat.S_IMODE(st.st_mode) | wanted, dir_fd=rootfd)
            except FileNotFoundError:
                continue


def _write_task_file(dir_fd: int, task: dict[str, Any], uid: int, gid: int) -> None:
    fd = os.open(TASK_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    with os.fdopen(fd, "w") as fh:
        json.dump(task, fh)
        os.fchown(fh.fileno(), uid, gid)


# --- processes of an identity ----------------------------------------------------------


def pids_of(uid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def resident_bytes(uid: int) -> int:
    """Memory the identity's processes hold (sum of their resident set), for the watchdog."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids_of(uid):
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def kill_all(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of ``uid``, however it detached (setsid, double fork).

    A child becomes ``uid`` and calls ``kill(-1, SIGKILL)``, which reaches every process
    it may signal, that is every process of that account, but never itself; repeated
    until none is left so a process forking meanwhile is caught too.
    """
    if uid == 0:
        raise SandboxError("refusing to kill every process of root")
    for _ in range(rounds):
        if not pids_of(uid):
            return
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.02)


def sweep_temp(uid: int) -> None:
    """Remove what ``uid`` left at the top of the shared temporary directories.

    Its processes are gone, so nothing changes under us; rmtree does not follow links.
    """
    for base in SWEEP_DIRS:
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


# --- the pool --------------------------------------------------------------------------


class PoolAccount:
    """One pool account, held through an exclusive lock on ``<root>/pool/<uid>.lock``.

    The lock file records the directory the account works in. Whoever takes the account
    next first cleans up after a holder that died (helper killed): kills its processes,
    sweeps its temporary files and hands its directory to the agent it worked for.
    """

    def __init__(self, uid: int, lock_fd: int) -> None:
        self.uid = uid
        self.gid = uid
        self.lock_fd = lock_fd

    @classmethod
    def acquire(cls, policy: Policy, pool_fd: int, wait: float = POOL_WAIT) -> PoolAccount:
        deadline = time.monotonic() + wait
        while True:
            for uid in policy.pool_uids:
                fd = os.open(f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=pool_fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                account = cls(uid, fd)
                account.recover()
                return account
            if time.monotonic() >= deadline:
                raise SandboxError(f"all {policy.pool_size} task accounts of the pool are busy")
            time.sleep(0.25)

    def _record(self) -> dict[str, Any]:
        os.lseek(self.lock_fd, 0, os.SEEK_SET)
        raw = os.read(self.lock_fd, 65536)
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def remember(self, **data: Any) -> None:
        os.ftruncate(self.lock_fd, 0)
        os.lseek(self.lock_fd, 0, os.SEEK_SET)
        os.write(self.lock_fd, json.dumps(data).encode())
        os.fsync(self.lock_fd)

    def recover(self) -> None:
        """Clean up after the previous holder, whether it ended well or was killed."""
        kill_all(self.uid)
        sweep_temp(self.uid)
        left = self._record()
        path, owner = left.get("dir"), left.get("owner")
        if isinstance(path, str) and isinstance(owner, list) and len(owner) == 2:
            try:
                fd = os.open(path, _DIR_FLAGS)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    hand_back(fd, self.uid, int(owner[0]), int(owner[1]))
                finally:
                    os.close(fd)
        self.remember()

    def release(self) -> None:
        os.close(self.lock_fd)  # closing drops the lock


# --- how a task ended -------------------------------------------------------------------


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def foreign_signal_reason(code: int) -> str:
    """Why a task killed by a signal this helper did not send failed: it never counts as success.

    systemd counts SIGTERM (and SIGHUP, SIGINT, SIGPIPE) as a clean end of a service, and a
    host's shutdown stops a task's unit with exactly that; the pool's tasks can get one from
    any process of root, or from a shutdown's final kill of every process.
    """
    return f"killed by {signal_name(-code)}, which zonefarm did not send (the node may be shutting down)"


def node_stopping() -> bool:
    """systemd is taking this host down: ``systemctl is-system-running`` says ``stopping``,
    or, asked as root on a host systemd booted, PID 1 no longer answers at all.

    Asked only when a task ended badly and not by a limit, so a task killed by the shutdown
    is left to its lease, not reported failed. Late in a shutdown PID 1 closes its socket
    and goes on to kill every process left: ``systemd-run`` then fails with "Connection reset
    by peer", and nothing says "stopping" any more. Root reaches PID 1 on its private socket
    at any other time, so silence there means the end; a caller that is not root needs D-Bus,
    which a host may not run, so for it only ``stopping`` counts. Where there is no systemd
    the command is missing or says ``offline``: not stopping.
    """
    try:
        out = subprocess.run(["systemctl", "is-system-running"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=5, check=False).stdout.strip()
    except subprocess.TimeoutExpired:
        out = ""
    except (OSError, subprocess.SubprocessError):
        return False
    if out == "stopping":
        return True
    return os.geteuid() == 0 and os.path.isdir(SYSTEMD_BOOTED) and out not in LIVE_STATES


# --- running ---------------------------------------------------------------------------


class Helper:
    """One attempt from request to report."""

    def __init__(self, policy: Policy, caller: Caller, request: Request) -> None:
        self.policy = policy
        self.caller = caller
        self.req = request
        self.backend = policy.resolved_backend() if request.mode == "task" else "pool"
        self.limits, self.notes = policy.effective(request.limits)
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.unit: str | None = None
        self.reason: str | None = None
        self.foreign = False  # the task died of a signal nobody here sent (reason says so)
        self.name = f"{request.task_id}-{request.attempt}-{secrets.token_hex(4)}"
        self.peak = 0  # bytes: the largest memory sample of the task's unit (systemd backend)
        self.oom: OomNotifier | None = None  # the kernel's OOM events of the running unit (cgroup v1)

    # signals ------------------------------------------------------------------------

    def on_term(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.unit:  # systemd: the unit's cgroup, whatever its processes did to their groups
            _systemctl_kill(self.unit, "SIGTERM")
        elif self.child is not None:
            # The task shares this helper's process group (so a kill -9 of the group from a
            # root runner takes it along); we get our own signal again and ignore it.
            try:
                os.killpg(0, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    # the task's environment ------------------------------------------------------------

    def workdir(self, task_dir: str) -> str:
        """The task's working directory: its own directory, or ``cwd`` (relative: inside its own)."""
        return os.path.join(task_dir, self.req.cwd) if self.req.cwd else task_dir

    def task_env(self, task_dir: str, account: PoolAccount | None) -> dict[str, str]:
        env = dict(self.req.env)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        if self.req.mode == "task":
            env["HOME"] = task_dir
        env["ZONEFARM_TASK_DIR"] = task_dir
        env["ZONEFARM_TASK_ID"] = str(self.req.task_id)
        if account is not None:
            env["USER"] = env["LOGNAME"] = _account_name(account.uid)
        if self.req.mode == "runner" and account is not None:
            env["ZONEFARM_TASK_UID"] = str(account.uid)
            env["ZONEFARM_TASK_GID"] = str(account.gid)
            env["ZONEFARM_LIMITS"] = json.dumps(self.limits.as_dict())
        return env

    # pool backend -----------------------------------------------------------------------

    def _rlimits(self) -> list[tuple[int, tuple[int, int]]]:
        lim = self.limits
        out = [(resource.RLIMIT_NPROC, (lim.processes, lim.processes)),
               (resource.RLIMIT_CORE, (0, 0)),
               # one process may never map more than this node lets any task have: a backstop for
               # a burst between two samples of the memory watchdog, which enforces the task's own
               (resource.RLIMIT_AS, (self.policy.maxima.memory_mb << 20, self.policy.maxima.memory_mb << 20))]
        if self.req.timeout:
            cpu_seconds = max(1, math.ceil(lim.cpus * self.req.timeout))
            out.append((resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5)))
        return out

    def _drop(self, uid: int, gid: int, groups: list[int], cwd: str, rlimits: list[Any]) -> Any:
        """preexec for the task's child: become the identity, then enter its directory (as it)."""

        def preexec() -> None:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                os._exit(EXIT_REFUSED)
            for res, value in rlimits:
                resource.setrlimit(res, value)
            if uid != 0 and _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                os._exit(EXIT_REFUSED)  # no set-id program (sudo, su) may lift the task above itself
            os.umask(0o077)
            try:
                os.chdir(cwd)  # as the identity: a directory it may not enter stays closed
            except OSError as exc:
                os.write(1, f"zonefarm: cannot enter the working directory {cwd!r}: {exc.strerror}\n"
                         .encode(errors="replace"))
                os._exit(EXIT_REFUSED)

        return preexec

    def run_pool(self, root_fd: int) -> int:
        pool_fd = _own_dir(root_fd, "pool", 0o700, 0, 0)
        tasks_fd = _own_dir(root_fd, "tasks", 0o711, 0, 0)
        agent_fd = _own_dir(tasks_fd, str(self.caller.uid), 0o711, self.caller.uid, self.caller.gid)
        base = os.path.join(self.policy.root, "tasks", str(self.caller.uid))
        account = PoolAccount.acquire(self.policy, pool_fd)
        task_dir = os.path.join(base, self.name)
        dir_fd = -1
        try:
            account.remember(dir=task_dir, owner=[self.caller.uid, self.caller.gid])
            os.mkdir(self.name, 0o700, dir_fd=agent_fd)
            dir_fd = os.open(self.name, _DIR_FLAGS, dir_fd=agent_fd)
            os.fchown(dir_fd, account.uid, account.gid)
            os.fchmod(dir_fd, 0o700)
            _write_task_file(dir_fd, self.req.task, account.uid, account.gid)
            _report(event="started", dir=task_dir, uid=account.uid, backend="pool",
                    limits=self.limits.as_dict())
            for note in self.notes:
                _say(note)
            env = self.task_env(task_dir, account)
            code = 0
            for label, argv in self.req.steps:
                if self.stopping:  # stopped before this step: the task did not run to its end
                    code = code or -signal.SIGTERM
                    break
                if label:
                    _say(f"{label}: {' '.join(argv)}")
                if self.req.mode == "runner":  # the trusted program runs as the caller, not sandboxed
                    preexec = self._drop(self.caller.uid, self.caller.gid, self.caller.groups(), "/", [])
                else:
                    preexec = self._drop(account.uid, account.gid, [], self.workdir(task_dir), self._rlimits())
                code = self._spawn_and_watch(argv, env, preexec, account.uid)
                if _step_failed(label, code):
                    break
            return code
        finally:
            kill_all(account.uid)
            sweep_temp(account.uid)
            if dir_fd >= 0:
                hand_back(dir_fd, account.uid, self.caller.uid, self.caller.gid)
                os.close(dir_fd)
            account.remember()
            account.release()
            self.task_dir = task_dir

    def _spawn_and_watch(self, argv: list[str], env: dict[str, str], preexec: Any, uid: int) -> int:
        try:
            self.child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=1, stderr=1,
                                          preexec_fn=preexec, close_fds=True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            _say(f"cannot start {argv[0]!r}: {exc}")
            return 127
        limit = self.limits.memory_mb << 20
        grace_until: float | None = None
        while True:
            try:
                code = self.child.wait(WATCH_EVERY)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                if grace_until is None:
                    grace_until = time.monotonic() + KILL_GRACE
                elif time.monotonic() >= grace_until:
                    kill_all(uid)
                continue
            used = resident_bytes(uid)
            if used > limit:
                self.reason = (f"memory limit exceeded: the task used {used >> 20} MiB, "
                               f"its limit is {self.limits.memory_mb} MiB")
                _say(self.reason)
                kill_all(uid)
        if code == -signal.SIGXCPU and self.reason is None:
            self.reason = f"CPU time limit exceeded ({self.limits.cpus} CPUs for the task's timeout)"
        self._note_foreign_signal(code)
        return code

    def _note_foreign_signal(self, code: int) -> None:
        """A task killed by a signal neither this helper nor a limit sent: say so, never a success."""
        if code < 0 and not self.stopping and self.reason is None:
            self.reason = foreign_signal_reason(code)
            self.foreign = True
            _say(self.reason)

    # systemd backend ------------------------------------------------------------------

    def unit_properties(self, state_dir: str) -> list[str]:
        """The transient unit's sandbox, one ``-p`` each (the lab runs them; docs/security.md)."""
        lim = self.limits
        return [
            "DynamicUser=yes",
            f"StateDirectory={state_dir}",
            "StateDirectoryMode=0700",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "NoNewPrivileges=yes",
            "RestrictSUIDSGID=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictRealtime=yes",
            "LockPersonality=yes",
            "RemoveIPC=yes",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "UMask=0077",
            f"MemoryMax={lim.memory_mb}M",
            "MemorySwapMax=0",
            f"CPUQuota={max(1, round(lim.cpus * 100))}%",
            f"TasksMax={lim.processes}",
            "OOMPolicy=kill",
            "TimeoutStartSec=infinity",  # a oneshot is "starting" for as long as the task runs
            "KillMode=control-group",
            f"TimeoutStopSec={int(KILL_GRACE) + 1}s",
        ]

    def systemd_argv(self, unit: str, state_dir: str, argv: list[str], env: dict[str, str]) -> list[str]:
        # oneshot: the only type for which systemd does not count a main process killed by SIGTERM
        # (SIGHUP, SIGINT, SIGPIPE) as a clean exit. A host's shutdown stops the unit with SIGTERM;
        # as `exec` that was Result=success, the unit was collected at once and the task
        # "succeeded". As oneshot it is Result=signal, and a failed unit stays until reset-failed.
        cmd = ["systemd-run", "--quiet", "--wait", "--pipe", f"--unit={unit}", "--service-type=oneshot"]
        for prop in self.unit_properties(state_dir):
            cmd.append(f"--property={prop}")
        cmd.append(f"--working-directory={self.workdir('/var/lib/' + state_dir)}")
        for key, value in sorted(env.items()):
            cmd.append(f"--setenv={key}={value}")
        return cmd + ["--"] + argv

    def _wait_unit(self, unit: str) -> int:
        """Wait for systemd-run; once stopping, SIGKILL the unit's cgroup after the grace.

        Meanwhile, where systemd cannot tell an out-of-memory kill (cgroup v1), the kernel's
        OOM notification is armed on the unit's memory cgroup as soon as it exists
        (``OomNotifier``), and the unit's memory is sampled (``MemoryCurrent``) for hosts where
        even that cannot be had: there a SIGKILL at the limit is taken for one.
        """
        assert self.child is not None
        grace_until: float | None = None
        next_sample = 0.0
        arm_tries = 0
        while True:
            if self.oom is None and arm_tries < 50 and os.path.isdir(CGROUP_V1_MEMORY):
                arm_tries += 1
                self.oom = OomNotifier.arm(unit)
            try:
                return self.child.wait(0.02 if self.oom is None and arm_tries < 50 else WATCH_EVERY)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + 0.5
                self.peak = max(self.peak, _unit_memory(unit))
            if self.stopping:
                if grace_until is None:
                    grace_until = time.monotonic() + KILL_GRACE
                elif time.monotonic() >= grace_until:
                    _systemctl_kill(unit, "SIGKILL")
                    grace_until = time.monotonic() + KILL_GRACE

    def _unit_result(self, unit: str) -> tuple[str, int | None]:
        show = _systemctl("show", "--property=Result,ExecMainCode,ExecMainStatus", unit)
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        code: int | None = None
        try:
            status = int(props.get("ExecMainStatus", ""))
            how = int(props.get("ExecMainCode", "0"))
            code = status if how == 1 else -status if how in (2, 3) else None  # CLD_EXITED, CLD_KILLED, CLD_DUMPED
        except ValueError:
            pass
        _systemctl("reset-failed", unit)
        return props.get("Result", ""), code

    def run_systemd(self, root_fd: int) -> int:
        tasks_fd = _own_dir(root_fd, "tasks", 0o711, 0, 0)
        agent_fd = _own_dir(tasks_fd, str(self.caller.uid), 0o711, self.caller.uid, self.caller.gid)
        state_dir = f"zonefarm-task-{self.name}"
        private_fd = _own_dir(None, "/var/lib/private", 0o700, 0, 0)
        dir_fd = -1
        code = 0
        try:
            os.mkdir(state_dir, 0o700, dir_fd=private_fd)
            dir_fd = os.open(state_dir, _DIR_FLAGS, dir_fd=private_fd)
            _write_task_file(dir_fd, self.req.task, 0, 0)  # systemd chowns it to the dynamic user
            task_dir = f"/var/lib/{state_dir}"
            _report(event="started", dir=task_dir, backend="systemd", limits=self.limits.as_dict())
            for note in self.notes:
                _say(note)
            env = self.task_env(task_dir, None)
            for i, (label, argv) in enumerate(self.req.steps):
                if self.stopping:  # stopped before this step: the task did not run to its end
                    code = code or -signal.SIGTERM
                    break
                if label:
                    _say(f"{label}: {' '.join(argv)}")
                self.unit = f"zonefarm-task-{self.name}-{i}"
                try:
                    self.child = subprocess.Popen(self.systemd_argv(self.unit, state_dir, argv, env),
                                                  stdin=subprocess.DEVNULL, stdout=1, stderr=1, process_group=0)
                except OSError as exc:
                    _say(f"cannot start systemd-run: {exc}")
                    return EXIT_UNAVAILABLE
                try:
                    rc = self._wait_unit(self.unit)
                    _await_unit_end(self.unit)
                    result, main_code = self._unit_result(self.unit)
                    oom_events = self.oom.oom_events() if self.oom is not None else None
                finally:
                    if self.oom is not None:
                        self.oom.close()
                    self.oom = None
                self.unit = None
                code = main_code if main_code is not None else rc
                at_limit = self.peak >= (self.limits.memory_mb << 20) // 2  # sampled: a fast climb may be seen low
                if oom_events is not None:  # the kernel said (cgroup v1): no guessing from samples
                    # the OOM killer may have picked a child (`sh -c` reports 137), not the main process
                    killed_by_oom = bool(oom_events) and code != 0
                else:
                    killed_by_oom = code == -signal.SIGKILL and at_limit and not self.stopping
                if result == "oom-kill" or killed_by_oom:
                    self.reason = f"memory limit exceeded: killed at its limit of {self.limits.memory_mb} MiB"
                    _say(self.reason)
                    code = code or -signal.SIGKILL
                elif result == "exit-code" and 200 <= code <= 243:  # systemd.exec(5): the sandbox's own setup
                    self.reason = (f"the systemd sandbox could not start the task (exit status {code}, "
                                   "systemd.exec(5)); see the worker's journal")
                    _say(self.reason)
                else:
                    self._note_foreign_signal(code)
                if _step_failed(label, code):
                    break
            return code
        finally:
            if dir_fd >= 0:
                owner = os.fstat(dir_fd).st_uid
                if owner != self.caller.uid:  # the last unit's dynamic user, or root if no unit started
                    hand_back(dir_fd, owner, self.caller.uid, self.caller.gid)
                os.close(dir_fd)
                try:  # the unit's directory moves next to the pool's, where the agent can take it
                    os.rename(state_dir, self.name, src_dir_fd=private_fd, dst_dir_fd=agent_fd)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    shutil.move(f"/var/lib/private/{state_dir}",
                                os.path.join(self.policy.root, "tasks", str(self.caller.uid), self.name))
                try:
                    os.unlink(f"/var/lib/{state_dir}")  # systemd's symlink to private/
                except OSError:
                    pass
            self.task_dir = os.path.join(self.policy.root, "tasks", str(self.caller.uid), self.name)
            os.close(private_fd)

    # ------------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGHUP, self.on_term)
        self.task_dir = ""
        root_fd = _open_root(self.policy)
        try:
            if self.backend == "systemd":
                code = self.run_systemd(root_fd)
            else:
                code = self.run_pool(root_fd)
        finally:
            os.close(root_fd)
        # A task that ended badly, not by a limit, while systemd takes the host down: the runner
        # leaves it to its lease (the reaper requeues it) instead of reporting it failed.
        going_down = code != 0 and (self.reason is None or self.foreign) and node_stopping()
        _report(event="result", exit_code=code, reason=self.reason, dir=self.task_dir, stopped=self.stopping,
                node_stopping=going_down)
        return code


class OomNotifier:
    """Counts the kernel's out-of-memory events of one cgroup-v1 memory cgroup (a task's unit).

    On cgroup v1 systemd enforces ``MemoryMax`` (as ``memory.limit_in_bytes``) but cannot
    tell an out-of-memory kill from any other SIGKILL: its ``Result`` is ``signal``, not
    ``oom-kill``, and the unit's cgroup is gone before anyone could read its counters. The
    kernel's own notification is exact: an eventfd registered on the cgroup's
    ``memory.oom_control`` (through ``cgroup.event_control``) is signalled at every OOM in that
    cgroup. It is signalled once more, later, when the cgroup is removed, so a thread wakes on
    each signal at once and counts it as an OOM only while the cgroup's directory still
    exists: an OOM happens while the task's processes live, the removal after systemd found
    them dead and removed the directory. The lab's hosts are such hosts.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.count = 0
        self.stopping = False
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ofd = -1
        try:
            ofd = os.open(os.path.join(directory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            control = os.open(os.path.join(directory, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(control, f"{self.efd} {ofd}".encode())
            finally:
                os.close(control)
        except OSError:
            os.close(self.efd)
            raise
        finally:
            if ofd >= 0:
                os.close(ofd)  # the kernel holds its own reference once registered
        self.thread = threading.Thread(target=self._watch, name="oom-notifier", daemon=True)
        self.thread.start()

    @classmethod
    def arm(cls, unit: str) -> OomNotifier | None:
        """A notifier on the unit's memory cgroup; None where there is no v1 memory controller."""
        path = _unit_property(unit, "ControlGroup")
        directory = os.path.join(CGROUP_V1_MEMORY, path.lstrip("/"))
        if not path or not os.path.isdir(directory):
            return None
        try:
            return cls(directory)
        except OSError:
            return None

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self.efd, select.POLLIN)
        while True:
            ready = poller.poll(100)
            if not ready:
                if self.stopping:
                    return
                continue
            alive = os.path.isdir(self.directory)  # looked at before the read: a removal comes after rmdir
            try:
                signalled = os.eventfd_read(self.efd)
            except BlockingIOError:
                continue
            if not alive:
                return  # the cgroup is gone: this was (or will be) its removal
            self.count += signalled

    def oom_events(self) -> int:
        """OOM events in the cgroup up to now: ask once the unit has ended."""
        self.stopping = True
        self.thread.join(1.0)
        return self.count

    def close(self) -> None:
        self.stopping = True
        self.thread.join(1.0)
        if not self.thread.is_alive():
            os.close(self.efd)


def _systemctl(*args: str) -> str:
    """``systemctl`` with its output; empty when systemd does not answer within 5 s (a host going
    down), so the sandbox never holds a shutdown up waiting on it."""
    try:
        return subprocess.run(["systemctl", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _unit_property(unit: str, name: str) -> str:
    return _systemctl("show", "--value", f"--property={name}", unit).strip()


def _await_unit_end(unit: str, patience: float = 2 * KILL_GRACE + 5) -> None:
    """Wait (bounded) until the unit has stopped: what it reports is final only then.

    ``systemd-run --wait`` of a oneshot returns as soon as its start job ends, and a stop job
    (the host's shutdown) cancels that job while the unit is still killing its processes.
    """
    deadline = time.monotonic() + patience
    while _unit_property(unit, "ActiveState") in ("activating", "active", "deactivating", "reloading") \
            and time.monotonic() < deadline:
        time.sleep(0.1)


def _unit_memory(unit: str) -> int:
    out = _unit_property(unit, "MemoryCurrent")
    return int(out) if out.isdigit() else 0


def _systemctl_kill(unit: str, sig: str) -> None:
    _systemctl("kill", f"--signal={sig}", unit)


def _account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def run_helper(policy_path: str, stdin: Any = None) -> int:
    """Entry point: refuse unless root; read the policy and the request; run; report."""
    if os.geteuid() != 0:
        _report(event="error", message="the task sandbox must run as root (directly, or through sudo)")
        return EXIT_UNAVAILABLE
    caller = Caller.detect()
    try:
        if caller.via_sudo and policy_path:
            require_root_owned(policy_path)
        policy = load_policy(policy_path)
        raw = (stdin or sys.stdin.buffer).read(MAX_REQUEST + 1)
        request = parse_request(raw)
        helper = Helper(policy, caller, request)
    except SandboxError as exc:
        _report(event="error", message=str(exc))
        return EXIT_REFUSED
    try:
        return helper.run()
    except SandboxError as exc:
        _report(event="error", message=str(exc))
        return EXIT_UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    """``zonefarm-sandbox POLICY`` (sudo), or ``python -m control.node.sandbox POLICY`` (root); '' = defaults."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        _report(event="error", message="usage: zonefarm-sandbox POLICY_FILE (or '' for the defaults)")
        return 2
    os.umask(0o077)
    return run_helper(args[0])


if __name__ == "__main__":
    sys.exit(main())
