"""Shortcuts for building registry fixtures (groups, spaces, providers, support) over HTTP."""

from __future__ import annotations

from typing import Any

from tests.support.client import Api

MIB = 1024 * 1024


def created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


def group(api: Api, token: str, name: str) -> dict[str, Any]:
    return created(api.post("/groups", token=token, json={"name": name}))


def space(api: Api, token: str, name: str) -> dict[str, Any]:
    return created(api.post("/spaces", token=token, json={"name": name}))


def provider(api: Api, name: str, **extra: Any) -> tuple[dict[str, Any], str]:
    """Register a provider as root; returns (provider, its token)."""
    body = {"name": name, "domain": f"{name}.example.org", "admin_email": f"ops@{name}.example.org", **extra}
    reg = created(api.post("/providers", token=api.root, json=body))
    return reg["provider"], reg["token"]


def support_token(api: Api, token: str, space_id: int, **body: Any) -> str:
    """A space admin (``token``) asks for support; returns the support token to hand over."""
    return created(api.post(f"/spaces/{space_id}/support_tokens", token=token, json=body))["token"]


def support(api: Api, token: str, space_id: int, provider_id: int, size: int = 10 * MIB,
            provider_token: str | None = None) -> dict[str, Any]:
    """The token flow end to end: the space admin (``token``) issues a support token for the
    provider, which redeems it with ``size`` (with its own token, or root on its behalf)."""
    ticket = support_token(api, token, space_id, provider=provider_id)
    return created(api.post(f"/providers/{provider_id}/supports", token=provider_token or api.root,
                            json={"token": ticket, "size": size}))


def resize(api: Api, space_id: int, provider_id: int, size: int, provider_token: str | None = None) -> dict[str, Any]:
    """Resizing is the provider's call (or root's on its behalf)."""
    resp = api.put(f"/providers/{provider_id}/spaces/{space_id}", token=provider_token or api.root,
                   json={"size": size})
    assert resp.status_code == 200, resp.text
    return resp.json()


def join(api: Api, token: str, kind: str, entity_id: int, user_id: int, role: str = "member") -> None:
    resp = api.put(f"/{kind}/{entity_id}/users/{user_id}", token=token, json={"role": role})
    assert resp.status_code in (200, 201), resp.text


def error(resp: Any, status: int) -> str:
    """Assert a JSON error with this status; returns its message."""
    assert resp.status_code == status, f"{resp.status_code} != {status}: {resp.text}"
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.json()["error"]["message"]
