"""Torture (issue 17): copies of a real log, each with random bytes flipped in one region (the header, index
b-tree pages, blob chunk pages, the other tables' pages, the WAL). On every copy: opening, replaying in a kernel
(an IPython shell), `history`, `load`, `export` and `verify` either work with verified content or fail with one
clear message (a DurableError, one line on the CLI's stderr); no traceback reaches the user; no damaged value
is ever decoded (every value a replay or `load` returns equals what was recorded).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from shells import Shell
from torture import digest, figure, size

from durable_nb import DurableLog, session
from durable_nb.errors import DurableError
from durable_nb.log import connect as connect_module
from durable_nb.log.maintenance import export
from durable_nb.trust import verify_log

COPIES = int(os.environ.get("DURABLE_NB_TORTURE_COPIES", size(100, 300)))
CLI_COPIES = int(os.environ.get("DURABLE_NB_TORTURE_CLI_COPIES", size(10, 100)))
REGIONS = ("header", "index", "chunk", "table", "wal")

CELLS = {
    "arr": "import numpy as np\narr = np.random.default_rng(1).random(1_400_000)",  # 11 MB: two chunks
    "frame": "import pandas as pd\nframe = pd.DataFrame({'a': np.arange(50_000) * 0.5, "
             "'b': [f's{i % 97}' for i in range(50_000)]})",
    "small": "small = {'k': list(range(100)), 'name': 'torture'}",
    "text": "text = 'é' * 70_000 + str(sorted({3, 1, 2}))",
    "acts": "from durable_nb import activity\n@activity\ndef tw(i):\n    return i * 2\n"
            "acts = [tw(i) for i in range(300)]",
}


def build_log(folder: Path, make: Callable[[], Shell]) -> tuple[dict[str, str], Path]:
    """A real log (cells recorded by a shell, activity calls) and a WAL snapshot holding its last records."""
    sh = make()
    for body in CELLS.values():
        sh.durable(body)
    sh.durable("late = [1, 2, 3]")
    expected = {name: digest(sh.ns[name]) for name in [*CELLS, "late"]}
    db = folder / "t.durable.db"
    # The WAL copy: the records still in the -wal file (the background checkpoint is held off).
    wal_dir = folder / "wal"
    wal_dir.mkdir()
    shutil.copy(db, wal_dir / db.name)
    shutil.copy(db.with_name(db.name + "-wal"), wal_dir / (db.name + "-wal"))
    session.close_log()
    conn = sqlite3.connect(db)
    try:  # the .db copies: everything folded into the file
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        conn.close()
    return expected, wal_dir


def pages(db: Path) -> dict[str, list[tuple[int, int, int]]]:
    """(page number, bytes in its header and cell pointers, bytes of cell content) by region, from dbstat."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, pageno, pagetype, ncell, unused, pgsize FROM dbstat").fetchall()
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()
    found: dict[str, list[tuple[int, int, int]]] = {"index": [], "chunk": [], "table": []}
    for name, pageno, pagetype, ncell, unused, pgsize in rows:
        head = (12 if pagetype == "internal" else 8) + 2 * ncell if pagetype != "overflow" else 4
        content = max(pgsize - unused - head, 0)
        where = "index" if name in indexes or pagetype == "internal" else "chunk" if name == "chunk" else "table"
        found[where].append((pageno, head, content))
    found["page_size"] = [(int(rows[0][5]), 0, 0)]
    return found


def flip(path: Path, rng: random.Random, region: str, layout: dict[str, list[tuple[int, int, int]]]) -> str:
    """Flip 1-16 random bytes of `region` in place, in bytes the page uses (its header, cell pointers and cell
    content; the free space between them is never read); returns where."""
    data = bytearray(path.read_bytes())
    page_size = layout["page_size"][0][0]
    if region in ("header", "wal"):
        hi = 100 if region == "header" else len(data)
        spots = sorted(rng.randrange(0, hi) for _ in range(rng.randint(1, 16)))
    else:
        page, head, content = rng.choice([p for p in layout[region] if p[0] * page_size <= len(data)])
        start = (page - 1) * page_size + (100 if page == 1 else 0)
        end = page * page_size
        used = [*range(start, start + head), *range(end - content, end)]
        spots = sorted(rng.choice(used) for _ in range(rng.randint(1, 16)))
    for spot in spots:
        data[spot] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return f"{region} bytes {spots[0]}..{spots[-1]}"


class Outcome:
    def __init__(self) -> None:
        self.detected = 0
        self.harmless = 0
        self.errors: dict[str, int] = {}

    def error(self, what: str, exc: DurableError) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        assert str(exc).strip() and "Traceback" not in str(exc), f"{what}: an unclear message: {exc!r}"


