"""The routes groups and spaces share, declared once for both.

A group and a space are alike as far as these routes go: create one (the creator owns
it), show, rename and delete it, list, add and remove its direct users, list its
effective users and the chains through which one of them belongs. ``owned_routes``
declares them for one kind; what differs (the models, the access check, how deleting
cascades, the words of the summaries) is an ``OwnedKind``. The routes only one kind has
(nested groups, a space's member groups) stay in ``routes.groups`` and ``routes.spaces``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.core.errors import not_found
from control.core.models import iso
from control.core.schemas import Page
from control.registry import members, membership, owned
from control.registry.access import READ, fetch
from control.registry.identity import Principal, require_user_or_root
from control.registry.models import Owned, User
from control.registry.schemas import (
    ChainLink,
    EffectiveUserOut,
    GroupCreate,
    GroupOut,
    GroupUpdate,
    MemberOut,
    MemberRole,
)
from control.web.listing import chain_page, effective_page, list_members, member_out, page_query
from control.web.routing import Context, Reply, paginated_query, route


@dataclass(frozen=True)
class OwnedKind:
    """What differs between the group and the space routes; the routes themselves do not."""

    model: type[Owned]
    out: type[GroupOut]  # GroupOut or SpaceOut
    create: type[GroupCreate]  # GroupCreate or SpaceCreate
    update: type[GroupUpdate]  # GroupUpdate or SpaceUpdate
    access: Callable[[Principal, int, str], tuple[Any, str | None]]  # group_access / space_access
    delete: Callable[[Any], None]  # groups.delete / spaces.delete: what goes with it
    chains: Callable[[int, int], membership.Chains]  # Chains.of_group / Chains.of_space
    delete_note: str  # said of deleting, after "(owner)"
    through: str  # how a user is an effective member
    chain: str  # the shape of a membership chain

    @property
    def name(self) -> str:
        return owned.kind(self.model)

    def to_out(self, entity: Owned, role: str | None) -> GroupOut:
        return self.out(id=entity.id, name=entity.name, role=role, created_at=iso(entity.created_at),
                        updated_at=iso(entity.updated_at))


def owned_routes(kind: OwnedKind) -> None:
    """Declare the shared routes of one kind, under ``/groups`` or ``/spaces``."""
    name, users = kind.name, owned.USERS[kind.model]
    tag, base = f"{name}s", f"/{name}s"
    access = kind.access

    @route("POST", base, summary=f"Create a {name}; a user creating it becomes its owner", tag=tag,
           body=kind.create, responses={201: kind.out}, name=f"create_{name}")
    def create(ctx: Context) -> Reply:
        require_user_or_root(ctx.principal)
        entity = owned.create(kind.model, ctx.principal, ctx.body.name, ctx.body.owner)
        return Reply(201, kind.to_out(entity, "owner" if ctx.principal.user else None),
                     {"Location": f"/api/v1{base}/{entity.id}"})

    @route("GET", base + "/{id}", summary=f"Show a {name}", tag=tag, responses={200: kind.out},
           name=f"show_{name}")
    def show(ctx: Context, id: int) -> GroupOut:
        return kind.to_out(*access(ctx.principal, id, READ))

    @route("PATCH", base + "/{id}", summary=f"Rename a {name} (admin)", tag=tag, body=kind.update,
           responses={200: kind.out}, name=f"update_{name}")
    def update(ctx: Context, id: int) -> GroupOut:
        entity, role = access(ctx.principal, id, "admin")
        owned.rename(entity, ctx.body.name)
        return kind.to_out(entity, role)

    @route("DELETE", base + "/{id}", summary=f"Delete a {name} (owner){kind.delete_note}", tag=tag,
           responses={204: None}, name=f"delete_{name}")
    def delete(ctx: Context, id: int) -> None:
        kind.delete(access(ctx.principal, id, "owner")[0])

    @route("GET", base + "/{id}/users", summary=f"List a {name}'s direct users", tag=tag,
           query=paginated_query(), responses={200: Page[MemberOut]}, name=f"list_{name}_users")
    def list_users(ctx: Context, id: int) -> dict[str, Any]:
        access(ctx.principal, id, READ)
        return list_members(users, id, ctx)

    @route("PUT", base + "/{id}/users/{uid}", summary=f"Add a user to a {name} or change its role (admin)",
           tag=tag, body=MemberRole, responses={200: MemberOut, 201: MemberOut}, name=f"put_{name}_user")
    def put_user(ctx: Context, id: int, uid: int) -> Reply:
        _, role = access(ctx.principal, id, "admin")
        user, added = members.put(ctx.principal, role, users, id, uid, ctx.body.role)
        return Reply(201 if added else 200, member_out(user, ctx.body.role))

    @route("DELETE", base + "/{id}/users/{uid}", summary=f"Remove a user from a {name} (admin, or itself)",
           tag=tag, responses={204: None}, name=f"delete_{name}_user")
    def delete_user(ctx: Context, id: int, uid: int) -> None:
        leaving = ctx.principal.user is not None and ctx.principal.user.id == uid
        _, role = access(ctx.principal, id, READ if leaving else "admin")
        members.remove(ctx.principal, role, users, id, uid)

    @route("GET", base + "/{id}/effective_users", summary=f"Users of the {name} directly or through {kind.through}",
           tag=tag, query=paginated_query(), responses={200: Page[EffectiveUserOut]},
           name=f"list_{name}_effective_users")
    def effective_users(ctx: Context, id: int) -> dict[str, Any]:
        access(ctx.principal, id, READ)
        return effective_page(membership.EffectiveUsers(name, id), ctx)

    @route("GET", base + "/{id}/effective_users/{uid}/membership",
           summary=f"Every chain of intermediaries through which the user belongs to the {name}: [{kind.chain}]",
           tag=tag, query=page_query(), responses={200: Page[list[ChainLink]]}, name=f"{name}_membership_chains")
    def membership_chains(ctx: Context, id: int, uid: int) -> dict[str, Any]:
        entity, _ = access(ctx.principal, id, READ)
        user = fetch(User, uid)
        chains = kind.chains(entity.id, user.id)
        if chains.total == 0:
            raise not_found(f"member of {name} {entity.id}: user", uid)
        return chain_page(chains, ChainLink(type=name, id=entity.id, name=entity.name), user, ctx)
