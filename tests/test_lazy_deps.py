"""psycopg and cryptography are dependencies, but `import durable_nb` (and a SQLite user's session) never pays
for them: they load when a PostgreSQL URL is parsed or a signature is made."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("psycopg", "psycopg_pool", "cryptography")


def _imported_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


def test_import_durable_nb_loads_neither_psycopg_nor_cryptography() -> None:
    assert _imported_after("import durable_nb, durable_nb.magics, durable_nb.pg_url, durable_nb.keys\n"
                           "durable_nb.pg_url.is_postgres_url('x.db'); durable_nb.keys.keys_dir()") == []


def test_they_load_when_used() -> None:
    assert _imported_after("from durable_nb import pg_url; pg_url.parse('postgresql://h/db')") == ["psycopg"]
    assert _imported_after("from durable_nb import keys; keys.PublicKey(bytes(32)).fingerprint") == []
    assert "cryptography" in _imported_after("from durable_nb import keys\n"
                                             "keys.verify(bytes(32), bytes(64), b'x')")


def test_load_ext_and_a_scripts_first_call_import_only_what_they_use() -> None:
    """%load_ext durable_nb imports no codec, fingerprint or activity machinery; a plain script's first activity
    call does not import IPython or asyncio (asking `sys.modules` whether a notebook runs is enough), nor
    dataclasses and inspect, nor build a typing.NamedTuple of ours (durable_nb.record says why), nor the codec
    of a library it never imported (nor the tagged codec: json takes its plain result), nor the PostgreSQL
    backend, nor C modules it has no use for (each costs a shared library's load)."""
    probe = ("import sys\nimport durable_nb.magics\n"
             "print(sorted(m for m in ('durable_nb.codecs', 'durable_nb.fingerprint', 'durable_nb.log.calls', "
             "'durable_nb.cell', 'pandas', 'numpy') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() \
        == "[]"
    script = ("import os, sys, tempfile\nos.chdir(tempfile.mkdtemp())\nimport durable_nb\n"
              "@durable_nb.activity\ndef double(x):\n    return 2 * x\n"
              "assert double(21) == 42\n"
              "ours = [m for m in list(sys.modules.values()) if m.__name__.startswith('durable_nb')]\n"
              "named = [f'{m.__name__}.{k}' for m in ours for k, v in vars(m).items()\n"
              "         if isinstance(v, type) and issubclass(v, tuple) and hasattr(v, '_fields')]\n"
              "print(sorted(m for m in ('IPython', 'asyncio', 'pandas', 'dataclasses', 'inspect', 'pickle',"
              " 'durable_nb.log.pg_connect', 'sysconfig', 'mmap', 'array', 'base64', 'contextvars',"
              " *(f'durable_nb.codecs.{c}' for c in ('arrow', 'npy', 'nprandom', 'polars', 'arrow_ipc', 'xarray',"
              " 'sparse', 'torch', 'tagged', 'reference'))) if m in sys.modules)"
              " + named)")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip() \
        == "[]"
