"""Request and response models of the task farm routes (nodes, tasks, callbacks, inventory).

Node-supplied fields that end up in a generated Ansible inventory (host, user, paths,
interpreter) are held to strict patterns, so a node cannot smuggle Jinja or options
into a dispatcher's job.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from control.core.schemas import MAX_ID, Input, exactly_one
from control.farm.models import ANY, GRANT_TARGETS, TASK_STATES
from control.registry.schemas import HOST

NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
LABEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ABS_PATH = r"^/[A-Za-z0-9._/+@-]*$"
USER = r"^[a-z_][a-z0-9_-]{0,31}$"
# A node's workdir is where the runner writes task specs, pid files and logs (as its user,
# often root): never a system directory. Refused: "/", any top-level directory itself
# ("/var", "/home", "/tmp"), and anything in these trees.
SYSTEM_TREES = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev",
                "/proc", "/sys", "/run", "/var/run", "/var/lock", "/var/spool", "/var/log", "/var/cache",
                "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd")


def check_workdir(path: str) -> str:
    """Refuse a workdir that is not a normal absolute path, or that is (in) a system directory."""
    if posixpath.normpath(path) != path.rstrip("/") or "//" in path:
        raise ValueError("must be a normalized absolute path (no '.', '..' or '//')")
    path = path.rstrip("/") or "/"
    if path.count("/") < 2:
        raise ValueError("must not be / or a top-level directory")
    for tree in SYSTEM_TREES:
        if path == tree or path.startswith(tree + "/"):
            raise ValueError(f"must not be in the system directory {tree}")
    return path
TaskState = Literal[TASK_STATES]  # type: ignore[valid-type]
PID_MAX = 2**22  # Linux's pid_max ceiling
# A resource amount (cpu count, memory or disk bytes): bounded like every integer the API takes.
Amount = Annotated[int, Field(ge=0, le=MAX_ID)] | Annotated[float, Field(ge=0, le=MAX_ID)]


class NodeRegister(Input):
    name: str = Field(pattern=NODE_NAME)
    ansible_host: str = Field(default="127.0.0.1", pattern=HOST, max_length=253)
    ansible_port: int = Field(default=22, ge=1, le=65535)
    ansible_user: str = Field(default="root", pattern=USER)
    ansible_connection: Literal["ssh", "local", "paramiko"] = "ssh"
    python: str = Field(default="/usr/bin/python3", pattern=ABS_PATH, max_length=1024)
    workdir: str = Field(pattern=ABS_PATH, max_length=1024,
                         description="Where the runner keeps task specs, pids and logs: an absolute path, "
                                     "not / nor a top-level directory nor in a system tree (/etc, /usr, ...)")
    config_path: str = Field(pattern=ABS_PATH, max_length=1024,
                             description="The node's INI file (0600) the runner reads the node key from")
    region: str = Field(default="default", pattern=LABEL)
    hostname: str = Field(default="", max_length=253)
    pid: int | None = Field(default=None, ge=1, le=PID_MAX)
    queues: list[str] = Field(default_factory=lambda: ["default"], min_length=1, max_length=50)
    concurrency: int = Field(default=1, ge=1, le=10000)
    resources: dict[str, Amount] = Field(default_factory=dict,
                                         description="cpu, memory and disk (bytes), and any other")
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        return check_workdir(value)

    @model_validator(mode="after")
    def _check(self) -> NodeRegister:
        for q in self.queues:
            if not re.match(LABEL, q):
                raise ValueError(f"queues: {q!r} is not a valid queue name")
        if len(self.resources) > 50 or len(self.labels) > 50:
            raise ValueError("resources, labels: at most 50 entries")
        for k, v in self.labels.items():
            if not re.match(LABEL, k) or len(v) > 200:
                raise ValueError(f"labels: {k!r} is not a valid label")
        return self


class NodeHeartbeat(Input):
    pid: int | None = Field(default=None, ge=1, le=PID_MAX)
    resources: dict[str, Amount] | None = None


class NodeOut(BaseModel):
    name: str
    state: Literal["online", "lost", "deregistered"]
    cordoned: bool
    draining: bool
    drained: bool = Field(description="Draining and nothing left running")
    dispatch_error: str = Field(description="Why the dispatcher cordoned the node instead of reaching it "
                                            "(e.g. its SSH host key changed); empty once a round reaches it")
    region: str
    hostname: str
    pid: int | None
    queues: list[str]
    concurrency: int
    running: int = Field(description="Tasks assigned to or running on the node")
    free: int = Field(description="Free slots: concurrency minus running (0 when cordoned or not online)")
    resources: dict[str, Any]
    reserved: dict[str, int | float] = Field(description="Resources its assigned and running tasks reserve "
                                                          "(free: resources minus these)")
    held_for: int | None = Field(description="The queued task the node is held for: it waited longest for room "
                                             "here, and no other task starts here until it does")
    labels: dict[str, str]
    ansible_host: str
    ansible_port: int
    ansible_user: str
    ansible_connection: str
    python: str
    workdir: str
    registered_at: str
    last_seen: str
    last_seen_age: float = Field(description="Seconds since the last heartbeat or registration")
    key_generation: int = Field(description="Generation of the key the node signs with (bumped when it is "
                                            "deregistered or rotates its key)")


class JoinTokenIn(Input):
    name: str = Field(pattern=NODE_NAME, description="The one node name the token enrolls")
    ttl: int = Field(default=3600, ge=60, le=7 * 86400, description="Seconds the token stays usable")


class JoinTokenOut(BaseModel):
    token: str = Field(description="Shown once; give it to the node only (zonefarm node enroll)")
    name: str
    expires_at: str


class NodeEnroll(Input):
    token: str = Field(min_length=8, max_length=200, description="A join token from POST /nodes/tokens")
    registration: NodeRegister


class NodeCredential(BaseModel):
    node_key: str = Field(description="The node's own signing key: write it to its 0600 node.ini only")
    key_generation: int


class NodeEnrolled(BaseModel):
    node: NodeOut
    credential: NodeCredential


class HeartbeatOut(BaseModel):
    node: NodeOut
    cancel: list[int] = Field(description="Ids of this node's active tasks with a cancel request")


class Target(Input):
    node: str | None = Field(default=None, pattern=NODE_NAME)
    region: str | None = Field(default=None, pattern=LABEL)
    all: bool | None = None
    labels: dict[str, Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, max_length=20, description=(
            "A label selector: only nodes carrying every one of these labels (node registration's labels). "
            "Alone: one run on any such node of the queue; with region or all: a broadcast to those nodes"))

    @model_validator(mode="after")
    def _one(self) -> Target:
        given = [k for k in ("node", "region", "all") if getattr(self, k) not in (None, False)]
        if self.labels:
            for key in self.labels:
                if not re.match(LABEL, key):
                    raise ValueError(f"labels: {key!r} is not a valid label name")
            if given == ["node"]:
                raise ValueError('labels: give labels alone or with "region" or "all", not with "node"')
            if len(given) <= 1:
                return self
        if len(given) != 1:
            raise ValueError('give exactly one of {"node": name}, {"region": r}, {"all": true}, '
                             'or {"labels": {...}} alone or with a region')
        return self


RESOURCE_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
RESOURCE_MAX = 2**62  # bytes, cores or units: far above any node, well inside every number type


class TaskResources(Input):
    """What a task reserves on its node while assigned or running (docs/placement.md).

    A node takes the task only when its capacity (the ``resources`` it reports) minus what its
    assigned and running tasks reserve covers every amount. Besides cpu, memory and disk, any
    resource a node reports may be named (``"gpu": 1``). Omitted ones get the site's defaults
    (setting ``task_resources_default``).
    """

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "additionalProperties": {"type": "number", "minimum": 0, "maximum": RESOURCE_MAX},
        "propertyNames": {"pattern": RESOURCE_NAME}, "maxProperties": 20})

    cpu: float | None = Field(default=None, ge=0, le=1 << 20, description="Cores, fractional (0.5)")
    memory: int | None = Field(default=None, ge=0, le=RESOURCE_MAX, description="Bytes")
    disk: int | None = Field(default=None, ge=0, le=RESOURCE_MAX, description="Bytes")

    @model_validator(mode="after")
    def _named(self) -> TaskResources:
        extra = self.model_extra or {}
        given = len(extra) + sum(1 for k in ("cpu", "memory", "disk") if k in self.model_fields_set)
        if given > 20:
            raise ValueError("resources: at most 20 entries")
        for name, amount in extra.items():
            if not re.match(RESOURCE_NAME, name):
                raise ValueError(f"resources: {name!r} is not a valid resource name")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)):
                raise ValueError(f"resources.{name}: must be a number")
            if not 0 <= amount <= RESOURCE_MAX:
                raise ValueError(f"resources.{name}: must be between 0 and {RESOURCE_MAX}")
        return self

    def amounts(self) -> dict[str, float]:
        """Every amount given, named ones included."""
        return {k: v for k, v in {**self.model_dump(exclude_none=True), **(self.model_extra or {})}.items()
                if v is not None}


class TaskLimits(Input):
    """What a task may use on its node; each omitted value gets the site's default (settings task_*_default).

    Enforced on the worker by the task sandbox (docs/security.md): under systemd as the unit's
    MemoryMax, CPUQuota and TasksMax, in the pool of task accounts as setrlimit plus a memory
    watchdog, for container tasks as Docker's memory, CPU and pids limits. A task over its
    memory ends ``failed`` with a reason that says so.
    """

    memory_mb: int | None = Field(default=None, ge=16, le=1 << 24,
                                  description="Memory of the task's processes together, MiB")
    cpus: float | None = Field(default=None, gt=0, le=1024, description="CPUs, e.g. 0.5 or 2")
    processes: int | None = Field(default=None, ge=1, le=1 << 22,
                                  description="Processes and threads the task may run at once")


class TaskCreate(Input):
    name: str = Field(min_length=1, max_length=64, description="Task type: playbooks/tasks/<name>.yml")
    params: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, pattern=LABEL,
                              description="Default 'default'. Untargeted tasks run on nodes serving it; "
                                          "on a broadcast it narrows the nodes to those serving it")
    target: Target | None = Field(default=None, description="Omitted: any node serving the queue")
    space: int | None = Field(default=None, ge=1, le=MAX_ID,
                              description="Space the task works for; caller must be a member")
    limits: TaskLimits | None = Field(default=None, description=(
        "Memory, CPUs and processes for the task; omitted values get the site's defaults, and more than the "
        "site's maxima is refused (422)"))
    resources: TaskResources | None = Field(default=None, description=(
        "What the task reserves on its node (cpu, memory and disk bytes, any named resource a node reports); "
        "omitted ones get the site's defaults. A request no registered node could ever hold is refused (422)"))
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first")
    timeout: int = Field(default=3600, ge=1, le=30 * 86400, description="Seconds, per attempt, from start")
    max_attempts: int = Field(default=3, ge=1, le=100)


GRANT_TYPE = r"^(\*|[a-z][a-z0-9_]{0,63})$"
GRANT_QUEUE = r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,99})$"
GrantTargets = Literal[GRANT_TARGETS]  # type: ignore[valid-type]


class GrantCreate(Input):
    user: int | None = Field(default=None, ge=1, le=MAX_ID, description="The user it is granted to (or give group)")
    group: int | None = Field(default=None, ge=1, le=MAX_ID, description="The group it is granted to: every effective "
                                                              "member, nested groups included (or give user)")
    task_type: str = Field(default=ANY, pattern=GRANT_TYPE, description="A task type, or * for every one")
    queue: str = Field(default=ANY, pattern=GRANT_QUEUE, description="A queue, or * for every one")
    targets: GrantTargets = Field(default="single", description=(
        "How far a submission may reach: single (one run, on any node of the queue or a named node), "
        "region (also a broadcast to a region), all (also a broadcast to every node)"))

    _one_holder = exactly_one("user", "group")


class GrantOut(BaseModel):
    id: int
    user: int | None
    group: int | None
    holder: str = Field(description="Who holds it, e.g. 'user alice' or 'group climate-team'")
    task_type: str
    queue: str
    targets: GrantTargets
    created_at: str


class TargetOut(BaseModel):
    kind: Literal["any", "node", "region", "all"]
    value: str | None
    labels: dict[str, str] | None = Field(default=None, description="The label selector, if any")


class TaskOut(BaseModel):
    id: int
    name: str
    params: dict[str, Any]
    queue: str
    target: TargetOut
    space: int | None
    owner: int | None = Field(description="User id of the submitter; null for the administrator")
    parent: int | None = Field(description="The broadcast this task is one child run of")
    resources: dict[str, int | float] = Field(description="What the task reserves on its node, defaults filled in")
    priority: int
    timeout: int
    max_attempts: int
    attempt: int
    state: TaskState
    node: str | None
    last_node: str | None
    cancel_requested: bool
    progress: float
    exit_code: int | None
    outputs: dict[str, Any] | None
    reason: str
    created_at: str
    assigned_at: str | None
    started_at: str | None
    finished_at: str | None
    template: int | None = Field(default=None, description="The template it was launched from")
    template_version: int | None = Field(default=None, description="That template's version")
    schedule: int | None = Field(default=None, description="The schedule that fired it")


class Blocker(BaseModel):
    code: str
    message: str


class ChildOut(BaseModel):
    id: int
    node: str | None
    state: TaskState


class TaskDetail(TaskOut):
    blockers: list[Blocker] = Field(description="Why a queued task is not starting; empty otherwise")
    why: str | None = Field(description="The blockers in one sentence")
    children: list[ChildOut] = Field(description="A broadcast's child runs, one per node")


class EventOut(BaseModel):
    ts: str
    from_state: str | None
    to_state: str
    reason: str
    data: dict[str, Any] | None


class LogOut(BaseModel):
    offset: int = Field(description="Character offset of text in the whole log")
    next_offset: int = Field(description="Ask again with ?offset=next_offset for more")
    text: str
    complete: bool = Field(description="The task has ended: nothing more will be appended")


class Callback(BaseModel):
    """Log text arrives verbatim: unlike other inputs, nothing here is whitespace-stripped."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event: Literal["started", "progress", "log", "finished"]
    attempt: int = Field(ge=1, le=1000)
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    outputs: dict[str, Any] | None = None
    percent: float | None = Field(default=None, ge=0, le=100)
    data: str | None = Field(default=None, max_length=512 * 1024, description="Log text (event log)")
    offset: int | None = Field(default=None, ge=0, le=MAX_ID, description=(
        "Character offset of data in this attempt's output (event log): a chunk the API already "
        "holds is not stored again, so a retried log callback is idempotent"))
    reason: Literal["cancelled", "timed_out"] | None = None
    failure: str | None = Field(default=None, max_length=1000, description=(
        "Why the node ended the task (event finished): a limit it went over ('memory limit exceeded ...'), "
        "params the sandbox refused. The task ends failed with it as its reason"))

    @model_validator(mode="after")
    def _finished(self) -> Callback:
        if self.event == "finished" and self.exit_code is None and self.reason is None:
            raise ValueError("exit_code: required for a finished event")
        if self.event == "log" and self.data is None:
            raise ValueError("data: required for a log event")
        return self


