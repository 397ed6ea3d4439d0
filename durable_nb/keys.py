"""Ed25519 signatures for values shared through a team log: each user's key pair, and the keys they trust.

A per-log HMAC secret cannot be shared with a team without sharing the power to forge. Here each user signs
what they record with their own private key and the log keeps the signer's public key beside the value; a reader
replays a pickled value only when that public key is theirs or one they chose to trust. What gets signed is a
short payload that already holds the content hashes of the value's bytes (see signing.payload), never the
value itself: a signature costs the same for 1 KiB and 1 GiB.

Files, under $DURABLE_NB_KEYS_DIR or else $XDG_CONFIG_HOME/durable_nb (~/.config/durable_nb):
  signing_key       this user's private key (PKCS#8 PEM), mode 0600, created on first use
  signing_key.pub   its public half in OpenSSH format, the file to send to teammates
  trusted/<hex>.pub one file per trusted teammate key (OpenSSH format, the comment is their name)
Public keys use OpenSSH's format and fingerprints (SHA256:...), so `ssh-keygen -lf FILE` shows the same
fingerprint this module prints and an ordinary `ssh-keygen -t ed25519` key can be trusted too.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SigningKeyError
from .record import Record

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEYS_ENV = "DURABLE_NB_KEYS_DIR"
PRIVATE_NAME = "signing_key"
TRUSTED_DIR = "trusted"
KEY_TYPE = "ssh-ed25519"
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def keys_dir() -> Path:
    if os.environ.get(KEYS_ENV):
        return Path(os.environ[KEYS_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "durable_nb"


# -- public keys ----------------------------------------------------------------------------------------------


class PublicKey(Record):
    """An Ed25519 public key: its 32 raw bytes (what a log records beside a signed value) and a name."""

    __match_args__ = ("raw", "comment")
    __slots__ = __match_args__

    def __init__(self, raw: bytes, comment: str = "") -> None:
        if len(raw) != RAW_KEY_BYTES:
            raise SigningKeyError(f"an Ed25519 public key is {RAW_KEY_BYTES} bytes, not {len(raw)}")
        self.raw = raw
        self.comment = comment

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def fingerprint(self) -> str:
        """OpenSSH's SHA256 fingerprint, as `ssh-keygen -l` prints it."""
        import hashlib  # deferred for start-up speed: it loads OpenSSL (~3 ms); recording never asks a fingerprint

        digest = hashlib.sha256(self._wire()).digest()
        return "SHA256:" + binascii.b2a_base64(digest, newline=False).decode().rstrip("=")

    def openssh(self) -> str:
        line = f"{KEY_TYPE} {binascii.b2a_base64(self._wire(), newline=False).decode()}"
        return f"{line} {self.comment}" if self.comment else line

    def shown(self) -> str:
        return f"{self.fingerprint} {self.comment}".rstrip()

    def _wire(self) -> bytes:
        # RFC 8709: string "ssh-ed25519", string key; each string prefixed by its uint32 length.
        return b"".join(struct.pack(">I", len(p)) + p for p in (KEY_TYPE.encode(), self.raw))

    def same_key(self, other: PublicKey) -> bool:
        return self.raw == other.raw

    @classmethod
    def from_hex(cls, text: str, comment: str = "") -> PublicKey:
        try:
            return cls(bytes.fromhex(text), comment)
        except ValueError:
            raise SigningKeyError(f"{text[:80]!r} is not a hex-encoded Ed25519 public key") from None

    @classmethod
    def from_text(cls, text: str, source: str) -> PublicKey:
        """An OpenSSH public key line (`ssh-ed25519 AAAA... name`) or a PEM public key, as found in `source`."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        stripped = text.strip()
        if "PRIVATE KEY" in stripped:
            raise SigningKeyError(f"{source} holds a private key: never share or import it. Trust the public half "
                                  f"instead (the .pub file beside it, e.g. {PRIVATE_NAME}.pub).")
        comment = ""
        try:
            if stripped.startswith("-----BEGIN"):
                key = serialization.load_pem_public_key(stripped.encode())
            else:
                fields = stripped.split(None, 2)
                comment = fields[2].strip() if len(fields) == 3 else ""
                key = serialization.load_ssh_public_key(" ".join(fields[:2]).encode())
        except (ValueError, IndexError, TypeError) as e:
            raise SigningKeyError(f"{source} is not a public key file ({e}); expected one line like "
                                  f"'{KEY_TYPE} AAAA... name', e.g. a teammate's {PRIVATE_NAME}.pub") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"{source} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key: "
                                  f"durable_nb signs with Ed25519 only (`ssh-keygen -t ed25519` makes one)")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(raw, comment)


def verify(key: PublicKey | bytes, signature: bytes | None, data: bytes) -> bool:
    """Whether `signature` is `key`'s signature of `data` (False for a missing or malformed signature)."""
    from cryptography.exceptions import InvalidSignature

    if not signature or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        _verifier(key.raw if isinstance(key, PublicKey) else bytes(key)).verify(bytes(signature), data)
    except InvalidSignature:
        return False
    return True


