"""The one signing helper: what the runner and the Ansible module send, the API checks."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from control.node import signing

SECRET = "nodes-secret-0123456789"


def test_signature_matches_documented_string() -> None:
    body = b'{"event":"started"}'
    h = signing.sign_headers(SECRET, "wk1", "post", "/api/v1/tasks/7/callback?x=1", body,
                             timestamp=1700000000, nonce="abcdef0123456789")
    expected_msg = ("1700000000\nabcdef0123456789\nPOST\n/api/v1/tasks/7/callback?x=1\n"
                    + hashlib.sha256(body).hexdigest())
    expected = hmac.new(SECRET.encode(), expected_msg.encode(), hashlib.sha256).hexdigest()
    assert h[signing.HEADER_SIGNATURE] == expected and h[signing.HEADER_NODE] == "wk1"


def test_verify_roundtrip_and_rejections() -> None:
    body = b"{}"
    h = signing.sign_headers(SECRET, "wk1", "POST", "/p", body)
    assert signing.verify(SECRET, h, "POST", "/p", body) == "wk1"
    with pytest.raises(ValueError, match="bad signature"):
        signing.verify("another-secret-0123456", h, "POST", "/p", body)
    with pytest.raises(ValueError, match="bad signature"):
        signing.verify(SECRET, h, "POST", "/p", b'{"tampered":1}')
    with pytest.raises(ValueError, match="bad signature"):
        signing.verify(SECRET, h, "PUT", "/p", body)
    with pytest.raises(ValueError, match="bad signature"):
        signing.verify(SECRET, h, "POST", "/p?extra=1", body)
    stale = signing.sign_headers(SECRET, "wk1", "POST", "/p", body, timestamp=1000)
    with pytest.raises(ValueError, match="timestamp"):
        signing.verify(SECRET, stale, "POST", "/p", body)
    missing = {k: v for k, v in h.items() if k != signing.HEADER_NONCE}
    with pytest.raises(ValueError, match="missing"):
        signing.verify(SECRET, missing, "POST", "/p", body)


def test_module_utils_is_the_same_file() -> None:
    """library/ modules import module_utils/zonefarm_signing.py: it must be this very helper."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    link = root / "module_utils" / "zonefarm_signing.py"
    assert link.resolve() == (root / "control" / "node" / "signing.py").resolve()
