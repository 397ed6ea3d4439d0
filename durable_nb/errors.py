"""Named exceptions. Each message says what happened, to which file / cell / variable, and what to do."""

from __future__ import annotations


class DurableError(Exception):
    """Base class of every error durable_nb raises on purpose."""


class LogError(DurableError):
    """The log file cannot be used as asked."""


class NotALogError(LogError):
    """The file exists but is not a SQLite database (or not a durable_nb log)."""


class CorruptLogError(LogError):
    """SQLite reports the file as malformed."""


class NewerLogError(LogError):
    """The log was written by a newer durable_nb; this version must not write it."""


class LogTransactionLost(LogError):
    """A transaction on a server's log was lost through no fault of its own (the connection dropped, or the
    server chose it as a deadlock's victim): nothing of it was committed, and written again it may succeed (the
    next BEGIN reconnects)."""


class LogNotWritableError(LogError):
    """The log (or its folder) cannot be written: read-only location, full disk, permissions."""


class Unfingerprintable(DurableError):
    """A value's content cannot be fingerprinted (generator, lock, socket...): the cell must run."""


class EncodeError(DurableError):
    """A value cannot be stored by any codec."""


class DecodeError(DurableError):
    """A stored value cannot be loaded here (missing module, tampered bytes, untrusted pickle...)."""


class UntrustedError(DecodeError):
    """A pickled value comes from a log this user has not chosen to trust."""


class NotRecordedError(DurableError):
    """The log has no such execution, run or recorded variable."""


class DatabaseURLError(LogError):
    """A PostgreSQL log address that libpq (or durable_nb's own `schema` parameter) does not accept."""


class SigningKeyError(DurableError):
    """A signing key file (this user's, or a teammate's to trust) cannot be read, written or understood."""
