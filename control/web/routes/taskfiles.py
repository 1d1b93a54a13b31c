"""A task's uploaded outputs: each recorded by the node's signed report as its upload lands
(``control.farm.taskfiles``); whoever may see the task lists them."""

from __future__ import annotations

from typing import Any

from control.core.models import iso
from control.core.schemas import Page
from control.farm import downloads, taskfiles
from control.farm.models import TaskFile
from control.farm.schemas import FileLanded, TaskFileOut
from control.registry.access import read_task_file, see_owned
from control.web.routes.tasks import get_task
from control.web.routing import BINARY, Context, Stream, paginate, paginated_query, route

TAG = "tasks"


def file_out(f: TaskFile) -> TaskFileOut:
    return TaskFileOut(name=f.name, size=f.size, sha256=f.sha256, provider_id=f.provider_id, provider=f.provider_name,
                       space_id=f.space_id, path=f.path, attempt=f.attempt, created_at=iso(f.created_at))


@route("GET", "/tasks/{id}/files",
       summary="A task's uploaded outputs: name, size, sha256, provider and path in the space, each "
               "recorded as its upload landed", tag=TAG, query=paginated_query(), responses={200: Page[TaskFileOut]})
def list_task_files(ctx: Context, id: int) -> dict[str, Any]:
    task = get_task(id)
    see_owned(ctx.principal, task.owner, task.space_id, "task")
    return paginate(taskfiles.of_task(task.id), ctx, TaskFile.name, file_out)


@route("GET", "/tasks/{id}/files/{name}",
       summary="Download one uploaded output (streamed from its provider; one `Range: bytes=a-b`, `a-` or `-n` "
               "gives 206 with Content-Range, 416 past the end; ETag is its SHA-256). `name` as listed, "
               "slashes included", tag=TAG, path_params=("name",),
       responses={200: BINARY, 206: BINARY})
def download_task_file(ctx: Context, id: int, name: str) -> Stream:
    task = get_task(id)
    read_task_file(ctx.principal, task.owner, task.space_id)
    opened = downloads.open_download(ctx.settings, downloads.landed(task.id, name), ctx.headers.get("Range"))
    return Stream(206 if opened.span.partial else 200, opened.headers(), opened.chunks())


@route("POST", "/tasks/{id}/files",
       summary="A node reports one output of the attempt it runs uploaded (signed by the node)",
       tag=TAG, body=FileLanded, auth="node", responses={200: TaskFileOut})
def record_task_file(ctx: Context, id: int) -> TaskFileOut:
    body: FileLanded = ctx.body
    return file_out(taskfiles.record(id, ctx.principal.node, body.attempt, body.name, body.size, body.sha256))
