"""Signing primitives: a per-user secret, and the HMAC over a stored value's description and bytes.

Unpickling runs code, so a pickled value loads only when its output record carries an HMAC made with this
user's secret: recorded here, or re-signed by this user after reviewing a colleague's log. The signature
covers the codec, its version, its metadata (which holds a BLAKE2b digest of the pickle stream) and the
content hashes of every blob, so neither the record nor the bytes can be swapped without detection.
Reviewing and trusting whole logs is `durable_nb.trust`; this module only signs and verifies.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

KEY_ENV = "DURABLE_NB_SECRET_FILE"


def secret_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "durable_nb" / "secret"


@lru_cache(maxsize=8)
def _secret(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
    return bytes.fromhex(path.read_text().strip())


def user_secret() -> bytes:
    return _secret_for(os.environ.get(KEY_ENV), os.environ.get("XDG_DATA_HOME"))


@lru_cache(maxsize=8)
def _secret_for(key_env: str | None, data_home: str | None) -> bytes:
    """Keyed by the variables that choose the file: signing every stored value must not cost path work."""
    return _secret(secret_path())


def payload(codec: str, version: int, meta: dict[str, Any], blob_hashes: list[str]) -> bytes:
    return json.dumps([codec, version, meta, blob_hashes], sort_keys=True, separators=(",", ":")).encode()


DIGEST_BYTES = 16


def digest(data: bytes) -> bytes:
    """A payload's BLAKE2b-128 digest: what a signed batch lists for each value it signs."""
    import hashlib  # deferred for start-up speed (see sign); only pickled values are digested

    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def sign(data: bytes) -> str:
    import hmac  # deferred for start-up speed: hashlib loads OpenSSL (~3 ms), and values of safe codecs never sign

    return hmac.new(user_secret(), data, "sha256").hexdigest()


def verify(data: bytes, signature: str | None) -> bool:
    import hmac  # deferred for start-up speed (see sign)

    return bool(signature) and hmac.compare_digest(sign(data), str(signature))
