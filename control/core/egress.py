"""Where the zone may connect on a user's behalf (webhook deliveries): the one egress rule.

A webhook URL is chosen by a user, and the zone connects to it from inside the site: left
alone, that reaches the metadata service (169.254.169.254), the database, the dispatcher's
SSH targets and anything else listening on a private address (server-side request
forgery). So a delivery may go to a **public** address only, plus what the administrator
lists in ``webhook_allow``: networks (CIDRs) and host names (exact, or ``*.suffix``).

The check is made on the address the delivery connects to, resolved at send time, and the
connection is made to that very address (``control.farm.webhooks.delivery``): a name that
resolved to a public address when the webhook was made and to 10.0.0.5 now (DNS rebinding)
is refused then. Every address a name resolves to must pass, not just the first. Each
refusal names the address, what kind it is and the setting that would allow it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("http", "https")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


@dataclass(frozen=True)
class Allow:
    """The parsed ``webhook_allow`` setting."""

    networks: tuple[IPNetwork, ...] = ()
    names: tuple[str, ...] = ()  # exact lowercase host names
    suffixes: tuple[str, ...] = ()  # ".corp.example" from "*.corp.example"

    def allows_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def parse_allow(text: str) -> Allow:
    """``webhook_allow``: CIDRs and host names separated by commas or spaces; ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    names: list[str] = []
    suffixes: list[str] = []
    for entry in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        wildcard = name.startswith("*.")
        bare = name[2:] if wildcard else name
        if not bare or not set(bare) <= _HOST_CHARS or bare.startswith((".", "-")) or ".." in bare:
            raise ValueError(f"{entry!r} is neither a CIDR nor a host name (or *.domain)")
        (suffixes if wildcard else names).append("." + bare if wildcard else bare)
    return Allow(tuple(networks), tuple(names), tuple(suffixes))


def kind_of(address: IPAddress) -> str | None:
    """What makes an address internal (``loopback``, ``private``...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return kind_of(address.ipv4_mapped)
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "non-public"  # shared (100.64.0.0/10), documentation ranges and the like
    return None


def address_refusal(allow: Allow, host: str, address: IPAddress) -> str | None:
    """Why a delivery to ``host`` may not connect to ``address`` (naming the rule), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    kind = kind_of(address)
    if kind == "unspecified":
        return f"address {address} of {host} is unspecified and never called"
    if kind is None or allow.allows_address(address) or allow.allows_name(host):
        return None
    return (f"address {address} of {host} is {kind}: webhooks call public addresses only unless the "
            f"setting webhook_allow lists its network or host name")


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a webhook URL; ValueError says what is wrong with it.

    Only http and https, a host, no user name or password (they would be shown wherever
    the URL is), a valid port.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError("must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password; put a token in the path or query")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("names no host")
    if any(c.isspace() for c in url) or any(ord(c) < 32 for c in url):
        raise ValueError("must not contain spaces or control characters")
    scheme = parts.scheme.lower()
    return scheme, host, port or (443 if scheme == "https" else 80)


def literal_refusal(allow: Allow, host: str) -> str | None:
    """Refuse at once what needs no resolving: an internal IP literal, or ``localhost``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            return None if allow.allows_name(host) or allow.allows_address(ipaddress.ip_address("127.0.0.1")) \
                else (f"host {host} is loopback: webhooks call public addresses only unless the setting "
                      "webhook_allow lists its network or host name")
        return None
    return address_refusal(allow, host, address)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to now, in the resolver's order; OSError when none."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in seen:
            seen.append(address)
    if not seen:
        raise OSError(f"{host} resolves to no address")
    return seen


def checked_addresses(allow: Allow, host: str, port: int) -> list[IPAddress]:
    """The addresses to connect to for ``host``, in order: every one it resolves to must be allowed.

    Raises ``PermissionError`` naming the refused address and the rule, ``OSError`` when the
    name does not resolve.
    """
    addresses = resolve(host, port)
    for address in addresses:
        why = address_refusal(allow, host, address)
        if why is not None:
            raise PermissionError(why)
    return addresses


def pick_address(allow: Allow, host: str, port: int) -> IPAddress:
    """The first of ``checked_addresses``."""
    return checked_addresses(allow, host, port)[0]