@lru_cache(maxsize=256)
def _verifier(raw: bytes) -> Ed25519PublicKey:
    """A team log holds a handful of signers: parse each key once, not once per value."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise SigningKeyError(f"a recorded public key is not a valid Ed25519 key: {e}") from None


def matching(keys: Iterable[PublicKey], query: str) -> list[PublicKey]:
    """The keys whose name or hex is `query`, or whose fingerprint starts with it (at least 8 characters, with or
    without `SHA256:`)."""
    query = query.strip()
    wanted = query.removeprefix("SHA256:")
    return [k for k in keys if query in (k.comment, k.hex)
            or (len(wanted) >= 8 and k.fingerprint.removeprefix("SHA256:").startswith(wanted))]


# -- this user's key pair -------------------------------------------------------------------------------------


class SigningKey:
    """This user's private key, loaded from (or created at) `path`."""

    def __init__(self, private: Ed25519PrivateKey, path: Path) -> None:
        from cryptography.hazmat.primitives import serialization

        self._private = private
        self.path = path
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey(raw, _default_comment())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def _default_comment() -> str:
    import getpass  # deferred for start-up speed: it imports termios, and only a new key needs a name

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (some containers)
        user = str(os.getuid())
    return f"{user}@{host()}"


def host() -> str:
    """This machine's name in a log: its runs' host and its signers' key names. DURABLE_NB_HOST names it instead
    of its hostname (tests play several hosts on one machine)."""
    return os.environ.get("DURABLE_NB_HOST") or _hostname()


@lru_cache(maxsize=1)
def _hostname() -> str:
    # os.uname's node name is gethostname(2); the socket module would cost a script's first call ~3 ms.
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket  # deferred for start-up speed: only where os.uname is missing (Windows)

    return socket.gethostname()


def user_key() -> SigningKey:
    """This user's key pair, created with mode 0600 the first time any kernel of this user needs it."""
    return _user_key(keys_dir())


def sign(data: bytes) -> bytes:
    return user_key().sign(data)


@lru_cache(maxsize=8)
def _user_key(folder: Path) -> SigningKey:
    path = folder / PRIVATE_NAME
    if not path.exists():
        _create_private_key(path)
    key = _load_private_key(path)
    pub = path.with_name(PRIVATE_NAME + ".pub")
    if not pub.exists():
        _write_new(pub, (key.public.openssh() + "\n").encode(), 0o644)
    return key


