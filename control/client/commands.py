"""The user-facing ``zonefarm`` commands: login, tasks, templates, schedules, nodes, spaces, groups and the change feed.

They talk to the API over HTTP only (``control.client.api``), so they run on any
machine that can reach the zone, with nothing of the server installed but this package.
``control.cli`` hands these commands to ``cli`` below and everything else (``api``,
``dispatcher``, ``node agent`` ...) to its argparse parser.

Exit codes: 0 ok, 1 the task failed (``task logs -f``: the task's own exit code; ``space
support --token-stdin``: the token was for another space than the one named), 2 a
usage error (including "not logged in"), 3 the API refused or could not be reached;
the API's message goes to stderr. Every read command takes ``--json`` and then prints
the API's JSON unchanged (one object per line for the following forms).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from control.client import credentials
from control.client.api import (
    ApiFailure,
    Client,
    SetupError,
    connect,
    error_message,
    new_session,
    normalise_url,
    send,
    token_credentials,
)
from control.client.credentials import CredentialsError
from control.client.output import (
    block,
    clean,
    duration,
    emit_json,
    emit_json_line,
    note,
    short_time,
    size,
    table,
)
from control.client.watch import POLL, TERMINAL, Progress, elapsed, exit_status, follow_log, poll, wait_task

TASK_STATES = ("queued", "assigned", "running", "lost", *TERMINAL)
CHANGES_WAIT = 30  # seconds one long-poll of `changes -f` asks the API to hold
INTERRUPTED = 130  # what a shell reports for a command stopped with Ctrl-C


class Ctx:
    """Per-invocation state: the CA bundle and, made on first use, the API client."""

    def __init__(self, ca_file: str | None) -> None:
        self.ca_file = ca_file
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = connect(self.ca_file)
        return self._client


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")(f)


def paging(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--limit`` and ``--offset`` of a list command."""
    f = click.option("--offset", type=click.IntRange(0), default=0)(f)
    return click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)(f)


