"""The task farm: worker nodes, tasks, their event history and logs, and seen nonces.

Times are epoch floats like the registry's, so lease and timeout checks are plain
arithmetic in SQL on both databases.
"""

from __future__ import annotations

import peewee

from control.core.models import BaseModel, JSONField, now
from control.registry.models import Group, User

NODE_STATES = ("online", "lost", "deregistered")
ACTIVE = ("assigned", "running")
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
TASK_STATES = ("queued", "assigned", "running", "lost", *TERMINAL)
TARGET_KINDS = ("any", "node", "region", "all")
BROADCAST_KINDS = ("region", "all")
# What a grant lets its holder target, narrowest first; each covers the ones before it.
GRANT_TARGETS = ("single", "region", "all")
ANY = "*"  # a grant's task type or queue: every one


class Node(BaseModel):
    name = peewee.CharField(max_length=100, unique=True)
    ansible_host = peewee.CharField(max_length=253, default="127.0.0.1")
    ansible_port = peewee.IntegerField(default=22)
    ansible_user = peewee.CharField(max_length=64, default="")
    ansible_connection = peewee.CharField(max_length=20, default="ssh")
    python = peewee.CharField(max_length=1024, default="")
    config_path = peewee.CharField(max_length=1024, default="")
    region = peewee.CharField(max_length=100, default="default", index=True)
    hostname = peewee.CharField(max_length=253, default="")
    pid = peewee.IntegerField(null=True)
    queues = JSONField(default=lambda: ["default"])
    concurrency = peewee.IntegerField(default=1)
    resources = JSONField(default=dict)
    labels = JSONField(default=dict)
    workdir = peewee.CharField(max_length=1024, default="")
    state = peewee.CharField(max_length=16, default="online", index=True)
    cordoned = peewee.BooleanField(default=False)
    draining = peewee.BooleanField(default=False)
    # Why the dispatcher cordoned the node instead of connecting (its SSH host key changed);
    # cleared by the next round that reaches it.
    dispatch_error = peewee.TextField(default="")
    registered_at = peewee.DoubleField(default=now)
    last_seen = peewee.DoubleField(default=now)
    # The node signs with HMAC(nodes_secret, "node:<name>:<generation>") (control.node.signing):
    # deregistering bumps the generation (the old key is revoked); a node signing with a newer
    # one moves it on (rotation), and the one before stays valid until key_previous_until.
    key_generation = peewee.IntegerField(default=0)
    key_previous_generation = peewee.IntegerField(null=True)
    key_previous_until = peewee.DoubleField(default=0)

    def serves(self, queue: str) -> bool:
        return queue in (self.queues or [])


class Task(BaseModel):
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="CASCADE")
    name = peewee.CharField(max_length=100, index=True)
    params = JSONField(default=dict)
    queue = peewee.CharField(max_length=100, default="default")
    target_kind = peewee.CharField(max_length=10, default="any")
    target_value = peewee.CharField(max_length=100, null=True)
    # Plain ids, not foreign keys: deleting a user or space must not erase task history.
    space_id = peewee.IntegerField(null=True)
    owner = peewee.IntegerField(null=True, index=True)
    priority = peewee.IntegerField(default=0)
    timeout = peewee.IntegerField(default=3600)
    # What the task may use on its node (memory_mb, cpus, processes), the site's defaults filled in.
    limits = JSONField(null=True)
    # What the task reserves on its node while assigned or running (cpu, memory and disk bytes,
    # named ones such as gpu), the site's defaults filled in; None: nothing (concurrency alone).
    resources = JSONField(null=True)
    # A label selector: the node must carry each of these labels (target {"labels": {...}}).
    target_labels = JSONField(null=True)
    # The node a task that waited past placement_reserve_after holds: no other task starts there
    # until this one does (control.farm.eligibility). A plain id, read only while the task is queued.
    reserved_node = peewee.IntegerField(null=True)
    max_attempts = peewee.IntegerField(default=3)
    attempt = peewee.IntegerField(default=0)
    state = peewee.CharField(max_length=16, default="queued")
    node = peewee.ForeignKeyField(Node, null=True, backref="tasks", on_delete="SET NULL")
    # The node the last lost attempt ran on: a requeued task prefers another one.
    last_node = peewee.CharField(max_length=100, null=True)
    claimed_by = peewee.CharField(max_length=200, null=True)
    cancel_requested = peewee.BooleanField(default=False)
    # When the reaper last handed the task to a dispatcher to kill (once per request).
    kill_sent_at = peewee.DoubleField(null=True)
    created_at = peewee.DoubleField(default=now)
    assigned_at = peewee.DoubleField(null=True)
    started_at = peewee.DoubleField(null=True)
    finished_at = peewee.DoubleField(null=True)
    lease_expires_at = peewee.DoubleField(null=True)
    exit_code = peewee.IntegerField(null=True)
    outputs = JSONField(null=True)
    progress = peewee.FloatField(default=0)
    reason = peewee.TextField(default="")
    # Where it came from (plain ids, like owner: deleting a template keeps the history): the
    # template and the version launched, and the schedule that fired it.
    template_id = peewee.IntegerField(null=True)
    template_version = peewee.IntegerField(null=True)
    schedule_id = peewee.IntegerField(null=True)

    class Meta:
        indexes = (
            (("state", "queue", "priority", "created_at"), False),
            (("template_id", "state"), False),
            (("node", "state"), False),
            (("state", "lease_expires_at"), False),
            (("reserved_node", "state"), False),
        )

    @property
    def node_name(self) -> str | None:
        return self.node.name if self.node_id is not None else None

    @property
    def is_broadcast(self) -> bool:
        return self.target_kind in BROADCAST_KINDS


