"""The webhook sender: a thread of its own in each API process, never a request's.

Each pass claims due deliveries (``pending``, ``next_attempt_at`` passed, no live claim)
with one guarded UPDATE that sets a lease (``claimed_by``, ``claimed_until``), so several
API processes share the outbox and none sends a row another holds. The claimed rows are
sent by a small pool (``webhook_senders`` threads): a slow receiver holds one of them, not
the others, and never a request thread or a dispatcher round.

One attempt:

1. the URL's host is resolved **now** and every address checked against the egress rule
   (``control.core.egress``); the connection goes to a checked address (the next one, up
   to ``MAX_ADDRESSES``, when one refuses the connection), with the original ``Host``
   (and, for https, the original name for SNI and the certificate), so a DNS answer that
   changes between check and connect is never used;
2. the body (built from the row alone: every attempt sends the same bytes) is signed with
   the webhook's derived secret by ``control.node.signing.sign_payload``;
3. one POST, ``webhook_timeout`` to connect and per read and three times that in all
   (``attempt_limit``: a receiver trickling its answer is cut), no redirects followed (a 3xx is
   a failure naming where it pointed), no proxies from the environment, https receivers'
   certificates checked (against ``webhook_ca_file`` if set);
4. a 2xx is delivered; anything else is retried after ``webhook_backoff`` seconds,
   doubling up to ``webhook_backoff_max``, until ``webhook_max_attempts`` attempts.

Errors are recorded in the delivery log in words of our own (never the exception text
with its URL, whose path may hold the receiver's token); log lines name the webhook,
delivery and host only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from control.core.config import Settings
from control.core.db import connection, write_transaction
from control.core.egress import IPAddress, checked_addresses, parse_allow, split_url
from control.core.models import iso, now
from control.farm.webhooks import service
from control.farm.webhooks.models import Webhook, WebhookDelivery
from control.node.signing import HEADER_DELIVERY, HEADER_EVENT, HEADER_WEBHOOK, sign_payload

log = logging.getLogger("zonefarm.webhooks")
USER_AGENT = "zonefarm-webhooks/1"
MAX_ERROR = 500
MAX_ADDRESSES = 3  # a name's addresses tried in turn when one refuses the connection


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str  # empty when delivered

    @property
    def delivered(self) -> bool:
        return not self.error


def body_of(delivery: WebhookDelivery) -> bytes:
    """The JSON body of a delivery: the same bytes at every attempt."""
    return json.dumps({"id": delivery.id, "event": delivery.event, "webhook": delivery.webhook_id,
                       "created_at": iso(delivery.created_at), "data": delivery.payload or {}},
                      separators=(",", ":"), sort_keys=True).encode()


def attempt_limit(settings: Settings) -> float:
    """Seconds one attempt may take in all, from connecting to the end of the answer's headers."""
    return 3 * settings.webhook_timeout


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    return float(min(settings.webhook_backoff * 2 ** max(attempts - 1, 0), settings.webhook_backoff_max))


