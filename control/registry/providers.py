"""Storage providers: registration (root), updates, deletion and their bearer token.

A provider's token is shown once, at registration and at each rotation; rotating
revokes every earlier one. Every write appends its change to the feed, scoped to the
provider (its own record is in its region of interest).
"""

from __future__ import annotations

from typing import Any

from control.core.errors import conflict
from control.core.models import now
from control.registry import feed, identity, support
from control.registry.models import Provider, Support
from control.registry.names import unique_name

FIELDS = ("name", "domain", "admin_email", "sftp_host", "sftp_port", "sftp_user", "storage_path",
          "support_limit", "region")
REQUIRED = ("name", "domain", "admin_email", "sftp_port")


def _feed_data(p: Provider) -> dict[str, Any]:
    return {f: getattr(p, f) for f in FIELDS if f != "admin_email"}


def register(fields: dict[str, Any]) -> tuple[Provider, str]:
    """The new provider and its token (the plaintext exists only in this answer)."""
    unique_name(Provider, fields["name"])
    provider = Provider.create(**fields)
    feed.record("provider", provider.id, "create", _feed_data(provider), provider_id=provider.id)
    token, _ = identity.new_token("provider", provider=provider)
    return provider, token


def update(provider: Provider, changes: dict[str, Any]) -> None:
    """Apply the fields given; null for a required column means "leave as is"."""
    changes = {k: v for k, v in changes.items() if not (k in REQUIRED and v is None)}
    if changes.get("name") not in (None, provider.name):
        unique_name(Provider, changes["name"], provider.id)
    limit = changes.get("support_limit")
    if limit is not None and limit != provider.support_limit:
        feed.serialise()  # no grant slips in between this check and the commit
        total = support.granted(provider.id)
        if limit < total:
            raise conflict(f"support_limit: provider {provider.name} grants {total} bytes now; a limit of "
                           f"{limit} is {total - limit} below that (shrink or revoke supports first)")
    if not any(getattr(provider, k) != v for k, v in changes.items()):
        return
    for k, v in changes.items():
        setattr(provider, k, v)
    provider.updated_at = now()
    provider.save()
    feed.record("provider", provider.id, "update", _feed_data(provider), provider_id=provider.id)


def delete(provider: Provider) -> None:
    support.record_revocations(support.joined().where(Support.provider == provider.id))
    feed.record("provider", provider.id, "delete", {"name": provider.name}, provider_id=provider.id)
    provider.delete_instance(recursive=True, delete_nullable=True)


def rotate_token(provider: Provider) -> str:
    """A new token; every earlier token of the provider stops working."""
    identity.revoke_tokens(provider=provider)
    token, _ = identity.new_token("provider", provider=provider)
    return token
