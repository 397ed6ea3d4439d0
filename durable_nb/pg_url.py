"""PostgreSQL log addresses: `postgresql://user@host:5432/dbname?schema=analysis` (or `postgres://`).

libpq owns the URL syntax (several hosts, `%2F`-encoded socket folders, `[::1]`, `sslmode=...` and every other
connection parameter), so the URL is handed to libpq as typed, minus the one parameter that is ours: `schema`,
the PostgreSQL schema the log's tables live in. Whatever the URL leaves out, libpq takes from the standard `PG*`
environment variables (PGHOST, PGPASSWORD, PGSSLMODE, ...) and ~/.pgpass when it connects: nothing here reads
them, so they behave exactly as in psql.

A password (in the URL, `password=` or `sslpassword=`) is a connection secret: `display` is the URL with every
secret removed, and is the only form to print, log or store.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from .errors import DatabaseURLError
from .record import Record

SCHEMES = ("postgresql://", "postgres://")
SCHEMA_PARAM = "schema"
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
# A PostgreSQL identifier is at most 63 bytes (NAMEDATALEN - 1); anything longer is silently truncated by the
# server, so two long schema names could name the same schema.
_MAX_IDENTIFIER = 63
# Patterns, compiled (and cached by re) when first used: a script's first call reads no PostgreSQL URL.
_CONTROL = r"[\x00-\x1f\x7f]"
_KEYWORD_SECRET = r"(?i)\b(?:ssl)?password\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)"


def is_postgres_url(text: object) -> bool:
    return isinstance(text, str) and text.lower().startswith(SCHEMES)


class PostgresTarget(Record):
    """Where a PostgreSQL log is. `conninfo` goes to psycopg/libpq and may hold a password: never show it."""

    __match_args__ = ("conninfo", "schema", "display")
    __slots__ = __match_args__

    def __init__(self, conninfo: str, schema: str | None, display: str) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.display = display

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"PostgresTarget(schema={self.schema!r}, display={self.display!r})"

    def scrub(self, text: str) -> str:
        """`text` (a libpq or server message about this target) with any secret of the URL masked."""
        return scrub(text, self.conninfo)


def parse(url: str) -> PostgresTarget:
    """Split off our `schema` parameter, check the rest with libpq's own parser, and derive the display form."""
    if not is_postgres_url(url):
        raise DatabaseURLError(f"{display_url(url)!r} is not a PostgreSQL URL: it must start with "
                               "postgresql:// or postgres://, e.g. postgresql://user@host:5432/dbname?schema=analysis")
    scheme, _, after = url.partition("://")
    base, _, query = f"{scheme.lower()}://{after}".partition("?")  # libpq knows the scheme in lower case only
    params = _pairs(query)
    schemas = [unquote(v) for k, v in params if unquote(k) == SCHEMA_PARAM]
    rest = [(k, v) for k, v in params if unquote(k) != SCHEMA_PARAM]
    if len(schemas) > 1:
        raise DatabaseURLError(f"{display_url(url)}: `schema` is given {len(schemas)} times; give it once")
    schema = _check_schema(schemas[0], url) if schemas else None
    conninfo = base + _query(rest)
    _check_with_libpq(conninfo, url)
    return PostgresTarget(conninfo, schema, display_url(url))


def _check_schema(schema: str, url: str) -> str:
    if not schema or len(schema.encode()) > _MAX_IDENTIFIER or re.search(_CONTROL, schema):
        raise DatabaseURLError(f"{display_url(url)}: schema {schema!r} is not a usable PostgreSQL schema name "
                               f"(1 to {_MAX_IDENTIFIER} bytes, no control characters)")
    return schema


def _check_with_libpq(conninfo: str, url: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as e:
        # libpq's message quotes the bad part, which can be a password ("invalid percent-encoded token").
        raise DatabaseURLError(f"{display_url(url)} is not a valid PostgreSQL URL: {scrub(str(e), url).strip()}. "
                               "The URL "
                               "takes libpq's connection parameters (https://www.postgresql.org/docs/current/libpq-connect.html)"
                               " plus durable_nb's `schema`.") from None


def scrub(text: str, url: str) -> str:
    """`text` with the URL itself shown without secrets and every secret of it (as typed and decoded) masked."""
    text = text.replace(url, display_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> set[str]:
    _, sep, rest = url.partition("://")
    if not sep:
        return {m.group(0).split("=", 1)[1].strip().strip("'") for m in re.finditer(_KEYWORD_SECRET, url)} - {""}
    base, _, query = rest.partition("?")
    userinfo, at, _ = base.partition("/")[0].rpartition("@")
    typed = [userinfo.partition(":")[2]] if at else []
    typed += [v for k, v in _pairs(query) if unquote(k) in _SECRET_PARAMS]
    return {s for v in typed for s in (v, unquote(v)) if s}


def display_url(url: str) -> str:
    """The URL without its secrets: the userinfo's password and any `password`/`sslpassword` parameter.
    Works on malformed text too (error messages show it), never raising."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a path, or libpq's key=value form, whose password may be quoted
        return re.sub(_KEYWORD_SECRET, "", url).strip()
    base, _, query = rest.partition("?")
    authority, slash, path = base.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at:
        user = unquote(userinfo.partition(":")[0])
        authority = (quote(user, safe="") + "@" if user else "") + hosts
    shown = f"{scheme}://{authority}{slash}{path}"
    return shown + _query([(k, v) for k, v in _pairs(query) if unquote(k) not in _SECRET_PARAMS])


def _pairs(query: str) -> list[tuple[str, str]]:
    """The query's key=value pairs as typed. Never decoded and re-encoded: libpq decodes %XX but not `+`,
    unlike HTML forms, and must see every other parameter exactly as the user wrote it."""
    return [(k, v) for k, _, v in (pair.partition("=") for pair in query.split("&") if pair)]


def _query(pairs: list[tuple[str, str]]) -> str:
    return "?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else ""