class _Deadline:
    """The whole attempt's time limit: the socket is shut down when it passes.

    Timeouts in requests are per read, so a receiver sending its answer one byte at a time
    would hold a sender thread for as long as it liked, past the claim's lease (and the row
    would be sent again meanwhile). A timer shuts the connection down at the deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._timers: list[threading.Timer] = []

    def watch(self, sock: socket.socket) -> None:
        def cut() -> None:
            self.expired = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        timer = threading.Timer(self.seconds, cut)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def _pool_classes(deadline: _Deadline) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections are watched by ``deadline`` from the moment they connect."""

    class Connection(HTTPConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class TLSConnection(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConnection

    return {"http": Pool, "https": TLSPool}


class _CheckedAdapter(HTTPAdapter):
    """Connections to a checked address under one deadline; for https, TLS still checks the
    certificate against the URL's name (SNI and hostname check), not the address."""

    def __init__(self, host: str, deadline: _Deadline) -> None:
        self._host = host
        self._deadline = deadline
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        kwargs["server_hostname"] = self._host
        kwargs["assert_hostname"] = self._host
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._deadline)


def _describe(exc: Exception, settings: Settings, address: str) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {settings.webhook_timeout:g}s (timed out)"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed with {address} (certificate or handshake)"
    if isinstance(exc, requests.ConnectionError):
        return f"could not connect to {address} (refused, reset or unreachable)"
    if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
        return f"request failed before sending ({type(exc).__name__}: check webhook_ca_file)"
    return f"request failed ({type(exc).__name__})"


def _post(settings: Settings, url: str, host: str, address: IPAddress, port: int, body: bytes,
          headers: dict[str, str]) -> tuple[requests.Response | None, str | None]:
    """One POST to ``url``'s path on ``address`` (checked), as ``host``; the answer or why there is none."""
    parts = urlsplit(url)
    shown = f"[{address}]" if address.version == 6 else str(address)
    target = urlunsplit((parts.scheme.lower(), f"{shown}:{port}", parts.path or "/", parts.query, ""))
    deadline = _Deadline(attempt_limit(settings))
    with requests.Session() as session:
        session.trust_env = False  # an environment proxy would connect to the name, unchecked
        adapter = _CheckedAdapter(host, deadline)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            resp = session.post(target, data=body, headers=headers, allow_redirects=False, stream=True,
                                timeout=(settings.webhook_timeout, settings.webhook_timeout),
                                verify=settings.webhook_ca_file or True)
        except (requests.RequestException, OSError, ValueError) as exc:  # OSError: a missing CA file
            if deadline.expired:
                return None, f"no complete answer within {deadline.seconds:g}s (timed out)"
            return None, _describe(exc, settings, f"{shown}:{port}")
        finally:
            deadline.cancel()
        resp.close()  # the answer's body is not read: a receiver cannot make us download anything
    return resp, None


def attempt(settings: Settings, hook: Webhook, delivery: WebhookDelivery) -> Outcome:
    """Send one delivery once; what happened, in words fit for the delivery log."""
    try:
        _, host, port = split_url(hook.url)
    except ValueError as exc:
        return Outcome(None, f"url: {exc}")
    try:
        addresses = checked_addresses(parse_allow(settings.webhook_allow), host, port)
    except PermissionError as exc:
        return Outcome(None, f"refused: {exc}")
    except (OSError, UnicodeError):
        return Outcome(None, f"host {host} does not resolve")
    body = body_of(delivery)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "Host": urlsplit(hook.url).netloc.rsplit("@", 1)[-1], HEADER_WEBHOOK: str(hook.id),
               HEADER_DELIVERY: str(delivery.id), HEADER_EVENT: delivery.event,
               **sign_payload(service.secret(settings, hook), body)}
    resp: requests.Response | None = None
    failure: str | None = "no address to connect to"
    for address in addresses[:MAX_ADDRESSES]:
        resp, failure = _post(settings, hook.url, host, address, port, body, headers)
        if failure is None or not failure.startswith("could not connect"):
            break  # an answer, or a failure the next address would not cure (a timeout, TLS)
    if resp is None:
        return Outcome(None, failure or "no answer")
    if 200 <= resp.status_code < 300:
        return Outcome(resp.status_code, "")
    if 300 <= resp.status_code < 400:
        where = urlsplit(resp.headers.get("Location", "")).netloc or "elsewhere"
        return Outcome(resp.status_code, f"answered {resp.status_code}, a redirect to {where[:200]}: "
                                         "redirects are not followed")
    return Outcome(resp.status_code, f"answered {resp.status_code}")


