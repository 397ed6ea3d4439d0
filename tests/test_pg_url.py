"""PostgreSQL log addresses (durable_nb/pg_url.py): parsing, libpq pass-through, and passwords never shown."""

from __future__ import annotations

import psycopg
import pytest
from pg_server import PASSWORD_ROLE, SUPERUSER, PostgresServer

from durable_nb import pg_url
from durable_nb.errors import DatabaseURLError

SECRET = "s3cr:et@pw"  # a ':' and an '@' so that splitting the userinfo naively would leak part of it


def _quoted(secret: str) -> str:
    from urllib.parse import quote

    return quote(secret, safe="")


@pytest.mark.parametrize(("url", "schema", "conninfo"), [
    ("postgresql://user@host:5432/dbname?schema=analysis", "analysis", "postgresql://user@host:5432/dbname"),
    ("postgres://user@host/dbname", None, "postgres://user@host/dbname"),
    ("POSTGRESQL://h/db?sslmode=require&schema=a&connect_timeout=3", "a",
     "postgresql://h/db?sslmode=require&connect_timeout=3"),
    # libpq's own syntax passes through untouched: several hosts, a socket folder, IPv6, `+` kept literally.
    ("postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write", None,
     "postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write"),
    ("postgresql:///db?host=%2Ftmp%2Fsock&schema=an%61lysis", "analysis", "postgresql:///db?host=%2Ftmp%2Fsock"),
    ("postgresql://[::1]:5432/db?application_name=a+b", None, "postgresql://[::1]:5432/db?application_name=a+b"),
])
def test_parse_splits_off_schema_and_keeps_the_rest_as_typed(url: str, schema: str | None, conninfo: str) -> None:
    target = pg_url.parse(url)
    assert (target.schema, target.conninfo) == (schema, conninfo)
    assert pg_url.is_postgres_url(url)


@pytest.mark.parametrize(("url", "problem"), [
    ("sqlite:///x.db", "must start with postgresql://"),
    ("postgresql://h/db?bogus=1", 'invalid URI query parameter: "bogus"'),
    ("postgresql://h/db?schema=", "not a usable PostgreSQL schema name"),
    ("postgresql://h/db?schema=" + "x" * 64, "1 to 63 bytes"),
    ("postgresql://h/db?schema=a&schema=b", "given 2 times"),
    ("postgresql://[::1/db", 'matching "]"'),
])
def test_bad_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(DatabaseURLError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        pg_url.parse(url)


@pytest.mark.parametrize("url", [
    f"postgresql://alice:{_quoted(SECRET)}@db.example:5432/team?schema=analysis",
    f"postgresql://alice@db.example/team?password={_quoted(SECRET)}&sslmode=require",
    f"postgresql://alice@db.example/team?sslpassword={_quoted(SECRET)}",
    f"postgresql://alice:{SECRET}@db.example/team",  # not percent-encoded: still never shown
])
def test_display_never_holds_the_password(url: str) -> None:
    target = pg_url.parse(url)
    for shown in (target.display, str(target), repr(target), pg_url.display_url(url)):
        assert "s3cr" not in shown and "pw" not in shown.replace("postgresql", "")
        assert "postgresql://alice@db.example" in shown
    assert "s3cr" in target.conninfo  # the secret still reaches libpq


@pytest.mark.parametrize("url", [
    "postgresql://alice:ab%zzcd@h/db",  # libpq quotes the bad token, which is the password
    "postgresql://alice@h/db?password=ab%zzcd",
    "postgresql://alice:abzzcd@[h/db",  # libpq quotes the whole URL
])
def test_errors_about_a_url_mask_its_password(url: str) -> None:
    with pytest.raises(DatabaseURLError) as err:
        pg_url.parse(url)
    assert "abzzcd" not in str(err.value) and "ab%zzcd" not in str(err.value)
    assert "postgresql://alice@" in str(err.value)


def test_keyword_conninfo_is_shown_without_its_password() -> None:
    shown = pg_url.display_url("host=db password='a secret' dbname=team")
    assert "secret" not in shown and "host=db" in shown and "dbname=team" in shown
    assert "hunter2" not in pg_url.scrub("auth failed for hunter2", "host=db password=hunter2")


# -- against the real server ----------------------------------------------------------------------------------


def _settings(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[object, ...]:
    row = conn.execute("SELECT current_user, current_database(), current_setting('application_name'), "
                       "inet_server_port()").fetchone()
    assert row is not None
    return row


@pytest.mark.integration
def test_libpq_parameters_in_the_url_reach_the_server(postgres: PostgresServer, pg_database: str) -> None:
    target = pg_url.parse(postgres.url(pg_database, query="application_name=durable+test&sslmode=disable"
                                                          "&schema=analysis"))
    with psycopg.connect(target.conninfo) as conn:
        assert _settings(conn) == (SUPERUSER, pg_database, "durable+test", postgres.port)
    assert target.schema == "analysis"


@pytest.mark.integration
def test_pg_environment_fills_what_the_url_leaves_out(postgres: PostgresServer, pg_database: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PGHOST": "127.0.0.1", "PGPORT": str(postgres.port), "PGUSER": PASSWORD_ROLE,
                        "PGPASSWORD": postgres.password, "PGAPPNAME": "from-env"}.items():
        monkeypatch.setenv(name, value)
    target = pg_url.parse(f"postgresql:///{pg_database}?schema=analysis")
    with psycopg.connect(target.conninfo) as conn:
        assert _settings(conn) == (PASSWORD_ROLE, pg_database, "from-env", postgres.port)
    assert postgres.password not in target.display + repr(target)
    monkeypatch.setenv("PGPASSWORD", "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(target.conninfo).close()


@pytest.mark.integration
def test_password_in_the_url_reaches_the_server(postgres: PostgresServer, pg_database: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = postgres.url(pg_database, user=PASSWORD_ROLE, password=postgres.password, query="schema=s")
    target = pg_url.parse(url)
    with psycopg.connect(target.conninfo) as conn:
        assert _settings(conn)[0] == PASSWORD_ROLE
    assert postgres.password not in target.display
    assert target.display == f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{postgres.port}/{pg_database}?schema=s"
    # A wrong password's error, masked through the target, does not echo what was typed either.
    bad = pg_url.parse(postgres.url(pg_database, user=PASSWORD_ROLE, password="typo-secret"))
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(bad.conninfo).close()
    assert "typo-secret" not in bad.scrub(str(err.value))
