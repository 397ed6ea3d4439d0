"""Decoding a log never imports a module only the log names: importing runs the module's code, and a colleague's
log is not trusted. A class of a tagged value (Enum, namedtuple, dataclass) and a module output are found among
the modules already imported, a fixed list of side-effect-free standard library modules, and the modules the
replayed cell's own import statements import; anything else is a miss that names the module, and the cell runs."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from shells import Shell

from durable_nb.codecs import seal
from durable_nb.codecs.reference import cell_imports, loaded_module
from durable_nb.errors import DecodeError

PAYLOAD = "durable_nb_planted_payload"


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module that writes a file when imported: what a crafted log would name."""
    where = tmp_path / "site"
    where.mkdir()
    marker = tmp_path / "imported.txt"
    (where / f"{PAYLOAD}.py").write_text(
        f"import enum, pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "class HTTPStatus(enum.IntEnum):\n    OK = 200\n")
    monkeypatch.syspath_prepend(str(where))
    monkeypatch.delitem(sys.modules, PAYLOAD, raising=False)
    return marker


def _retarget(db: Path, name: str, old: str, new: str) -> None:
    """What an attacker does to a log: point a stored value at another module, and seal the edit (the seal is
    a checksum against damage, not a signature)."""
    conn = sqlite3.connect(db)
    with conn:
        meta, target = conn.execute("SELECT meta, target FROM output WHERE name = ?", (name,)).fetchone()
        doc = json.loads(meta)
        doc.pop("seal", None)
        if "inline" in doc:
            doc["inline"] = doc["inline"].replace(json.dumps(old), json.dumps(new))
        edited = json.dumps(seal(doc)) if doc else meta
        conn.execute("UPDATE output SET meta = ?, target = ? WHERE name = ?",
                     (edited, target and target.replace(old, new), name))
    conn.close()


@pytest.mark.parametrize(("setup", "cell", "name", "old"), [
    ("from http import HTTPStatus", "status = [HTTPStatus.OK]", "status", "http"),  # a tagged Enum member
    ("", "import json as codec", "codec", "json"),  # a module output
], ids=["tagged-enum", "module-output"])
def test_a_crafted_log_naming_another_module_imports_nothing_and_the_cell_runs(
        new_shell: Callable[[], Shell], log_location: Path, planted: Path, setup: str, cell: str, name: str,
        old: str) -> None:
    sh = new_shell()
    sh.run(setup)
    sh.durable(cell)
    assert sh.last_status()["state"] == "recorded"
    want = sh.ns[name]
    _retarget(log_location, name, old, PAYLOAD)

    sh = new_shell()
    sh.run(setup)
    sh.durable(cell)
    status = sh.last_status()
    assert status["state"] == "recorded", status  # it ran: the crafted value was not replayed
    assert PAYLOAD in status["reason"] and "not imported in this kernel" in status["reason"], status
    assert not planted.exists() and PAYLOAD not in sys.modules
    assert sh.ns[name] == want


def test_the_cells_own_imports_and_fixed_stdlib_modules_may_be_imported(planted: Path) -> None:
    with pytest.raises(DecodeError, match=f"needs module {PAYLOAD}, which is not imported in this kernel"):
        loaded_module(PAYLOAD, "class x.C")
    assert not planted.exists()
    with cell_imports((f"{PAYLOAD}.HTTPStatus", PAYLOAD)):  # `from m import HTTPStatus` names both
        assert loaded_module(PAYLOAD, "class x.C").HTTPStatus.OK == 200
    assert planted.exists()
    # another package's import does not let this one in
    with cell_imports(("numpy",)), pytest.raises(DecodeError, match="not imported"):
        loaded_module("durable_nb_not_there", "class y.C")
    assert loaded_module("zoneinfo", "class zoneinfo.ZoneInfo").__name__ == "zoneinfo"


def test_a_submodule_a_star_import_binds_replays(new_shell: Callable[[], Shell], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`from numpy import *` binds numpy.char, a submodule numpy loads on first access: running the cell imports
    it, so its replay may too (it ran again instead). A submodule the package's __all__ does not name is not."""
    package = tmp_path / "site" / "starpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import importlib\n__all__ = ['helper', 'VALUE']\nVALUE = 1\n"
        "def __getattr__(name):\n    if name in ('helper', 'hidden'):\n"
        "        return importlib.import_module('.' + name, __name__)\n    raise AttributeError(name)\n")
    (package / "helper.py").write_text("X = 5\n")
    (package / "hidden.py").write_text("Y = 6\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cell = "from starpkg import *\ny = helper.X * VALUE"
    new_shell().durable(cell)
    for name in ("starpkg", "starpkg.helper"):
        monkeypatch.delitem(sys.modules, name)
    second = new_shell()
    second.durable(cell)
    assert second.last_status()["state"] == "replayed" and second.ns["helper"].X == 5 and second.ns["y"] == 5
    with cell_imports(("starpkg", "starpkg.*")), pytest.raises(DecodeError, match=r"starpkg\.hidden"):
        loaded_module("starpkg.hidden", "module starpkg.hidden (bound to hidden)")
    assert "starpkg.hidden" not in sys.modules