class CallbackOut(BaseModel):
    cancel: bool = Field(description="Stop the task now: the user cancelled it")
    state: TaskState
    lease: int = Field(description="Seconds until the task is lost without another callback")


class TaskTypeOut(BaseModel):
    name: str
    params_schema: dict[str, Any] | None


class EventList(RootModel[list[EventOut]]):
    pass


class TaskTypeList(RootModel[list[TaskTypeOut]]):
    pass


INVENTORY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_meta", "all"],
    "properties": {
        "_meta": {"type": "object", "required": ["hostvars"],
                  "properties": {"hostvars": {"type": "object"}}},
        "all": {"type": "object", "properties": {"children": {"type": "array", "items": {"type": "string"}},
                                                 "hosts": {"type": "array", "items": {"type": "string"}}}},
    },
    "additionalProperties": {"type": "object", "properties": {
        "hosts": {"type": "array", "items": {"type": "string"}}}},
}


# --- a task's uploaded outputs (control.farm.taskfiles) -------------------------------------

OUTPUT_NAME = r"^[^/\x00][^\x00]*$"  # relative; ".." is refused by control.farm.taskfiles.space_path


class FileLanded(Input):
    """Signed by the node running the attempt, once the file has its final name on the provider."""

    attempt: int = Field(ge=1, le=1000)
    name: str = Field(pattern=OUTPUT_NAME, max_length=1024, description="Path in the task's directory")
    size: int = Field(ge=0, le=MAX_ID)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TaskFileOut(BaseModel):
    name: str = Field(description="Path of the output in the task's directory")
    size: int
    sha256: str
    provider_id: int | None = Field(description="The provider holding it; null once that provider is deleted")
    provider: str
    space_id: int
    path: str = Field(description="Where it is in the space: task-<id>/<name>")
    attempt: int
    created_at: str