def _create_private_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_new(path, pem, 0o600)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` whole or not at all: two kernels creating it at once both end up with the same file (the
    first link wins, the other's copy is dropped), and a reader never sees half a key."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise SigningKeyError(f"cannot write {path}: {e.strerror or e}. durable_nb keeps your signing key "
                              f"there; make the folder writable or point {KEYS_ENV} at another folder.") from None


def _load_private_key(path: Path) -> SigningKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"cannot read your signing key {path}: {e.strerror or e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"your signing key {path} can be read by other users (mode {stat.filemode(mode)}): "
                              f"anyone who reads it can sign values your kernels will unpickle. Run "
                              f"`chmod 600 {path}`.")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"your signing key {path} cannot be loaded ({e}). Move it away to get a new key "
                              "(values you signed with the old one then replay only after `durable-nb trust`).") \
            from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(private).__name__.removeprefix('_')}, not an Ed25519 key; "
                              "move it away to get a new key")
    return SigningKey(private, path)


# -- the keys this user trusts --------------------------------------------------------------------------------


class TrustedKeys:
    """The folder of teammates' public keys whose signed values replay here. This user's own key is always
    trusted without a file."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = (folder or keys_dir()) / TRUSTED_DIR

    def add_file(self, path: str | os.PathLike[str], name: str | None = None) -> PublicKey:
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise SigningKeyError(f"cannot read the key file {path}: {getattr(e, 'strerror', None) or e}") \
                from None
        return self.add(PublicKey.from_text(text, str(path)), name)

    def add(self, key: PublicKey, name: str | None = None) -> PublicKey:
        """Trust `key` (under `name`, else its comment). Adding a trusted key again renames it."""
        named = PublicKey(key.raw, (name if name is not None else key.comment).strip())
        target = self._file(named)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_text(named.openssh() + "\n")
            os.replace(tmp, target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SigningKeyError(f"cannot write {target}: {e.strerror or e}; make {self.folder} writable or "
                                  f"point {KEYS_ENV} at another folder") from None
        return named

    def listed(self) -> list[PublicKey]:
        return sorted(self._entries(), key=lambda k: (k.comment, k.fingerprint))

    def remove(self, query: str) -> PublicKey:
        """Stop trusting the one key whose fingerprint (or a prefix of at least 8 characters of it, with or
        without `SHA256:`), hex or name is `query`."""
        found = matching(self._entries(), query)
        if not found:
            listed = "; ".join(k.shown() for k in self.listed()) or "none"
            raise SigningKeyError(f"no trusted key matches {query!r} (trusted keys: {listed})")
        if len(found) > 1:
            raise SigningKeyError(f"{query!r} matches {len(found)} trusted keys: "
                                  f"{'; '.join(k.shown() for k in found)}; give a fingerprint instead")
        self._file(found[0]).unlink(missing_ok=True)
        return found[0]

    def is_trusted(self, key: PublicKey | bytes) -> bool:
        raw = key.raw if isinstance(key, PublicKey) else bytes(key)
        if raw == user_key().public.raw:
            return True
        path = self.folder / f"{raw.hex()}.pub"
        try:
            st = path.stat()
        except OSError:
            return False
        # The file's name says which key it trusts; its content must agree (a hand-edited file must not trust
        # another key than the one listed). Parsed once per version of the file.
        return _file_key(path, st.st_mtime_ns, st.st_size) == raw

    def _file(self, key: PublicKey) -> Path:
        return self.folder / f"{key.hex}.pub"

    def _entries(self) -> Iterator[PublicKey]:
        if not self.folder.is_dir():
            return
        for path in self.folder.glob("*.pub"):
            try:
                key = PublicKey.from_text(path.read_text(), str(path))
            except (OSError, UnicodeDecodeError, SigningKeyError):
                continue  # not a key we wrote; it trusts nothing (is_trusted re-reads the same way)
            if key.hex == path.stem:
                yield key


@lru_cache(maxsize=256)
def _file_key(path: Path, mtime_ns: int, size: int) -> bytes | None:
    try:
        return PublicKey.from_text(path.read_text(), str(path)).raw
    except (OSError, UnicodeDecodeError, SigningKeyError):
        return None