def claim(ident: str, limit: int, lease: float) -> list[WebhookDelivery]:
    """Due deliveries this sender now holds for ``lease`` seconds (oldest first)."""
    t = now()
    due = (WebhookDelivery.status == "pending") & (WebhookDelivery.next_attempt_at <= t) & (
        WebhookDelivery.claimed_until.is_null() | (WebhookDelivery.claimed_until < t))
    ids = [r.id for r in WebhookDelivery.select(WebhookDelivery.id).where(due)
           .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)]
    if not ids:
        return []
    with write_transaction():
        (WebhookDelivery.update(claimed_by=ident, claimed_until=t + lease)
         .where(WebhookDelivery.id.in_(ids), due).execute())
    return list(WebhookDelivery.select().where(WebhookDelivery.id.in_(ids), WebhookDelivery.claimed_by == ident,
                                               WebhookDelivery.claimed_until == t + lease)
                .order_by(WebhookDelivery.id))


def record(settings: Settings, delivery: WebhookDelivery, ident: str, outcome: Outcome, *,
           final: bool = False) -> str:
    """Write an attempt's outcome (if this sender still holds the row); the delivery's new status.

    A failure is retried unless it was the last attempt or ``final`` (nothing to retry for).
    """
    t = now()
    attempts = delivery.attempts + 1
    values: dict[str, object] = {"attempts": attempts, "last_attempt_at": t, "claimed_by": None,
                                 "claimed_until": None, "last_status_code": outcome.status_code}
    if outcome.delivered:
        values.update(status="delivered", delivered_at=t)
    else:
        values["last_error"] = outcome.error[:MAX_ERROR]
        if final or attempts >= settings.webhook_max_attempts:
            values["status"] = "failed"
        else:
            values["next_attempt_at"] = t + backoff(settings, attempts)
    with write_transaction():
        WebhookDelivery.update(values).where(
            WebhookDelivery.id == delivery.id, WebhookDelivery.claimed_by == ident,
            WebhookDelivery.status == "pending").execute()
    return str(values.get("status", "pending"))


def send(settings: Settings, delivery: WebhookDelivery, ident: str) -> str:
    """One attempt of a claimed delivery, recorded; its status afterwards.

    No database connection is held while the receiver is waited for.
    """
    with connection():
        hook = Webhook.get_or_none(Webhook.id == delivery.webhook_id)
    if hook is None:
        return "gone"  # deleted meanwhile; its deliveries went with it
    final = not hook.enabled
    if final:
        outcome = Outcome(None, "webhook disabled")
    else:
        try:
            outcome = attempt(settings, hook, delivery)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the row claimed
            log.exception("webhook %s delivery %s: attempt failed", hook.id, delivery.id)
            outcome = Outcome(None, f"internal error ({type(exc).__name__})")
    with connection():
        status = record(settings, delivery, ident, outcome, final=final)
    if outcome.delivered:
        log.info("webhook %s delivery %s (%s) delivered", hook.id, delivery.id, delivery.event)
    else:
        log.warning("webhook %s delivery %s (%s) attempt %d to %s failed: %s", hook.id, delivery.id,
                    delivery.event, delivery.attempts + 1, urlsplit(hook.url).hostname, outcome.error)
    return status


class Sender:
    """The sender thread and its pool; ``start`` in each API process (``control.web.server``)."""

    def __init__(self, settings: Settings, ident: str | None = None) -> None:
        self.settings = settings
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}:webhooks"
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=settings.webhook_senders, thread_name_prefix="webhook-send")
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    @property
    def lease(self) -> float:
        # every address's attempt, with room for the resolver and the database
        return MAX_ADDRESSES * attempt_limit(self.settings) + 30

    def run_once(self) -> int:
        """Claim what is due and send it; how many attempts were made."""
        with connection():
            claimed = claim(self.ident, 4 * self.settings.webhook_senders, self.lease)
        list(self._pool.map(lambda d: send(self.settings, d, self.ident), claimed))
        return len(claimed)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - the sender outlives a database hiccup
                log.exception("webhook sender pass failed")
                busy = 0
            if not busy:
                self._stop.wait(self.settings.webhook_poll_interval)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