# A path in a space: relative segments, none of them "..", no NUL (no look-around: pydantic's regex has none).
_SEGMENT = r"(?:[^/.\x00][^/\x00]*|\.|\.[^/.\x00][^/\x00]*|\.\.[^/\x00]+)"
SPACE_PATH = rf"^(?:{_SEGMENT}(?:/{_SEGMENT})*)?$"


class TransferCreate(Input):
    space: int = Field(ge=1, le=MAX_ID)
    path: str = Field("", max_length=1024, pattern=SPACE_PATH,
                      description="A file or directory in the space, relative to it; empty for the whole space")
    source: int = Field(ge=1, le=MAX_ID, description="Provider the data is read from (and removed from: migrate, "
                                                     "evict)")
    target: int = Field(ge=1, le=MAX_ID, description="Provider it is copied to (evict: the one holding the replica "
                                                     "that stays)")
    kind: Literal["replicate", "migrate", "evict"]


class TransferProgress(Input):
    """Signed by the node running the transfer's task attempt."""

    attempt: int = Field(ge=1, le=1000)
    bytes_total: int = Field(ge=0, le=MAX_ID)
    files_total: int = Field(ge=0, le=MAX_ID)
    bytes_done: int = Field(ge=0, le=MAX_ID)
    files_done: int = Field(ge=0, le=MAX_ID)


class TransferOut(BaseModel):
    id: int
    space_id: int
    path: str
    kind: str
    source_id: int
    target_id: int
    state: Literal["scheduled", "enqueued", "active", "completed", "failed", "cancelled"]
    reason: str = Field(description="The task's last reason (why it failed, who cancelled it)")
    task_id: int | None
    runs: int
    bytes_total: int | None = Field(description="Bytes to move, once the program has listed the source")
    bytes_done: int
    files_total: int | None
    files_done: int
    created_at: str
    updated_at: str