class TaskEvent(BaseModel):
    task = peewee.ForeignKeyField(Task, backref="events", on_delete="CASCADE")
    ts = peewee.DoubleField(default=now)
    from_state = peewee.CharField(max_length=16, null=True)
    to_state = peewee.CharField(max_length=16)
    reason = peewee.TextField(default="")
    data = JSONField(null=True)
    # Who moved the task (control.core.actor): user:<id>, node:<name>, dispatcher:<id>...
    actor = peewee.CharField(max_length=200, default="system")

    class Meta:
        indexes = ((("ts",), False), (("actor", "ts"), False))


class TaskLog(BaseModel):
    """One chunk of a task's output; ``start`` is its character offset in the whole log."""

    task = peewee.ForeignKeyField(Task, backref="log_chunks", on_delete="CASCADE")
    seq = peewee.IntegerField()
    start = peewee.BigIntegerField()
    ts = peewee.DoubleField(default=now)
    text = peewee.TextField()

    class Meta:
        indexes = ((("task", "seq"), True),)


class Nonce(BaseModel):
    """Nonces of signed node requests, kept for twice the allowed clock skew."""

    value = peewee.CharField(max_length=128, unique=True)
    node = peewee.CharField(max_length=100)
    ts = peewee.DoubleField(default=now, index=True)


class NodeJoinToken(BaseModel):
    """A single-use, expiring token that enrolls one new node name (``POST /nodes/tokens``).

    Only its SHA-256 digest is stored; ``used_at`` is set by the one enrollment it allows.
    """

    token_hash = peewee.CharField(max_length=64, unique=True)
    name = peewee.CharField(max_length=100)
    created_at = peewee.DoubleField(default=now)
    expires_at = peewee.DoubleField()
    used_at = peewee.DoubleField(null=True)


class Grant(BaseModel):
    """The right to submit tasks of a type on a queue, held by a user or by a group.

    Exactly one of ``user`` and ``group`` is set; a group's grant reaches every effective
    member (nested groups included, ``control.registry.membership``). ``task_type`` and
    ``queue`` are a name or ``*``. ``targets`` is how far a submission may reach: ``single``
    (one run on one node: any node serving the queue, or a named one), ``region`` (also a
    broadcast to a region) or ``all`` (also a broadcast to every node). Deleting the user
    or group deletes its grants. The check is ``control.farm.policy``.
    """

    user = peewee.ForeignKeyField(User, null=True, on_delete="CASCADE", backref="grants")
    group = peewee.ForeignKeyField(Group, null=True, on_delete="CASCADE", backref="grants")
    task_type = peewee.CharField(max_length=64, default=ANY)
    queue = peewee.CharField(max_length=100, default=ANY)
    targets = peewee.CharField(max_length=10, default="single")
    created_at = peewee.DoubleField(default=now)

    class Meta:
        table_name = "task_grant"  # GRANT is a reserved word in SQL
        # One grant per holder, type and queue (NULLs differ, so each index binds one kind of holder).
        indexes = ((("user", "task_type", "queue"), True), (("group", "task_type", "queue"), True))


class DispatcherHealth(BaseModel):
    """Each dispatcher's rounds, written after every round and read by ``GET /metrics``.

    Histograms are kept as cumulative bucket counts (``buckets``: upper bound -> count), so
    any API worker can expose them from the database without talking to the dispatcher.
    """

    ident = peewee.CharField(max_length=200, unique=True)
    started_at = peewee.DoubleField(default=now)
    last_round_at = peewee.DoubleField(default=now)
    rounds = peewee.BigIntegerField(default=0)
    errors = peewee.BigIntegerField(default=0)
    duration = JSONField(default=dict)  # {"buckets": {le: n}, "sum": s, "count": n}
    hosts = JSONField(default=dict)


class Housekeeping(BaseModel):
    """Named markers of background jobs: when the pruner last ran, how far the feed is pruned.

    The pruner claims its turn with a guarded UPDATE of ``last_run`` (one row, both
    databases), so two dispatchers never prune at the same time. Dispatchers hold their
    regions with rows ``dispatch-region/<region>/<ident>`` (``control.farm.regions``).
    """

    name = peewee.CharField(max_length=250, unique=True)
    last_run = peewee.DoubleField(default=0)
    value = peewee.BigIntegerField(default=0)


