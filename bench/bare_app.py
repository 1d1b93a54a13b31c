"""The baseline: a bare Bottle + peewee app doing the same database work as the two benched routes.

It runs the same SQL as zonefarm for ``GET /api/v1/spaces/{id}`` (token by digest joined
with its user, the space, the caller's role in it) and ``POST /api/v1/groups`` (token and user, name
check, the group, its owner row and two change-feed rows, with the feed lock on
PostgreSQL, in one transaction), on the same models and the same pooled database. What it
leaves out is zonefarm's request path: the route table wrapper, pydantic validation and
rendering, the error mapping and the JSON access log. The ratio of the two is what that
path costs.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import bottle
import peewee

from control.core.db import database as db
from control.core.db import init_database, is_postgres
from control.core.models import iso
from control.registry.models import Change, Group, GroupUser, Provider, Space, SpaceUser, Token, User


def _user_from_bearer() -> Any:
    header = bottle.request.get_header("Authorization") or ""
    token = header[7:] if header.startswith("Bearer ") else ""
    row = (Token.select(Token, User, Provider)
           .join_from(Token, User, peewee.JOIN.LEFT_OUTER)
           .join_from(Token, Provider, peewee.JOIN.LEFT_OUTER)
           .where(Token.token_hash == hashlib.sha256(token.encode()).hexdigest()).first())
    if row is None or row.revoked or (row.expires_at is not None and row.expires_at < time.time()):
        bottle.abort(401, "bad token")
    user = row.user
    if not user.active:
        bottle.abort(401, "inactive")
    return user


def build_bare_app(database_url: str, pool_size: int) -> bottle.Bottle:
    init_database(database_url, pool_size)
    app = bottle.Bottle()

    @app.get("/api/v1/spaces/<sid:int>")
    def show_space(sid: int) -> str:
        with db.connection_context():
            user = _user_from_bearer()
            space = Space.get_or_none(Space.id == sid)
            if space is None:
                bottle.abort(404, "no space")
            link = SpaceUser.get_or_none(SpaceUser.space == sid, SpaceUser.user == user.id)
            if link is None:
                bottle.abort(403, "not a member")
            bottle.response.content_type = "application/json"
            return json.dumps({"id": space.id, "name": space.name, "role": link.role,
                               "created_at": iso(space.created_at), "updated_at": iso(space.updated_at)})

    @app.post("/api/v1/groups")
    def create_group() -> str:
        name = json.loads(bottle.request.body.read())["name"]
        with db.connection_context():
            user = _user_from_bearer()
            with db.atomic():
                if Group.select().where(Group.name == name).exists():
                    bottle.abort(409, "taken")
                lock = "SELECT pg_advisory_xact_lock(%s)" if is_postgres() else None
                group = Group.create(name=name)
                if lock:
                    db.execute_sql(lock, (0x7A6F6E65,))
                Change.create(entity="group", entity_id=group.id, op="create", data={"name": name},
                              group_id=group.id)
                row = GroupUser.create(group=group, user=user, role="owner")
                if lock:
                    db.execute_sql(lock, (0x7A6F6E65,))
                Change.create(entity="group_user", entity_id=row.id, op="create",
                              data={"user": user.id, "role": "owner"}, group_id=group.id, user_id=user.id)
        bottle.response.status = 201
        bottle.response.content_type = "application/json"
        return json.dumps({"id": group.id, "name": group.name, "role": "owner",
                           "created_at": iso(group.created_at), "updated_at": iso(group.updated_at)})

    return app
