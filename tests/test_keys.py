"""Ed25519 key pairs and the trusted-keys store (durable_nb/keys.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_nb import keys
from durable_nb.errors import SigningKeyError


@pytest.fixture
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "keys"
    monkeypatch.setenv(keys.KEYS_ENV, str(folder))
    keys._user_key.cache_clear()
    yield folder
    keys._user_key.cache_clear()


def _ssh_keygen(path: Path, kind: str = "ed25519", comment: str = "bob@laptop") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub")


def test_key_pair_is_created_on_first_use_private_to_the_user(key_dir: Path) -> None:
    assert not key_dir.exists()
    key = keys.user_key()
    private, public = key_dir / "signing_key", key_dir / "signing_key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert keys.PublicKey.from_text(public.read_text(), "pub").raw == key.public.raw
    keys._user_key.cache_clear()  # as a new kernel would: the same key is read back, not a new one made
    assert keys.user_key().public.raw == key.public.raw


def test_default_folder_is_the_users_config_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(keys.KEYS_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert keys.keys_dir() == tmp_path / "durable_nb"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert keys.keys_dir() == Path.home() / ".config" / "durable_nb"


def test_sign_and_verify(key_dir: Path) -> None:
    data = b'["pickle",3,{"blake2b":"00"},["abc"]]'
    signature = keys.sign(data)
    me = keys.user_key().public
    assert len(signature) == keys.SIGNATURE_BYTES
    assert keys.verify(me, signature, data)
    assert keys.verify(me.raw, signature, data)  # the raw bytes a log records work as well
    assert not keys.verify(me, signature, data + b" ")
    assert not keys.verify(me, bytes([signature[0] ^ 1]) + signature[1:], data)
    assert not keys.verify(me, None, data)
    assert not keys.verify(me, signature[:-1], data)
    other = key_dir.parent / "other"
    _ssh_keygen(other)
    stranger = keys.PublicKey.from_text(other.with_suffix(".pub").read_text(), "other")
    assert not keys.verify(stranger, signature, data)


def test_fingerprint_is_the_one_ssh_keygen_prints(key_dir: Path) -> None:
    key = keys.user_key()
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key_dir / "signing_key.pub")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == key.public.fingerprint
    assert key.public.comment and out[2] == key.public.comment


def test_concurrent_first_use_creates_one_key(key_dir: Path) -> None:
    """Several kernels of one user starting at once must all sign with the same key."""
    code = "from durable_nb import keys; print(keys.user_key().public.hex)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    seen = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert seen == {keys.user_key().public.hex}
    assert sorted(p.name for p in key_dir.iterdir()) == ["signing_key", "signing_key.pub"]  # no temp files left


def test_private_key_readable_by_others_is_refused(key_dir: Path) -> None:
    keys.user_key()
    os.chmod(key_dir / "signing_key", 0o644)
    keys._user_key.cache_clear()
    with pytest.raises(SigningKeyError, match=r"can be read by other users.*chmod 600"):
        keys.user_key()


def test_damaged_private_key_says_what_to_do(key_dir: Path) -> None:
    key_dir.mkdir(mode=0o700)
    fd = os.open(key_dir / "signing_key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    with pytest.raises(SigningKeyError, match=r"signing_key cannot be loaded.*Move it away"):
        keys.user_key()


def test_unwritable_folder_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(keys.KEYS_ENV, str(blocker / "keys"))  # a folder inside a file cannot exist
    keys._user_key.cache_clear()
    with pytest.raises(SigningKeyError, match=keys.KEYS_ENV):
        keys.user_key()


# -- the trusted-keys store -----------------------------------------------------------------------------------


def test_trust_add_list_remove(key_dir: Path) -> None:
    store = keys.TrustedKeys()
    bob = store.add_file(_ssh_keygen(key_dir.parent / "bob"))
    carol = store.add_file(_ssh_keygen(key_dir.parent / "carol", comment="carol@ci"), name="carol")
    assert [k.comment for k in store.listed()] == ["bob@laptop", "carol"]
    assert store.is_trusted(bob) and store.is_trusted(carol.raw)
    assert store.is_trusted(keys.user_key().public)  # one's own key, without a file
    store.remove("bob@laptop")
    assert not store.is_trusted(bob)
    store.remove(carol.fingerprint[:15])  # "SHA256:" and 8 characters
    assert store.listed() == []
    with pytest.raises(SigningKeyError, match="no trusted key matches 'carol'"):
        store.remove("carol")


def test_trusting_a_key_again_renames_it_and_ambiguity_is_refused(key_dir: Path) -> None:
    store = keys.TrustedKeys()
    one = store.add_file(_ssh_keygen(key_dir.parent / "a", comment="ci"))
    store.add_file(_ssh_keygen(key_dir.parent / "b", comment="ci"))
    with pytest.raises(SigningKeyError, match="matches 2 trusted keys"):
        store.remove("ci")
    store.add(one, name="ci-old")
    assert sorted(k.comment for k in store.listed()) == ["ci", "ci-old"]
    assert store.remove(one.hex).comment == "ci-old"


def test_a_key_file_edited_to_hold_another_key_trusts_nothing(key_dir: Path) -> None:
    store = keys.TrustedKeys()
    bob = store.add_file(_ssh_keygen(key_dir.parent / "bob"))
    mallory = keys.PublicKey.from_text(_ssh_keygen(key_dir.parent / "mallory").read_text(), "m")
    (store.folder / f"{bob.hex}.pub").write_text(mallory.openssh() + "\n")
    assert not store.is_trusted(bob) and not store.is_trusted(mallory)
    assert store.listed() == []


@pytest.mark.parametrize(("content", "problem"), [
    (None, "holds a private key: never share"),
    ("rsa", "not an Ed25519 key"),
    ("ssh-ed25519 AAAAnotbase64!! x", "is not a public key file"),
    ("", "is not a public key file"),
])
def test_bad_key_files_are_refused_clearly(key_dir: Path, content: str | None, problem: str) -> None:
    path = key_dir.parent / "key"
    if content is None:
        _ssh_keygen(path)  # `path` itself is the private half
    elif content == "rsa":
        path = _ssh_keygen(path, kind="rsa")
    else:
        path.write_text(content)
    with pytest.raises(SigningKeyError, match=problem):
        keys.TrustedKeys().add_file(path)
    assert keys.TrustedKeys().listed() == []


def test_pem_public_keys_are_accepted(key_dir: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = key_dir.parent / "dana.pem"
    path.write_bytes(pem)
    added = keys.TrustedKeys().add_file(path, name="dana")
    assert added.raw == public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keys.TrustedKeys().is_trusted(added)


def test_missing_key_file(key_dir: Path) -> None:
    with pytest.raises(SigningKeyError, match=r"cannot read the key file .*nope\.pub"):
        keys.TrustedKeys().add_file(key_dir.parent / "nope.pub")


def test_public_key_sizes_and_hex() -> None:
    with pytest.raises(SigningKeyError, match="32 bytes, not 31"):
        keys.PublicKey(bytes(31))
    with pytest.raises(SigningKeyError, match="not a hex-encoded"):
        keys.PublicKey.from_hex("zz")
    key = keys.PublicKey(bytes(range(32)), "x")
    assert keys.PublicKey.from_hex(key.hex) == keys.PublicKey(key.raw)
    assert key.openssh().startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI") and key.openssh().endswith(" x")