class Template(BaseModel):
    """A named task spec to launch again and again (``control.farm.templates``).

    ``spec`` is the submission schema's dict (``TaskCreate``, as the user gave it), so a field
    the schema gains later passes through unchanged. The owner is a user (``owner``) or a
    space (``space_id``, its roles decide), or neither: the administrator's. Every update
    writes a new ``TemplateVersion``; ``version`` is the current one.
    """

    name = peewee.CharField(max_length=100, unique=True)
    owner = peewee.IntegerField(null=True, index=True)
    space_id = peewee.IntegerField(null=True, index=True)
    version = peewee.IntegerField(default=1)
    spec = JSONField(default=dict)
    created_by = peewee.CharField(max_length=200, default="system")
    created_at = peewee.DoubleField(default=now)
    updated_at = peewee.DoubleField(default=now)


class TemplateVersion(BaseModel):
    """One version of a template as it was saved; old ones stay readable."""

    template = peewee.ForeignKeyField(Template, backref="versions", on_delete="CASCADE")
    version = peewee.IntegerField()
    name = peewee.CharField(max_length=100)
    spec = JSONField(default=dict)
    created_by = peewee.CharField(max_length=200, default="system")
    created_at = peewee.DoubleField(default=now)

    class Meta:
        indexes = ((("template", "version"), True),)


class Schedule(BaseModel):
    """When a template is launched by itself: a cron expression or an interval (``control.farm.schedules``).

    ``next_run`` is the due time the dispatchers fire; the one whose guarded UPDATE moves it
    on (compare-and-set on its old value) launches, so each due time fires once. ``owner``
    (None: the administrator) is whom the tasks are submitted as.
    """

    template = peewee.ForeignKeyField(Template, backref="schedules", on_delete="CASCADE")
    owner = peewee.IntegerField(null=True, index=True)
    cron = peewee.CharField(max_length=200, null=True)
    interval = peewee.IntegerField(null=True)
    timezone = peewee.CharField(max_length=64, default="UTC")
    enabled = peewee.BooleanField(default=True)
    skip_if_running = peewee.BooleanField(default=True)
    next_run = peewee.DoubleField(null=True, index=True)
    last_run = peewee.DoubleField(null=True)
    last_task = peewee.IntegerField(null=True)
    last_outcome = peewee.CharField(max_length=16, default="")  # launched | skipped | failed
    last_error = peewee.TextField(default="")
    created_at = peewee.DoubleField(default=now)


class TaskUpload(BaseModel):
    """Where a task's outputs go: the provider the dispatcher chose at its last launch
    (``control.farm.uploads``). Counting those of active tasks is a provider's upload load."""

    task = peewee.ForeignKeyField(Task, unique=True, on_delete="CASCADE")
    provider_id = peewee.IntegerField(index=True)
    chosen_at = peewee.DoubleField(default=now)


class TaskFile(BaseModel):
    """One output of a task, recorded by the node's signed callback as its upload lands."""

    task = peewee.ForeignKeyField(Task, backref="files", on_delete="CASCADE")
    attempt = peewee.IntegerField()
    name = peewee.CharField(max_length=1024)  # relative to the task's directory
    size = peewee.BigIntegerField()
    sha256 = peewee.CharField(max_length=64)
    provider_id = peewee.IntegerField(null=True)  # null once the provider is deleted
    provider_name = peewee.CharField(max_length=100)
    space_id = peewee.IntegerField()
    path = peewee.CharField(max_length=1100)  # in the space: task-<id>/<name>
    created_at = peewee.DoubleField(default=now)

    class Meta:
        indexes = ((("task", "name"), True),)


TRANSFER_KINDS = ("replicate", "migrate", "evict")
TRANSFER_STATES = ("scheduled", "enqueued", "active", "completed", "failed", "cancelled")


class Transfer(BaseModel):
    """A copy (replicate), move (migrate) or removal (evict) of a path of a space between two providers.

    It runs as a farm task of type ``transfer`` (``task``; a rerun points it at a new one), and its
    state is the task's (``control.farm.transfers.state_of``). The counters are the running
    program's signed reports.
    """

    space_id = peewee.IntegerField(index=True)
    path = peewee.CharField(max_length=1024)  # in the space, "" for all of it
    kind = peewee.CharField(max_length=16)
    source_id = peewee.IntegerField()
    target_id = peewee.IntegerField()
    task = peewee.ForeignKeyField(Task, null=True, on_delete="SET NULL")
    owner = peewee.IntegerField(null=True)  # who asked (None: the administrator)
    bytes_total = peewee.BigIntegerField(null=True)
    bytes_done = peewee.BigIntegerField(default=0)
    files_total = peewee.BigIntegerField(null=True)
    files_done = peewee.BigIntegerField(default=0)
    runs = peewee.IntegerField(default=1)
    created_at = peewee.DoubleField(default=now)
    updated_at = peewee.DoubleField(default=now)


# TaskUpload and TaskFile are created by migration 0033, Transfer by 0034 (not 0002's list, so its tables
# stay as they were).
FARM_MODELS = [Node, Task, TaskEvent, TaskLog, Nonce, NodeJoinToken, Grant, DispatcherHealth, Housekeeping,
               Template, TemplateVersion, Schedule]