def api_round(copy: Path, expected: dict[str, str], outcome: Outcome) -> bool:
    """Open, history, load, export, verify through the Python API; True when something reported damage."""
    damaged = False
    try:
        with DurableLog(copy) as log:
            try:
                frame = log.history()
                assert len(frame) >= 0
            except DurableError as exc:
                outcome.error("history", exc)
                damaged = True
            for name, want in expected.items():
                if name == "acts":
                    continue
                try:
                    got = log.load(name)
                except DurableError as exc:
                    outcome.error("load", exc)
                    damaged = True
                    continue
                assert digest(got) == want, f"load({name!r}) decoded a damaged value from {copy}"
    except DurableError as exc:
        outcome.error("open", exc)
        damaged = True
    try:
        export(copy, copy.with_name("exported.durable.db"), force=True)
    except DurableError as exc:
        outcome.error("export", exc)
        damaged = True
    try:
        review = verify_log(copy)
        damaged = damaged or not review.ok
    except DurableError as exc:
        outcome.error("verify", exc)
        damaged = True
    return damaged


def replay_round(copy: Path, expected: dict[str, str]) -> tuple[int, bool]:
    """A new kernel (shell) on the damaged log runs every cell: it replays verified values or runs the cell;
    nothing may raise out of a cell. Returns (values replayed, whether any cell re-ran or ran unrecorded)."""
    session.close_log()
    sh = Shell(copy)
    replayed, fallback = 0, False
    try:
        for name, body in CELLS.items():
            shown = len(sh.statuses())
            sh.durable(body)  # raises whatever reached the user
            assert digest(sh.ns[name]) == expected[name], f"cell {name} produced a damaged value from {copy}"
            states = [s["state"] for s in sh.statuses()[shown:]]
            replayed += states[-1:] == ["replayed"]
            fallback = fallback or states[-1:] != ["replayed"]
    finally:
        session.close_log()
        InteractiveShell.clear_instance()
    return replayed, fallback


def cli_round(copy: Path) -> list[str]:
    """history, export and verify on the CLI: exit 0, or 1 with one clear line on stderr; never a traceback."""
    cli = Path(sys.executable).parent / "durable-nb"
    messages = []
    for verb in (["history", str(copy)], ["export", str(copy), "-o", str(copy.with_name("cli-export.db")),
                                          "--force"], ["verify", str(copy)]):
        done = subprocess.run([str(cli), *verb], capture_output=True, text=True, timeout=120)
        assert "Traceback" not in done.stderr, f"durable-nb {verb[0]} on {copy}:\n{done.stderr}"
        assert done.returncode in (0, 1), (verb, done.returncode, done.stderr)
        if done.returncode == 1 and done.stderr.strip():
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"durable-nb {verb[0]}: "), done.stderr
            messages.append(lines[0])
    return messages


def test_random_byte_flips_are_detected_or_harmless(tmp_path: Path, new_shell: Callable[[], Shell],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connect_module, "CHECKPOINT_DELAY", 3600.0)  # keep the WAL snapshot's frames in it
    expected, wal_dir = build_log(tmp_path, new_shell)
    monkeypatch.setattr(connect_module, "CHECKPOINT_DELAY", 1.0)
    base = tmp_path / "t.durable.db"
    layout = pages(base)
    rng = random.Random(int(os.environ.get("DURABLE_NB_TORTURE_SEED", "1717")))
    outcome = Outcome()
    replays = fallbacks = 0
    cli_failures: list[str] = []
    by_region: dict[str, int] = {}
    t0 = time.monotonic()
    for i in range(COPIES):
        region = REGIONS[i % len(REGIONS)]
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        copy = folder / "t.durable.db"
        if region == "wal":
            shutil.copy(wal_dir / base.name, copy)
            shutil.copy(wal_dir / (base.name + "-wal"), folder / (base.name + "-wal"))
            flip(folder / (base.name + "-wal"), rng, region, layout)
        else:
            shutil.copy(base, copy)
            flip(copy, rng, region, layout)
        damaged = api_round(copy, expected, outcome)
        if i < CLI_COPIES:
            found = cli_round(copy)
            cli_failures += found
            damaged = damaged or bool(found)
        got, fell_back = replay_round(copy, expected)
        replays += got
        fallbacks += fell_back
        damaged = damaged or fell_back
        outcome.detected += damaged
        outcome.harmless += not damaged
        by_region[region] = by_region.get(region, 0) + damaged
        shutil.rmtree(folder, ignore_errors=True)  # a background checkpoint may still hold a file there
    figure("corruption", copies=COPIES, detected=outcome.detected,
           harmless_all_content_verified=outcome.harmless, detected_by_region=by_region,
           clear_errors_by_operation=outcome.errors, verified_replays=replays, cells_run_instead=fallbacks,
           cli_clear_failures=len(cli_failures), damaged_values_decoded=0,
           seconds=round(time.monotonic() - t0))
    assert outcome.detected + outcome.harmless == COPIES
    assert outcome.detected >= COPIES // 3, "most flips hit data the log uses; too few were noticed"
