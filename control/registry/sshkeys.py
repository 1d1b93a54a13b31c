"""SSH public keys, parsed by ``cryptography`` so a malformed key never gets stored."""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.hazmat.primitives.serialization import load_ssh_public_key

ALLOWED = {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
           "ecdsa-sha2-nistp521"}


def parse_key(text: str) -> tuple[str, str, str, str]:
    """Return (type, canonical line, hex sha256, OpenSSH fingerprint) or raise ValueError."""
    parts = text.strip().split()
    if len(parts) == 1:  # Zimfarm accepts the base64 body alone
        try:
            blob = base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("key is not valid base64") from None
        if len(blob) < 4:
            raise ValueError("key is too short")
        tlen = int.from_bytes(blob[:4], "big")
        parts = [blob[4:4 + tlen].decode("ascii", "replace"), parts[0]]
    if len(parts) < 2:
        raise ValueError("key must be '<type> <base64> [comment]'")
    ktype, body = parts[0], parts[1]
    if ktype not in ALLOWED:
        raise ValueError(f"unsupported key type {ktype!r}")
    try:
        load_ssh_public_key(f"{ktype} {body}".encode())
        blob = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("not a valid OpenSSH public key") from None
    sha = hashlib.sha256(blob)
    openssh = "SHA256:" + base64.b64encode(sha.digest()).decode().rstrip("=")
    line = " ".join([ktype, body] + parts[2:3])
    return ktype, line, sha.hexdigest(), openssh
