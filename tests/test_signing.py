"""The one signing helper: what the runner and the Ansible module send, the API checks."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from control.node import signing

SECRET = "nodes-secret-0123456789"


def test_signature_matches_documented_string() -> None:
    body = b'{"event":"started"}'
    h = signing.sign_headers(SECRET, "wk1", "post", "/api/v1/tasks/7/callback?x=1", body, generation=3,
                             timestamp=1700000000, nonce="abcdef0123456789")
    expected_msg = ("1700000000\nabcdef0123456789\nwk1\n3\nPOST\n/api/v1/tasks/7/callback?x=1\n"
                    + hashlib.sha256(body).hexdigest())
    expected = hmac.new(SECRET.encode(), expected_msg.encode(), hashlib.sha256).hexdigest()
    assert h[signing.HEADER_SIGNATURE] == expected and h[signing.HEADER_NODE] == "wk1"
    assert h[signing.HEADER_GENERATION] == "3"


def test_node_keys_are_derived_per_name_and_generation() -> None:
    key = signing.derive_node_key(SECRET, "wk1", 2)
    assert key == hmac.new(SECRET.encode(), b"node:wk1:2", hashlib.sha256).hexdigest()
    assert len({key, signing.derive_node_key(SECRET, "wk2", 2), signing.derive_node_key(SECRET, "wk1", 3),
                signing.derive_node_key(SECRET + "x", "wk1", 2)}) == 4
    with pytest.raises(ValueError):
        signing.derive_node_key(SECRET, "wk1", -1)


def test_the_signed_name_and_generation_cannot_be_rewritten() -> None:
    """The X-Zonefarm-Node header is inside the signature: rewriting it breaks the signature."""
    body = b"{}"
    h = signing.sign_headers(SECRET, "wk-evil", "POST", "/p", body)
    with pytest.raises(ValueError, match="bad signature"):
        signing.verify(SECRET, {**h, signing.HEADER_NODE: "localhost"}, "POST", "/p", body)
    with pytest.raises(ValueError, match="bad signature"):
        signing.verify(SECRET, {**h, signing.HEADER_GENERATION: "1"}, "POST", "/p", body)
    with pytest.raises(ValueError, match="generation"):
        signing.verify(SECRET, {**h, signing.HEADER_GENERATION: "-1"}, "POST", "/p", body)


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


@pytest.mark.parametrize("shared", ["signing", "secretfile"])
def test_module_utils_is_the_same_file(shared: str) -> None:
    """library/ modules import module_utils/zonefarm_<x>.py: it must be this very helper."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    link = root / "module_utils" / f"zonefarm_{shared}.py"
    assert link.is_symlink()
    assert link.resolve() == (root / "control" / "node" / f"{shared}.py").resolve()


@pytest.mark.parametrize("api_url, route, query, url, path", [
    ("http://zone:8700", "/tasks/7/callback", None, "http://zone:8700/api/v1/tasks/7/callback",
     "/api/v1/tasks/7/callback"),
    ("https://proxy.example/zf/", "/changes", {"since": 3, "timeout": 0},
     "https://proxy.example/zf/api/v1/changes?since=3&timeout=0", "/zf/api/v1/changes?since=3&timeout=0"),
    ("http://zone/api/v1", "/nodes/register", None, "http://zone/api/v1/nodes/register", "/api/v1/nodes/register"),
])
def test_request_target_keeps_a_proxy_prefix_and_the_query(api_url: str, route: str, query: dict | None,
                                                            url: str, path: str) -> None:
    assert signing.request_target(api_url, route, query) == (url, path)


def test_signed_request_is_what_verify_accepts() -> None:
    req = signing.signed_request(SECRET, "wk1", "POST", "http://zone/prefix", "/tasks/1/callback", b"{}")
    assert req.url == "http://zone/prefix/api/v1/tasks/1/callback"
    assert req.headers["Content-Type"] == "application/json"
    assert signing.verify(SECRET, req.headers, "POST", req.path, req.body) == "wk1"
    again = signing.signed_request(SECRET, "wk1", "POST", "http://zone/prefix", "/tasks/1/callback", b"{}")
    assert again.headers[signing.HEADER_NONCE] != req.headers[signing.HEADER_NONCE]


def test_one_private_file_check(tmp_path) -> None:
    from control.node.secretfile import InsecureFileError, require_private
    f = tmp_path / "secret"
    f.write_text("x")
    f.chmod(0o600)
    require_private(f, "the key")
    for mode in (0o640, 0o604, 0o660):
        f.chmod(mode)
        with pytest.raises(InsecureFileError, match=f"mode {mode:04o} lets others read the key; chmod 600"):
            require_private(f, "the key")
    with pytest.raises(FileNotFoundError):
        require_private(tmp_path / "missing", "the key")


def test_one_ini_reader_words_every_failure_as_the_callers_error_and_never_quotes_the_file(tmp_path) -> None:
    """node/config, provider/agent, client/credentials, library/ and the inventory script all
    read their section through secretfile.read_section: its errors are theirs, and a line that
    does not parse is named by number, not by its text (it may hold the secret)."""
    from control.node.secretfile import read_section

    class Mine(Exception):
        pass

    f = tmp_path / "node.ini"
    f.write_text("node_key = s3cret-value\n[node]\nname = wk1\n")
    f.chmod(0o600)
    with pytest.raises(Mine, match="no section headers.*line 1") as bad:
        read_section(f, "node", Mine, what="the node key")
    assert "s3cret-value" not in str(bad.value)
    f.write_text("[node]\nname = wk1\n  node_key s3cret-value\nbroken s3cret-value\n")
    with pytest.raises(Mine, match="line 4") as bad:
        read_section(f, "node", Mine)
    assert "s3cret-value" not in str(bad.value)
    f.write_text("[other]\nname = wk1\n")
    with pytest.raises(Mine, match=r"missing \[node\] section"):
        read_section(f, "node", Mine)
    f.write_text("[node]\nname = wk1\nnode_key = 100%\n")
    assert dict(read_section(f, "node", Mine, what="the node key")) == {"name": "wk1", "node_key": "100%"}
    with f.open() as fh:
        assert read_section(f, "node", Mine, fh=fh)["name"] == "wk1"
    f.chmod(0o640)
    with pytest.raises(Mine, match="lets others read the node key; chmod 600"):
        read_section(f, "node", Mine, what="the node key")
    assert read_section(f, "node", Mine)["name"] == "wk1"  # a file holding no credential may be readable
    with pytest.raises(Mine, match="no such file"):
        read_section(tmp_path / "missing.ini", "node", Mine, what="the node key")