def _named_page(client: Client, path: str, name: str | None, limit: int, offset: int) -> dict[str, Any]:
    """One page of a list route that filters by ``?name=`` (a substring)."""
    query: dict[str, Any] = {"limit": limit, "offset": offset}
    if name:
        query["name"] = name
    return client.get(path, params=query)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_params(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """``k=v`` pairs; ``v`` is JSON when it parses as JSON (``argv='["echo","hi"]'``, ``n=3``), else a string."""
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", ctx, param)
        if key in params:
            raise click.BadParameter(f"{key!r} is given twice", ctx, param)
        try:
            params[key] = json.loads(raw, parse_constant=_reject_constant)
        except ValueError:
            params[key] = raw
    return params


def parse_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``k=v`` pairs taken as strings, as node labels are."""
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", ctx, param)
        labels[key.strip()] = value.strip()
    return labels


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(i?)b?|b?)\s*$", re.IGNORECASE)


def parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Bytes: ``1073741824``, ``1G`` / ``1GB`` (10^9) or ``1GiB`` (2^30); K, M, G, T, P."""
    if value is None:
        return None
    m = _SIZE.match(value)
    if m is None:
        raise click.BadParameter(f"{value!r}: expected bytes, or a number with K, M, G, T or P (KiB ... for 1024s)",
                                 ctx, param)
    number, unit, binary = m.group(1), (m.group(2) or "").lower(), m.group(3)
    power = "kmgtp".index(unit) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")
_DURATION_UNITS = (7 * 86400, 86400, 3600, 60, 1)


def parse_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Seconds: ``3600``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or a run of them (``1d12h``)."""
    if value is None:
        return None
    m = _DURATION.match(value.strip().lower().replace(" ", ""))
    if m is None or not any(m.groups()):
        raise click.BadParameter(f"{value!r}: expected seconds, or a duration such as 90m, 12h, 7d, 1d12h",
                                 ctx, param)
    return sum(int(n) * unit for n, unit in zip(m.groups(), _DURATION_UNITS, strict=True) if n)


def _exit(code: int) -> None:
    click.get_current_context().exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ca-file", envvar="ZONEFARM_CA_FILE", type=click.Path(exists=True, dir_okay=False, resolve_path=True),
              help="CA bundle to verify the API's TLS certificate with (env ZONEFARM_CA_FILE; default: the "
                   "system's CAs, or the one given at login).")
@click.pass_context
def cli(ctx: click.Context, ca_file: str | None) -> None:
    """zonefarm: the federation registry and task farm.

    Client commands (login, task, node ls, space, changes ...) talk to the API over HTTP
    with the login `zonefarm login URL` stored; ZONEFARM_URL and ZONEFARM_TOKEN override it
    for scripts. Exit codes: 0 ok, 1 task failed, 2 usage, 3 API error.

    [server] commands run the platform itself: `zonefarm [--config FILE] COMMAND`.
    """
    ctx.obj = Ctx(ca_file)


# ---------------------------------------------------------------------------- login


def _read_secret(prompt: str, *, from_stdin: bool = False, token: bool = False) -> str:
    """Hidden prompt on a terminal; otherwise (or with ``from_stdin``) the first line of stdin.

    Secrets never come from the command line, where ``ps`` and the shell's history show
    them. A token has no blanks, so the ones a copy and paste adds are dropped; a password
    is taken as typed.
    """
    if not from_stdin and sys.stdin is not None and sys.stdin.isatty():
        secret = click.prompt(prompt, hide_input=True, err=True)
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        secret = line.rstrip("\r\n")
        if not line:
            raise click.UsageError(f"no {prompt.lower()}: stdin is empty")
    if token:
        secret = secret.strip()
        if not secret:
            raise click.UsageError(f"no {prompt.lower()}: the line is empty")
    return secret


@cli.command()
@click.argument("url")
@click.option("-u", "--username", help="Account name (prompted for when not given).")
@pass_ctx
def login(obj: Ctx, url: str, username: str | None) -> None:
    """Log in to the API at URL and store the tokens.

    The password is prompted for; when stdin is not a terminal it is read from stdin's
    first line (the second, when the first is the username for lack of --username).
    The access and refresh tokens go to $XDG_CONFIG_HOME/zonefarm/credentials
    (~/.config/zonefarm/credentials), mode 0600; an expired access token is renewed with
    the refresh token automatically.
    """
    base = normalise_url(url)
    if not username:
        username = click.prompt("Username", err=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
        if not username:
            raise click.UsageError("no username: give --username")
    password = _read_secret("Password")
    resp = send(new_session(obj.ca_file), "POST", base + "/auth/token",
                data={"grant_type": "password", "username": username, "password": password})
    if resp.status_code != 200:
        raise ApiFailure(error_message(resp), resp.status_code)
    creds = token_credentials(base, resp, username, obj.ca_file)
    where = credentials.save(creds)
    ttl = f"valid for {duration(creds.expires_at - time.time())}" if creds.expires_at else "without expiry"
    renew = "renewed automatically" if creds.refresh_token else "log in again when it expires"
    click.echo(f"Logged in to {base} as {clean(username)} (token {ttl}, {renew}; stored in {where})")


@cli.command()
@pass_ctx
def logout(obj: Ctx) -> None:
    """Revoke the stored access token and forget the login."""
    try:
        stored = credentials.load()
    except CredentialsError as exc:
        raise SetupError(str(exc)) from None
    if stored is None:
        note("not logged in")
        return
    client = Client(stored.url, stored.token, ca_file=obj.ca_file or stored.ca_file)
    try:
        client.delete("/auth/token")
    except ApiFailure as exc:
        if exc.status != 401:  # an expired token needs no revoking; anything else is worth saying
            note(f"warning: the API did not revoke the token: {exc.message}")
    credentials.delete()
    click.echo(f"Logged out of {stored.url}")


@cli.command()
@json_option
@pass_ctx
def whoami(obj: Ctx, as_json: bool) -> None:
    """Show the API and account in use, and check the token works."""
    client = obj.client
    client.get("/tasks", params={"limit": 1})  # proves the token (and refreshes it if need be)
    stored = client.stored
    info = {"url": client.url, "username": stored.username if stored else None,
            "source": "credentials file" if stored else "ZONEFARM_TOKEN",
            "expires_at": stored.expires_at if stored else None,
            "refresh_token": bool(stored and stored.refresh_token)}
    if as_json:
        emit_json(info)
        return
    expires = (f"in {duration(stored.expires_at - time.time())}" if stored and stored.expires_at else "-")
    block([("url", info["url"]), ("username", info["username"]), ("token from", info["source"]),
           ("expires", expires), ("refresh token", info["refresh_token"])])


# ---------------------------------------------------------------------------- tasks


@cli.group()
def task() -> None:
    """Submit, list, explain, follow and cancel tasks."""


def _target(t: dict[str, Any]) -> str:
    target = t.get("target") or {}
    kind, value = target.get("kind"), target.get("value")
    labels = ",".join(f"{k}={v}" for k, v in sorted((target.get("labels") or {}).items()))
    return (f"{kind}:{value}" if value else str(kind)) + (f" [{labels}]" if labels else "")


def _resolve(client: Client, collection: str, ref: str, what: str) -> int:
    """An id, or the one item of ``collection`` with exactly this name."""
    if ref.isdigit():
        return int(ref)
    page = client.get(collection, params={"name": ref, "limit": 500})
    matches = [item["id"] for item in page["items"] if item.get("name") == ref]
    if len(matches) != 1:
        raise ApiFailure(f"no {what} named {clean(ref)!r} is visible to you" if not matches
                         else f"{len(matches)} {what}s are named {clean(ref)!r}: give the id")
    return matches[0]


def _summary(t: dict[str, Any]) -> str:
    where = f" on {t['node'] or t['last_node']}" if (t.get("node") or t.get("last_node")) else ""
    text = f"task {t['id']} {t['state']}{where} after {duration(elapsed(t))}"
    if t["state"] != "succeeded" and t.get("reason"):
        text += f": {t['reason']}"
    return clean(text)


SPEC_OPTIONS = (
    click.option("-p", "--param", "params", multiple=True, callback=parse_params, metavar="KEY=VALUE",
                 help="A parameter; VALUE is parsed as JSON when it is JSON (argv='[\"echo\",\"hi\"]', n=3, "
                      "flag=true), else taken as a string. Repeatable."),
    click.option("--queue", help="Queue (default: the API's, 'default')."),
    click.option("--node", help="Run on this node only."),
    click.option("--region", help="Run on every node of this region (a broadcast)."),
    click.option("--all", "everywhere", is_flag=True, help="Run on every node (a broadcast)."),
    click.option("--label", "labels", multiple=True, callback=parse_labels, metavar="KEY=VALUE",
                 help="Only nodes carrying this label (gpu=a100); with --region or --all it narrows the "
                      "broadcast. Repeatable."),
    click.option("--cpu", type=click.FloatRange(0), help="Cores the task reserves on its node (0.5)."),
    click.option("--memory", callback=parse_size, help="Memory the task reserves on its node: bytes, 8GiB."),
    click.option("--disk", callback=parse_size, help="Disk the task reserves on its node: bytes, 10GiB."),
    click.option("--resource", "named", multiple=True, callback=parse_params, metavar="NAME=AMOUNT",
                 help="A named resource a node reports, reserved on its node (gpu=1). Repeatable."),
    click.option("--priority", type=click.IntRange(-1000, 1000), help="Higher runs first (default 0)."),
    click.option("--timeout", type=click.IntRange(1), help="Seconds per attempt (default 3600)."),
    click.option("--max-attempts", type=click.IntRange(1, 100), help="Attempts before giving up (default 3)."),
)


def spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a task spec, shared by `task submit` and `template create` (which saves one)."""
    for option in reversed(SPEC_OPTIONS):
        f = option(f)
    return f


def task_spec(task_type: str, params: dict[str, Any], queue: str | None, node: str | None, region: str | None,
              everywhere: bool, labels: dict[str, str], cpu: float | None, memory: int | None, disk: int | None,
              named: dict[str, Any], priority: int | None, timeout: int | None,
              max_attempts: int | None) -> dict[str, Any]:
    """The body of ``POST /tasks`` (and a template's ``spec``) the spec options describe."""
    targets = [name for name, given in (("--node", node), ("--region", region), ("--all", everywhere)) if given]
    if len(targets) > 1:
        raise click.UsageError(f"give at most one of --node, --region and --all (got {', '.join(targets)})")
    body: dict[str, Any] = {"name": task_type, "params": params}
    if node:
        body["target"] = {"node": node}
    elif region:
        body["target"] = {"region": region}
    elif everywhere:
        body["target"] = {"all": True}
    if labels:
        body["target"] = {**body.get("target", {}), "labels": labels}
    resources = {k: v for k, v in (("cpu", cpu), ("memory", memory), ("disk", disk)) if v is not None}
    if resources or named:
        body["resources"] = {**resources, **named}
    for key, value in (("queue", queue), ("priority", priority), ("timeout", timeout),
                       ("max_attempts", max_attempts)):
        if value is not None:
            body[key] = value
    return body


@task.command("submit")
@click.argument("task_type", metavar="TYPE")
@spec_options
@click.option("--space", help="Space (id or name) the task works for.")
@click.option("--wait", is_flag=True, help="Follow the task until it ends; exit 1 if it does not succeed.")
@json_option
@pass_ctx
def task_submit(obj: Ctx, task_type: str, space: str | None, wait: bool, as_json: bool, **spec: Any) -> None:
    """Submit a task of TYPE (`zonefarm task types` lists them)."""
    body = task_spec(task_type, **spec)
    client = obj.client
    if space is not None:
        body["space"] = _resolve(client, "/spaces", space, "space")
    created = client.post("/tasks", json=body)
    if not wait:
        if as_json:
            emit_json(created)
        else:
            click.echo(f"task {created['id']} submitted ({created['state']})")
            if created.get("why"):
                note(clean(f"not starting yet: {created['why']}"))
        return
    if not as_json:
        click.echo(f"task {created['id']} submitted")
    _follow(client, created["id"], as_json)


def _follow(client: Client, task_id: int, as_json: bool) -> None:
    """Follow a task to its end, print how it ended and exit 0 (succeeded) or 1; Ctrl-C leaves it running."""
    try:
        final = wait_task(client, task_id, Progress())
    except KeyboardInterrupt:
        note(f"\nstopped waiting; task {task_id} goes on (zonefarm task cancel {task_id} stops it)")
        _exit(INTERRUPTED)
        return
    if as_json:
        emit_json(final)
    else:
        click.echo(_summary(final))
    _exit(0 if final["state"] == "succeeded" else 1)


@task.command("ls")
@click.option("--state", type=click.Choice(TASK_STATES), help="Only tasks in this state.")
@click.option("--node", help="Only tasks assigned to (or last run on) this node.")
@click.option("--name", "task_type", metavar="TYPE", help="Only tasks of this type.")
@click.option("--queue", help="Only tasks of this queue.")
@click.option("--space", help="Only tasks of this space (id or name).")
@click.option("--parent", type=click.IntRange(1), help="Only the child runs of this broadcast.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@json_option
@pass_ctx
def task_ls(obj: Ctx, state: str | None, node: str | None, task_type: str | None, queue: str | None,
            space: str | None, parent: int | None, limit: int, offset: int, as_json: bool) -> None:
    """List the tasks you can see, newest first."""
    client = obj.client
    query: dict[str, Any] = {"limit": limit, "offset": offset}
    for key, value in (("state", state), ("node", node), ("name", task_type), ("queue", queue),
                       ("parent", parent)):
        if value is not None:
            query[key] = value
    if space is not None:
        query["space"] = _resolve(client, "/spaces", space, "space")
    _show_page(client.get("/tasks", params=query), as_json,
               ("ID", "TYPE", "STATE", "PROGRESS", "NODE", "QUEUE", "TARGET", "CREATED"),
               lambda t: (t["id"], t["name"], t["state"], f"{t['progress']:.0f}%", t["node"] or t["last_node"],
                          t["queue"], _target(t), short_time(t["created_at"])))


def _more(page: dict[str, Any]) -> None:
    shown = len(page["items"])
    if page["offset"] + shown < page["total"]:
        note(f"({shown} of {page['total']} shown; more with --offset {page['offset'] + shown})")


def _show_page(page: dict[str, Any], as_json: bool, columns: tuple[str, ...],
               row: Callable[[dict[str, Any]], tuple[Any, ...]]) -> None:
    """A list command's answer: the page as JSON, or its items as a table and where the rest is."""
    if as_json:
        emit_json(page)
        return
    table(columns, [row(item) for item in page["items"]])
    _more(page)


def _task_command(name: str, *options: Callable[..., Any]) -> Callable[[Callable[..., Any]], click.Command]:
    """``zonefarm task NAME ID``: a command about one task, with its ``options``, --json and the client."""
    def declare(f: Callable[..., Any]) -> click.Command:
        f = json_option(pass_ctx(f))
        for option in reversed(options):
            f = option(f)
        return task.command(name)(click.argument("task_id", type=click.IntRange(1), metavar="ID")(f))
    return declare


@_task_command("show")
def task_show(obj: Ctx, task_id: int, as_json: bool) -> None:
    """Show a task: state, placement, parameters, timing, result."""
    t = obj.client.get(f"/tasks/{task_id}")
    if as_json:
        emit_json(t)
        return
    pairs: list[tuple[str, Any]] = [
        ("id", t["id"]), ("type", t["name"]), ("state", t["state"] + (" (cancel requested)"
                                                                     if t["cancel_requested"] else "")),
        ("progress", f"{t['progress']:.0f}%"), ("attempt", f"{t['attempt']} of {t['max_attempts']}"),
        ("node", t["node"] or t["last_node"]), ("queue", t["queue"]), ("target", _target(t)),
        ("resources", t.get("resources") or None),
        ("space", t["space"]), ("priority", t["priority"]), ("timeout", f"{t['timeout']} s"),
        ("exit code", t["exit_code"]), ("reason", t["reason"] or None)]
    if t.get("why"):
        pairs.append(("why", t["why"]))
    pairs += [("created", short_time(t["created_at"])), ("started", short_time(t["started_at"])),
              ("finished", short_time(t["finished_at"])),
              ("ran for", duration(elapsed(t, "started_at")) if t["started_at"] else "-"),
              ("params", t["params"]), ("outputs", t["outputs"])]
    if t.get("parent"):
        pairs.append(("broadcast", t["parent"]))
    block(pairs)
    if t.get("children"):
        click.echo("")
        table(("RUN", "NODE", "STATE"), [(c["id"], c["node"], c["state"]) for c in t["children"]])


@_task_command("why")
def task_why(obj: Ctx, task_id: int, as_json: bool) -> None:
    """Say why a task is where it is: a queued one's blockers, else its last transition."""
    client = obj.client
    t = client.get(f"/tasks/{task_id}")
    events = client.get(f"/tasks/{task_id}/events")
    if as_json:
        emit_json({"id": t["id"], "state": t["state"], "why": t.get("why"), "blockers": t.get("blockers", []),
                   "reason": t["reason"], "events": events})
        return
    if t["state"] == "queued":
        click.echo(clean(f"task {t['id']} is queued: {t.get('why') or 'waiting for the next dispatch round'}"))
        for b in t.get("blockers", []):
            click.echo(clean(f"  - {b['code']}: {b['message']}"))
    else:
        click.echo(clean(f"task {t['id']} is {t['state']}: {t['reason'] or '-'}"))
    if events:
        click.echo("")
        table(("TIME", "FROM", "TO", "REASON"),
              [(short_time(e["ts"]), e["from_state"], e["to_state"], e["reason"]) for e in events[-10:]])


@_task_command("logs", click.option("-f", "--follow", is_flag=True,
                                    help="Keep printing until the task ends; exit with its exit code."))
def task_logs(obj: Ctx, task_id: int, follow: bool, as_json: bool) -> None:
    """Print a task's output (stdout and stderr, as the node captured it)."""
    client = obj.client
    t = client.get(f"/tasks/{task_id}")
    if t.get("children"):
        runs = ", ".join(str(c["id"]) for c in t["children"])
        raise click.UsageError(f"task {task_id} is a broadcast with one run per node; show one of them "
                               f"(tasks {runs})")
    out = click.get_text_stream("stdout")
    try:
        final = follow_log(client, task_id, Progress() if follow and not as_json else None, out,
                           follow=follow, json_lines=as_json)
    except KeyboardInterrupt:
        note(f"\nstopped following task {task_id}")
        _exit(INTERRUPTED)
        return
    if final is not None:
        _exit(exit_status(final))


@_task_command("cancel")
def task_cancel(obj: Ctx, task_id: int, as_json: bool) -> None:
    """Cancel a task: a queued one at once, a running one is killed on its node."""
    t = obj.client.post(f"/tasks/{task_id}/cancel")
    if as_json:
        emit_json(t)
    elif t["state"] == "cancelled":
        click.echo(f"task {task_id} cancelled")
    else:
        click.echo(clean(f"task {task_id} is {t['state']}: cancel requested, it is stopped on "
                         f"{t['node'] or 'its node'} shortly"))


@task.command("types")
@json_option
@pass_ctx
def task_types(obj: Ctx, as_json: bool) -> None:
    """List the task types and the parameters each takes."""
    types = obj.client.get("/task-types")
    if as_json:
        emit_json(types)
        return
    rows = []
    for t in types:
        schema = t.get("params_schema") or {}
        required = set(schema.get("required") or [])
        names = [p + ("" if p in required else "?") for p in (schema.get("properties") or {})]
        rows.append((t["name"], " ".join(names)))
    table(("TYPE", "PARAMS (? = optional)"), rows)


# ---------------------------------------------------------------------------- templates and schedules


@cli.group()
def template() -> None:
    """Task templates: list, show, launch."""


@template.command("ls")
@click.option("--name", help="Only templates whose name holds this.")
@paging
@json_option
@pass_ctx
def template_ls(obj: Ctx, name: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List the templates you can see (your own and your spaces')."""
    page = _named_page(obj.client, "/templates", name, limit, offset)
    if as_json:
        emit_json(page)
        return
    table(("ID", "NAME", "VERSION", "TYPE", "OWNER", "UPDATED"),
          [(t["id"], t["name"], t["version"], t["spec"].get("name"),
            f"space {t['space']}" if t["space"] else (f"user {t['owner']}" if t["owner"] else "root"),
            short_time(t["updated_at"])) for t in page["items"]])
    _more(page)


@template.command("show")
@click.argument("ref", metavar="TEMPLATE")
@click.option("--version", "version", type=click.IntRange(1), help="An older version (default: the current one).")
@json_option
@pass_ctx
def template_show(obj: Ctx, ref: str, version: int | None, as_json: bool) -> None:
    """Show a template (id or name): its owner, version and task spec."""
    client = obj.client
    template_id = _resolve(client, "/templates", ref, "template")
    t = client.get(f"/templates/{template_id}")
    shown = client.get(f"/templates/{template_id}/versions/{version}") if version else t
    if as_json:
        emit_json(shown)
        return
    block([("id", template_id), ("name", shown["name"]), ("version", f"{shown['version']} of {t['version']}"),
           ("owner", f"space {t['space']}" if t["space"] else (f"user {t['owner']}" if t["owner"] else "root")),
           ("saved by", shown["created_by"]), ("saved", short_time(shown.get("updated_at") or shown["created_at"])),
           ("spec", shown["spec"])])


@template.command("launch")
@click.argument("ref", metavar="TEMPLATE")
@click.option("-p", "--param", "params", multiple=True, callback=parse_params, metavar="KEY=VALUE",
              help="Override a parameter (merged into the template's); VALUE as for `task submit`. Repeatable.")
@click.option("--queue", help="Override the queue.")
@click.option("--priority", type=click.IntRange(-1000, 1000), help="Override the priority.")
@click.option("--timeout", type=click.IntRange(1), help="Override the seconds per attempt.")
@click.option("--wait", is_flag=True, help="Follow the task until it ends; exit 1 if it does not succeed.")
@json_option
@pass_ctx
def template_launch(obj: Ctx, ref: str, params: dict[str, Any], queue: str | None, priority: int | None,
                    timeout: int | None, wait: bool, as_json: bool) -> None:
    """Launch a template (id or name) with optional overrides, as a task of yours."""
    client = obj.client
    body: dict[str, Any] = {"params": params} if params else {}
    for key, value in (("queue", queue), ("priority", priority), ("timeout", timeout)):
        if value is not None:
            body[key] = value
    created = client.post(f"/templates/{_resolve(client, '/templates', ref, 'template')}/launch", json=body)
    if not wait:
        if as_json:
            emit_json(created)
        else:
            click.echo(f"task {created['id']} launched from template {created['template']} "
                       f"v{created['template_version']} ({created['state']})")
        return
    _follow(client, created["id"], as_json)


@template.command("create")
@click.argument("name")
@click.argument("task_type", metavar="TYPE")
@spec_options
@click.option("--space", help="Owned by this space (id or name; you must be one of its admins): its members see "
                               "and launch it. Default: owned by you.")
@json_option
@pass_ctx
def template_create(obj: Ctx, name: str, task_type: str, space: str | None, as_json: bool, **spec: Any) -> None:
    """Save a task of TYPE as template NAME (version 1); the options are those of `task submit`."""
    client = obj.client
    body: dict[str, Any] = {"name": name, "spec": task_spec(task_type, **spec)}
    if space is not None:
        body["space"] = _resolve(client, "/spaces", space, "space")
    made = client.post("/templates", json=body)
    emit_json(made) if as_json else click.echo(clean(f"template {made['id']} {made['name']} v{made['version']} "
                                                     "created"))


@cli.group()
def schedule() -> None:
    """Schedules of templates: list, create, pause, resume, remove."""


@schedule.command("ls")
@click.option("--template", "ref", metavar="TEMPLATE", help="Only the schedules of this template (id or name).")
@paging
@json_option
@pass_ctx
def schedule_ls(obj: Ctx, ref: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List the schedules you can see: when each fires next, and what its last firing did."""
    client = obj.client
    query: dict[str, Any] = {"limit": limit, "offset": offset}
    if ref is not None:
        query["template"] = _resolve(client, "/templates", ref, "template")
    page = client.get("/schedules", params=query)
    if as_json:
        emit_json(page)
        return
    table(("ID", "TEMPLATE", "WHEN", "ENABLED", "NEXT RUN", "LAST RUN", "LAST"),
          [(s["id"], s["template"], f"{s['cron']} ({s['timezone']})" if s["cron"] else f"every {s['interval']} s",
            "yes" if s["enabled"] else "no", short_time(s["next_run"]), short_time(s["last_run"]),
            " ".join(str(v) for v in (s["last_outcome"], f"task {s['last_task']}" if s["last_task"] else "",
                                      s["last_error"]) if v) or "-") for s in page["items"]])
    _more(page)


@schedule.command("create")
@click.argument("ref", metavar="TEMPLATE")
@click.option("--cron", metavar="EXPR", help="A 5-field cron expression, e.g. '0 3 * * *', in --timezone.")
@click.option("--every", callback=parse_duration, metavar="DURATION",
              help="Or every this long: seconds, or 90m, 12h, 1d.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA name of the cron's zone (Europe/Paris).")
@click.option("--paused", is_flag=True, help="Create it paused (`schedule resume` starts it).")
@click.option("--allow-overlap", is_flag=True,
              help="Fire even while the template's last task is still queued or running (default: skip).")
@json_option
@pass_ctx
def schedule_create(obj: Ctx, ref: str, cron: str | None, every: int | None, timezone: str, paused: bool,
                    allow_overlap: bool, as_json: bool) -> None:
    """Launch TEMPLATE (id or name) on a cron expression or an interval, as you."""
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron and --every")
    client = obj.client
    body: dict[str, Any] = {"template": _resolve(client, "/templates", ref, "template"), "timezone": timezone,
                            "enabled": not paused, "skip_if_running": not allow_overlap}
    body.update({"cron": cron} if cron is not None else {"interval": every})
    made = client.post("/schedules", json=body)
    emit_json(made) if as_json else click.echo(
        f"schedule {made['id']} created; next run {short_time(made['next_run'])}" if made["enabled"]
        else f"schedule {made['id']} created, paused")


def _schedule_command(name: str, help_text: str, change: dict[str, Any] | None) -> None:
    """``zonefarm schedule NAME ID``: PATCH ``change`` into the schedule, or delete it (``change`` None)."""
    @schedule.command(name, help=help_text)
    @click.argument("schedule_id", type=click.IntRange(1), metavar="ID")
    @json_option
    @pass_ctx
    def command(obj: Ctx, schedule_id: int, as_json: bool) -> None:
        if change is None:
            obj.client.delete(f"/schedules/{schedule_id}")
            emit_json({"id": schedule_id, "deleted": True}) if as_json else click.echo(
                f"schedule {schedule_id} removed")
            return
        s = obj.client.patch(f"/schedules/{schedule_id}", json=change)
        emit_json(s) if as_json else click.echo(
            f"schedule {s['id']} " + (f"resumed; next run {short_time(s['next_run'])}" if s["enabled"] else "paused"))


_schedule_command("pause", "Stop a schedule firing (its next run is dropped) until `schedule resume`.",
                  {"enabled": False})
_schedule_command("resume", "Let a paused schedule fire again, from its next due time.", {"enabled": True})
_schedule_command("rm", "Delete a schedule; the tasks it made stay.", None)


# ---------------------------------------------------------------------------- webhooks

WEBHOOK_EVENTS = ("task.succeeded", "task.failed", "task.timed_out", "task.cancelled", "node.lost",
                  "schedule.failed")
DELIVERY_STATES = ("pending", "delivered", "failed")


@cli.group()
def webhook() -> None:
    """Webhooks: events POSTed to a URL of yours, signed (docs/webhooks.md)."""


@webhook.command("ls")
@paging
@json_option
@pass_ctx
def webhook_ls(obj: Ctx, limit: int, offset: int, as_json: bool) -> None:
    """List your webhooks (the administrator: all of them); never their secrets."""
    _show_page(obj.client.get("/webhooks", params={"limit": limit, "offset": offset}), as_json,
               ("ID", "URL", "EVENTS", "SCOPE", "ENABLED", "CREATED"),
               lambda h: (h["id"], h["url"], ",".join(h["events"]),
                          h["scope"] + (f":{h['scope_id']}" if h["scope_id"] else ""), h["enabled"],
                          short_time(h["created_at"])))


@webhook.command("create")
@click.argument("url")
@click.option("--event", "events", multiple=True, required=True, type=click.Choice(WEBHOOK_EVENTS),
              help="An event to deliver. Repeatable.")
@click.option("--space", help="Only the tasks of this space (id or name; you must be a member).")
@click.option("--template", "template_ref", metavar="TEMPLATE", help="Only tasks launched from this template.")
@click.option("--all", "everything", is_flag=True, help="Every task (administrator only).")
@click.option("--description", default="", help="A note for yourself.")
@json_option
@pass_ctx
def webhook_create(obj: Ctx, url: str, events: tuple[str, ...], space: str | None, template_ref: str | None,
                   everything: bool, description: str, as_json: bool) -> None:
    """Make a webhook POSTing EVENTS to URL; print its signing secret, shown this once.

    The secret alone goes to stdout (so it can be piped into a file or a vault), the
    webhook's id to stderr. Default scope: your own tasks.
    """
    scopes = [name for name, given in (("--space", space), ("--template", template_ref), ("--all", everything))
              if given]
    if len(scopes) > 1:
        raise click.UsageError(f"give at most one of --space, --template and --all (got {', '.join(scopes)})")
    client = obj.client
    body: dict[str, Any] = {"url": url, "events": list(dict.fromkeys(events)), "description": description}
    if space is not None:
        body.update(scope="space", scope_id=_resolve(client, "/spaces", space, "space"))
    elif template_ref is not None:
        body.update(scope="template", scope_id=_resolve(client, "/templates", template_ref, "template"))
    elif everything:
        body["scope"] = "all"
    made = _issue_secret(client, "/webhooks", body, as_json, "secret")
    if made is not None:
        note(clean(f"webhook {made['id']} created for {made['url']}; the secret above is shown this once"))


@webhook.command("rm")
@click.argument("hook_id", type=click.IntRange(1), metavar="ID")
@pass_ctx
def webhook_rm(obj: Ctx, hook_id: int) -> None:
    """Delete a webhook and its delivery log."""
    obj.client.delete(f"/webhooks/{hook_id}")
    click.echo(f"webhook {hook_id} removed")


def _delivery_row(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d["id"], d["event"], d["status"], d["attempts"], d["last_status_code"], short_time(d["created_at"]),
            short_time(d["delivered_at"] or d["last_attempt_at"]), d["last_error"] or "-")


DELIVERY_COLUMNS = ("ID", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "CREATED", "LAST TRY", "LAST ERROR")


@webhook.command("deliveries")
@click.argument("hook_id", type=click.IntRange(1), metavar="ID")
@click.option("--status", type=click.Choice(DELIVERY_STATES), help="Only deliveries in this state.")
@paging
@json_option
@pass_ctx
def webhook_deliveries(obj: Ctx, hook_id: int, status: str | None, limit: int, offset: int, as_json: bool) -> None:
    """A webhook's delivery log, newest first: status, attempts, the receiver's last answer or error."""
    query: dict[str, Any] = {"limit": limit, "offset": offset}
    if status is not None:
        query["status"] = status
    _show_page(obj.client.get(f"/webhooks/{hook_id}/deliveries", params=query), as_json, DELIVERY_COLUMNS,
               _delivery_row)


@webhook.command("test")
@click.argument("hook_id", type=click.IntRange(1), metavar="ID")
@json_option
@pass_ctx
def webhook_test(obj: Ctx, hook_id: int, as_json: bool) -> None:
    """Queue a test delivery (event webhook.test); `webhook deliveries ID` shows how it went."""
    d = obj.client.post(f"/webhooks/{hook_id}/test")
    emit_json(d) if as_json else click.echo(f"test delivery {d['id']} queued ({d['status']}); "
                                            f"see zonefarm webhook deliveries {hook_id}")


# ---------------------------------------------------------------------------- nodes


@cli.group()
def node() -> None:
    """Worker nodes: list, show, cordon, drain (and the worker side's agent)."""


def _flags(n: dict[str, Any]) -> str:
    flags = [f for f in ("cordoned", "draining", "drained") if n.get(f)]
    return ",".join(flags) or "-"


@node.command("ls")
@click.option("--state", type=click.Choice(("online", "lost")))
@click.option("--region")
@click.option("--queue", help="Nodes serving this queue.")
@click.option("--cordoned/--uncordoned", default=None, help="Only cordoned (or draining) nodes, or only the others.")
@json_option
@pass_ctx
def node_ls(obj: Ctx, state: str | None, region: str | None, queue: str | None, cordoned: bool | None,
            as_json: bool) -> None:
    """List nodes with their state and load."""
    query: dict[str, Any] = {"limit": 1000}
    for key, value in (("state", state), ("region", region), ("queue", queue)):
        if value is not None:
            query[key] = value
    if cordoned is not None:
        query["cordoned"] = "true" if cordoned else "false"
    _show_page(obj.client.get("/nodes", params=query), as_json,
               ("NAME", "STATE", "REGION", "QUEUES", "RUNNING", "FLAGS", "LAST SEEN"),
               lambda n: (n["name"], n["state"], n["region"], ",".join(n["queues"]),
                          f"{n['running']}/{n['concurrency']}", _flags(n), f"{n['last_seen_age']:.0f}s ago"))


def _node_block(n: dict[str, Any]) -> None:
    block([("name", n["name"]), ("state", n["state"]), ("flags", _flags(n)), ("region", n["region"]),
           ("queues", ",".join(n["queues"])), ("running", f"{n['running']} of {n['concurrency']}"),
           ("host", f"{n['hostname']} (pid {n['pid']})"),
           ("ansible", f"{n['ansible_user']}@{n['ansible_host']}:{n['ansible_port']} ({n['ansible_connection']})"),
           ("labels", n["labels"]), ("resources", n["resources"]), ("registered", short_time(n["registered_at"])),
           ("last seen", f"{short_time(n['last_seen'])} ({n['last_seen_age']:.0f}s ago)")])


@node.command("show")
@click.argument("name")
@json_option
@pass_ctx
def node_show(obj: Ctx, name: str, as_json: bool) -> None:
    """Show a node."""
    n = obj.client.get(f"/nodes/{_segment(name)}")
    emit_json(n) if as_json else _node_block(n)


def _segment(name: str) -> str:
    """A node name as one path segment: a name is data, never a path."""
    from urllib.parse import quote

    return quote(name, safe="")


def _node_action(action: str, done: str) -> Callable[..., None]:
    @json_option
    @click.argument("name")
    @pass_ctx
    def command(obj: Ctx, name: str, as_json: bool) -> None:
        n = obj.client.post(f"/nodes/{_segment(name)}/{action}")
        emit_json(n) if as_json else click.echo(clean(f"node {n['name']} {done}"))

    return command


node.command("cordon", help="Cordon a node: it takes no new task (administrator).")(
    _node_action("cordon", "cordoned: it takes no new task"))
node.command("uncordon", help="Uncordon a node, ending a drain too (administrator).")(
    _node_action("uncordon", "uncordoned"))


@node.command("drain")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Return once nothing runs there any more.")
@json_option
@pass_ctx
def node_drain(obj: Ctx, name: str, wait: bool, as_json: bool) -> None:
    """Drain a node: cordon it and let its tasks finish (administrator)."""
    client = obj.client
    n = client.post(f"/nodes/{_segment(name)}/drain")
    last = None
    try:
        while wait and not n["drained"]:
            if n["running"] != last:
                last = n["running"]
                note(clean(f"node {n['name']} draining: {n['running']} task(s) still running"))
            time.sleep(POLL * 2)
            n = client.get(f"/nodes/{_segment(name)}")
    except KeyboardInterrupt:
        note(f"\nstopped waiting; node {name} stays cordoned and draining")
        _exit(INTERRUPTED)
        return
    if as_json:
        emit_json(n)
    else:
        state = "drained: nothing runs there" if n["drained"] else f"draining: {n['running']} task(s) still running"
        click.echo(clean(f"node {n['name']} {state}"))


# ---------------------------------------------------------------------------- spaces


@cli.group()
def space() -> None:
    """Spaces: list, create, invite and join, and the providers supporting them."""


def _support_hint(space_ref: str, provider_ref: str) -> str:
    return (f"support takes the provider's consent: ask for it with `zonefarm space support-token "
            f"{space_ref} --provider {provider_ref} --size SIZE` and hand the token to the provider, who "
            f"redeems it with `zonefarm space support {space_ref} --token-stdin --provider {provider_ref}`; "
            "--size on an existing support resizes it, which only the provider (or the administrator) does")


def _matches(ref: str, ident: int, name: str) -> bool:
    return int(ref) == ident if ref.isdigit() else ref == name


@space.command("support")
@click.argument("space_ref", metavar="SPACE")
@click.argument("provider_ref", metavar="[PROVIDER]", required=False)
@click.option("--provider", "provider_opt", metavar="PROVIDER",
              help="The provider (id or name); the same as the PROVIDER argument.")
@click.option("--token-stdin", is_flag=True,
              help="Redeem the support token read from stdin's first line (the provider, or the "
                   "administrator for it): PROVIDER supports the space the token names.")
@click.option("--size", "size_bytes", callback=parse_size, metavar="SIZE",
              help="Bytes granted: 1073741824, 10G (10^9), 10GiB (2^30). With --token-stdin, the size "
                   "granted (default: what the token asks for); without, resize an existing support.")
@click.option("--revoke", is_flag=True, help="Revoke PROVIDER's support of SPACE (space admin, or the provider).")
@json_option
@pass_ctx
def space_support(obj: Ctx, space_ref: str, provider_ref: str | None, provider_opt: str | None,
                  token_stdin: bool, size_bytes: int | None, revoke: bool, as_json: bool) -> None:
    """List the providers supporting SPACE; redeem a support token (--token-stdin); resize or revoke a support.

    Support takes the provider's consent: a space admin asks for it with `zonefarm space
    support-token`, the provider redeems that token here with --token-stdin (so it never
    shows in `ps`). SPACE and PROVIDER are ids or exact names.
    """
    if provider_ref and provider_opt and provider_ref != provider_opt:
        raise click.UsageError("give PROVIDER once: as the argument or as --provider")
    provider_ref = provider_ref or provider_opt
    client = obj.client
    if token_stdin:
        if revoke or provider_ref is None:
            raise click.UsageError("--token-stdin redeems a support token: give --provider, and no --revoke")
        _redeem_support(client, space_ref, provider_ref, size_bytes, as_json)
        return
    if provider_ref is None:
        if size_bytes is not None or revoke:
            raise click.UsageError("--size and --revoke need a PROVIDER")
        space_id = _resolve(client, "/spaces", space_ref, "space")
        page = client.get(f"/spaces/{space_id}/providers", params={"limit": 500})
        if as_json:
            emit_json(page)
            return
        table(("PROVIDER", "NAME", "SIZE", "SINCE"),
              [(s["provider_id"], s["provider_name"], size(s["size"]), short_time(s["created_at"]))
               for s in page["items"]])
        return
    if (size_bytes is None) == (not revoke):
        raise click.UsageError("give --size SIZE (the provider resizing), --revoke, or --token-stdin "
                               "(the provider redeeming a support token)")
    space_id = _resolve(client, "/spaces", space_ref, "space")
    provider_id = _resolve(client, "/providers", provider_ref, "provider")
    if revoke:
        client.delete(f"/spaces/{space_id}/providers/{provider_id}")
        if as_json:
            emit_json({"space_id": space_id, "provider_id": provider_id, "revoked": True})
        else:
            click.echo(f"provider {provider_id} no longer supports space {space_id}")
        return
    try:
        s = client.put(f"/providers/{provider_id}/spaces/{space_id}", json={"size": size_bytes})
    except ApiFailure as exc:
        if exc.status in (403, 404):  # a space admin trying the old way, or no support yet
            raise ApiFailure(f"{exc.message}; {_support_hint(space_ref, provider_ref)}", exc.status) from None
        raise
    if as_json:
        emit_json(s)
    else:
        click.echo(clean(f"provider {s['provider_name']} supports space {s['space_name']} with {size(s['size'])}"))


def _redeem_support(client: Client, space_ref: str, provider_ref: str, size_bytes: int | None,
                    as_json: bool) -> None:
    """``POST /providers/{id}/supports``; the token says which space, SPACE is checked against it.

    The check can only come after: a provider cannot see a space it does not support yet,
    and nothing reads a support token's space without redeeming it.
    """
    provider_id = _resolve(client, "/providers", provider_ref, "provider")
    body: dict[str, Any] = {"token": _read_secret("Support token", from_stdin=True, token=True)}
    if size_bytes is not None:
        body["size"] = size_bytes
    s = client.post(f"/providers/{provider_id}/supports", json=body)
    if as_json:
        emit_json(s)
    else:
        click.echo(clean(f"provider {s['provider_name']} supports space {s['space_name']} with {size(s['size'])}"))
    if not _matches(space_ref, s["space_id"], s["space_name"]):
        note(clean(f"warning: the token was for space {s['space_id']} {s['space_name']}, not {space_ref}; "
                   f"that support is in place (revoke it with `zonefarm space support {s['space_id']} "
                   f"{provider_id} --revoke`)"))
        _exit(1)


@space.command("support-token")
@click.argument("space_ref", metavar="SPACE")
@click.option("--provider", "provider_ref", metavar="PROVIDER",
              help="Only this provider (id or name) may redeem it; default: any.")
@click.option("--size", "size_bytes", callback=parse_size, metavar="SIZE",
              help="Bytes asked for (the provider grants what it decides): 1073741824, 10G, 10GiB.")
@click.option("--ttl", callback=parse_duration, metavar="DURATION",
              help="Lifetime: 3600 (seconds), 90m, 12h, 7d, 1d12h (default 7 days).")
@json_option
@pass_ctx
def space_support_token(obj: Ctx, space_ref: str, provider_ref: str | None, size_bytes: int | None,
                        ttl: int | None, as_json: bool) -> None:
    """Ask a provider to support SPACE (space admin): print a support token for it to redeem.

    The token is shown once and is the only thing on stdout, so it can be piped or saved;
    the provider runs `zonefarm space support SPACE --token-stdin --provider PROVIDER`.
    """
    client = obj.client
    space_id = _resolve(client, "/spaces", space_ref, "space")
    body: dict[str, Any] = {}
    if provider_ref is not None:
        body["provider"] = _resolve(client, "/providers", provider_ref, "provider")
    for key, value in (("size", size_bytes), ("expires_in", ttl)):
        if value is not None:
            body[key] = value
    issued = _issue_secret(client, f"/spaces/{space_id}/support_tokens", body, as_json)
    if issued is None:
        return
    row = issued["support_token"]
    asked = f"{size(row['size'])} asked" if row["size"] else "no size asked"
    who = f"provider {row['provider_id']}" if row["provider_id"] else "any provider"
    note(clean(f"support token {row['id']} for space {space_id}: {who}, {asked}, expires "
               f"{short_time(row['expires_at'])} UTC; shown only now. The provider redeems it with "
               f"`zonefarm space support {space_id} --token-stdin --provider {row['provider_id'] or 'ID'}`"))


@space.command("support-tokens")
@click.argument("space_ref", metavar="SPACE")
@click.option("--revoke", type=click.IntRange(1), metavar="ID", help="Revoke this support token.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@json_option
@pass_ctx
def space_support_tokens(obj: Ctx, space_ref: str, revoke: int | None, limit: int, offset: int,
                         as_json: bool) -> None:
    """List the support tokens issued for SPACE and their state (never the tokens), or revoke one."""
    client = obj.client
    space_id = _resolve(client, "/spaces", space_ref, "space")
    _list_or_revoke(client, f"/spaces/{space_id}/support_tokens", revoke, limit, offset, as_json,
                    {"space_id": space_id, "support_token": revoke, "revoked": True},
                    f"support token {revoke} of space {space_id} revoked",
                    ("ID", "PROVIDER", "SIZE", "STATE", "USED BY", "EXPIRES", "CREATED"),
                    lambda t: (t["id"], t["provider_id"] or "any", size(t["size"]), t["state"], t["used_by"],
                               short_time(t["expires_at"]), short_time(t["created_at"])))


def _issue_secret(client: Client, path: str, body: dict[str, Any], as_json: bool,
                  key: str = "token") -> dict[str, Any] | None:
    """Issue an invite, support token or webhook: with --json all of the answer, else its secret
    (``key``) alone on stdout (shown once; it can be piped) and the answer back for the note on stderr."""
    issued = client.post(path, json=body)
    if as_json:
        emit_json(issued)
        return None
    click.echo(issued[key])
    return issued


def _list_or_revoke(client: Client, path: str, revoke: int | None, limit: int, offset: int, as_json: bool,
                    revoked: dict[str, Any], revoked_line: str, columns: tuple[str, ...],
                    row: Callable[[dict[str, Any]], tuple[Any, ...]]) -> None:
    """List the invites or support tokens at ``path`` (their state, never the tokens), or with
    ``revoke`` revoke one and say so (``revoked`` as JSON, else ``revoked_line``)."""
    if revoke is not None:
        client.delete(f"{path}/{revoke}")
        emit_json(revoked) if as_json else click.echo(revoked_line)
        return
    _show_page(client.get(path, params={"limit": limit, "offset": offset}), as_json, columns, row)


# ---------------------------------------------------------------------------- invites (spaces and groups)

ROLES = ("member", "admin", "owner")


def _invite_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
            click.option("--role", type=click.Choice(ROLES), default="member", show_default=True,
                         help="The role the newcomer gets (admin and owner: only an owner invites them; "
                              "a group nested in a group gets no role)."),
            click.option("--uses", type=click.IntRange(1, 10_000), default=1, show_default=True,
                         help="How many times the token can be redeemed."),
            click.option("--ttl", callback=parse_duration, metavar="DURATION",
                         help="Lifetime: 3600 (seconds), 90m, 12h, 7d, 1d12h (default 7 days)."),
            click.option("--for", "subject", type=click.Choice(("user", "group")), default="user",
                         show_default=True,
                         help="Who redeems it: a user for itself, or a user for a group it administers "
                              "(join --as-group)."),
            json_option)):
        f = option(f)
    return f


def _issue_invite(obj: Ctx, kind: str, ref: str, role: str, uses: int, ttl: int | None, subject: str,
                  as_json: bool) -> None:
    """The token alone on stdout (shown once), the rest on stderr: `... invite X > token` keeps it clean."""
    what = kind[:-1]
    client = obj.client
    ident = _resolve(client, f"/{kind}", ref, what)
    body: dict[str, Any] = {"role": role, "uses": uses, "subject": subject}
    if ttl is not None:
        body["expires_in"] = ttl
    issued = _issue_secret(client, f"/{kind}/{ident}/invites", body, as_json)
    if issued is None:
        return
    inv = issued["invite"]
    join = f"zonefarm {what} join" + (" --as-group GROUP" if inv["subject"] == "group" else "")
    note(clean(f"invite {inv['id']} to {what} {ident}: {inv['role']}, for a {inv['subject']}, "
               f"{inv['max_uses']} use(s), expires {short_time(inv['expires_at'])} UTC; shown only now. "
               f"The newcomer runs `{join}` with the token on stdin"))


def _join(obj: Ctx, kind: str, as_group: str | None, token_stdin: bool, as_json: bool) -> None:
    client = obj.client
    body: dict[str, Any] = {}
    if as_group is not None:
        body["group"] = _resolve(client, "/groups", as_group, "group")
    body["token"] = _read_secret("Invite token", from_stdin=token_stdin, token=True)
    joined = client.post(f"/{kind}/join", json=body)
    if as_json:
        emit_json(joined)
        return
    who = "you" if joined["member"] == "user" else f"group {joined['member_id']}"
    role = f" as {joined['role']}" if joined["role"] else " as a child group"
    click.echo(clean(f"{who} joined {joined['target']} {joined['target_id']} {joined['target_name']}{role}"))


def _invites(obj: Ctx, kind: str, ref: str, revoke: int | None, limit: int, offset: int, as_json: bool) -> None:
    what = kind[:-1]
    client = obj.client
    ident = _resolve(client, f"/{kind}", ref, what)
    _list_or_revoke(client, f"/{kind}/{ident}/invites", revoke, limit, offset, as_json,
                    {f"{what}_id": ident, "invite": revoke, "revoked": True},
                    f"invite {revoke} to {what} {ident} revoked",
                    ("ID", "ROLE", "FOR", "USES", "STATE", "EXPIRES", "CREATED"),
                    lambda i: (i["id"], i["role"], i["subject"], f"{i['uses']}/{i['max_uses']}", i["state"],
                               short_time(i["expires_at"]), short_time(i["created_at"])))


def _join_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = json_option(f)
    f = click.option("--token-stdin", is_flag=True,
                     help="Read the token from stdin's first line even on a terminal (it is read from "
                          "stdin anyway when stdin is not one; on a terminal it is prompted for).")(f)
    return click.option("--as-group", metavar="GROUP",
                        help="Join as this group (id or name), which you administer; the invite must be "
                             "one for a group.")(f)


def _list_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = json_option(f)
    f = click.option("--offset", type=click.IntRange(0), default=0)(f)
    f = click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)(f)
    return click.option("--revoke", type=click.IntRange(1), metavar="ID", help="Revoke this invite.")(f)


def _owned_commands(entities: click.Group, kind: str, invite_note: str = "") -> None:
    """The commands spaces and groups share: ls, create, invite, join and invites."""
    what, upper = kind[:-1], kind[:-1].upper()

    @entities.command("ls", help=f"List the {kind} you can see, with your role in each.")
    @click.option("--name", help="Case-insensitive substring of the name.")
    @paging
    @json_option
    @pass_ctx
    def ls(obj: Ctx, name: str | None, limit: int, offset: int, as_json: bool) -> None:
        _show_page(_named_page(obj.client, f"/{kind}", name, limit, offset), as_json, ("ID", "NAME", "ROLE", "CREATED"),
                   lambda e: (e["id"], e["name"], e["role"], short_time(e["created_at"])))

    @entities.command("create", help=f"Create a {what}; you become its owner.")
    @click.argument("name")
    @json_option
    @pass_ctx
    def create(obj: Ctx, name: str, as_json: bool) -> None:
        e = obj.client.post(f"/{kind}", json={"name": name})
        emit_json(e) if as_json else click.echo(clean(f"{what} {e['id']} {e['name']} created"))

    @entities.command("invite", help=f"Invite someone to {upper} (admin): print an invite token, shown once, "
                                     f"for `zonefarm {what} join`.{invite_note}")
    @click.argument("ref", metavar=upper)
    @_invite_options
    @pass_ctx
    def invite(obj: Ctx, ref: str, role: str, uses: int, ttl: int | None, subject: str, as_json: bool) -> None:
        _issue_invite(obj, kind, ref, role, uses, ttl, subject, as_json)

    @entities.command("join", help=f"Join the {what} an invite token names (the token on stdin, so it never "
                                   "shows in `ps`).")
    @_join_options
    @pass_ctx
    def join(obj: Ctx, as_group: str | None, token_stdin: bool, as_json: bool) -> None:
        _join(obj, kind, as_group, token_stdin, as_json)

    @entities.command("invites", help=f"List {upper}'s invites and their state (admin; never the tokens), "
                                      "or revoke one.")
    @click.argument("ref", metavar=upper)
    @_list_options
    @pass_ctx
    def invites(obj: Ctx, ref: str, revoke: int | None, limit: int, offset: int, as_json: bool) -> None:
        _invites(obj, kind, ref, revoke, limit, offset, as_json)


_owned_commands(space, "spaces")


# ---------------------------------------------------------------------------- groups


@cli.group()
def group() -> None:
    """Groups: list, create, invite and join."""


_owned_commands(group, "groups", "\n\nAn invite --for group nests the joining group as a child (role member).")


# ---------------------------------------------------------------------------- changes


def _change_line(c: dict[str, Any]) -> str:
    return clean(f"{c['seq']:>6}  {short_time(c['ts'])}  {c['op']:<6}  {c['entity']} {c['entity_id']}  "
                 f"{json.dumps(c['data'], separators=(',', ':')) if c.get('data') is not None else ''}").rstrip()


@cli.command()
@click.option("--since", type=click.IntRange(0), default=0, show_default=True,
              help="Start after this change number (a previous run's last_seq).")
@click.option("-f", "--follow", is_flag=True, help="Keep waiting for new changes (long-polling) until Ctrl-C.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Changes fetched per request.")
@json_option
@pass_ctx
def changes(obj: Ctx, since: int, follow: bool, limit: int, as_json: bool) -> None:
    """Print the change feed as you see it: the spaces, groups and account you belong to."""
    client = obj.client
    seen: list[dict[str, Any]] = []
    try:
        while True:
            wait = CHANGES_WAIT if follow else 0
            page = poll(client, "/changes", None, params={"since": since, "limit": limit, "timeout": wait},
                        timeout=(10.0, wait + 60.0))
            for c in page["changes"]:
                if as_json and not follow:
                    seen.append(c)
                elif as_json:
                    emit_json_line(c)
                else:
                    click.echo(_change_line(c))
            moved = page["last_seq"] != since
            since = page["last_seq"]
            if not follow and not moved:
                break
            sys.stdout.flush()
    except KeyboardInterrupt:
        note(f"\nstopped; resume with --since {since}")
        _exit(INTERRUPTED)
        return
    if as_json:
        emit_json({"changes": seen, "last_seq": since})
    else:
        note(f"(last_seq {since}: resume with --since {since})")


def main(argv: list[str] | None = None, group: click.Group | None = None) -> int:
    """Run a client command; the exit status instead of a SystemExit."""
    try:
        (group or cli).main(args=argv, prog_name="zonefarm", standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    return 0
