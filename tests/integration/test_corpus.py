"""Replay fidelity on real notebooks (issue 11): make every code cell of a plain notebook durable, run it, restart
the kernel, Run All: every cell that succeeded must replay, showing the same outputs, into the same namespace.

For each notebook of tests/notebooks/ (fresh tmp folders, a fresh kernel per run, nbclient + ipykernel):
  (i)   the notebook as written, in its own folder (its activities, if any, get their own log), and once more in
        another folder with another hash seed, to tell the notebook's own volatility from the product's;
  (ii)  the durable variant (tests/corpus_runner.py: `%load_ext durable_nb` first, `%%durable` on every other code
        cell) in another folder: records everything into `<stem>.durable.db` beside it;
  (iii) the same durable notebook again in a new kernel, with another PYTHONHASHSEED (a restarted kernel gets a new
        one): every cell that succeeded in (ii) must say `replayed`.
A last plain cell prints the fingerprint of every user-visible variable; (i), (ii) and (iii) must agree.

`pytest -s` prints the corpus summary (cells replayed / cells that succeeded, Run All times of (iii) against (i)),
also written to test-output/corpus-summary.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from corpus_runner import STATUS_MIME, Run, corpus, durable_variant, kernel_env, load, run
from corpus_runner import copy_notebook as write_copy

pytestmark = pytest.mark.integration
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
NOTEBOOKS = corpus()

# What is legitimately volatile between two runs of the same code, and nothing else:
# - execution counts (the durable variant has one more cell) and error tracebacks (they show the transformed
#   `%%durable` cell and file names; the exception's type and message are compared);
# - how stdout/stderr text is split into stream messages (flush timing): adjacent stream outputs of one name are
#   joined before comparing;
# - image/png bytes (only their presence is compared, as asked of the corpus);
# - object addresses in reprs (`at 0x7f...`): the corpus avoids printing them, this is a guard;
# - scikit-learn's HTML estimator diagram numbers its elements with a per-process counter (`sk-container-id-3`).
_VOLATILE = [
    (re.compile(r" at 0x[0-9a-fA-F]+"), " at 0x…"),
    (re.compile(r"sk-(container|estimator)-id-\d+"), r"sk-\1-id-N"),
]
_COMPARED_MIME = ("text/plain", "text/html", "image/png")


def _normalize(text: str) -> str:
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text


def visible(cell: Any) -> list[tuple[str, ...]]:
    """A cell's visible outputs, durable status displays dropped, volatile parts normalized."""
    items: list[tuple[str, ...]] = []
    for out in cell.get("outputs", []):
        kind = out["output_type"]
        if kind == "stream":
            if items and items[-1][:2] == ("stream", out["name"]):
                items[-1] = ("stream", out["name"], items[-1][2] + out["text"])
            else:
                items.append(("stream", out["name"], out["text"]))
        elif kind == "error":
            items.append(("error", out["ename"], _normalize(out["evalue"])))
        else:
            data = out.get("data", {})
            if STATUS_MIME in data:
                continue
            shown: tuple[str, ...] = (kind, "mime: " + ",".join(sorted(data)))
            for mime in _COMPARED_MIME:
                if mime in data:
                    shown += (mime, "<present>" if mime == "image/png" else _normalize(_text(data[mime])))
            items.append(shown)
    return [(i[0], i[1], _normalize(i[2])) if i[0] == "stream" else i for i in items]


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def first_line(cell: Any) -> str:
    lines = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("%%durable")]
    return lines[0][:70] if lines else ""


def errors(cell: Any) -> list[str]:
    return [f"{o['ename']}: {o['evalue']}" for o in cell.get("outputs", []) if o["output_type"] == "error"]


def stored_statuses(cell: Any) -> list[dict[str, Any]]:
    return [o["data"][STATUS_MIME] for o in cell.get("outputs", []) if STATUS_MIME in o.get("data", {})]


def final_status(result: Run, cell_index: int, cell: Any, problems: list[str], where: str) -> dict[str, Any] | None:
    """The cell's final durable status. It is the last status payload the kernel sent for the cell (a
    display_data, then update_display_data in place); nbclient must have applied the updates to the stored
    output, which is checked here, so the stored notebook shows the same state."""
    sent = result.status_messages.get(cell_index, [])
    stored = stored_statuses(cell)
    if not sent:
        problems.append(f"{where}: no durable status display at all")
        return None
    if len(stored) != 1:
        problems.append(f"{where}: {len(stored)} durable status outputs stored, expected 1 (updated in place)")
    if stored and stored[-1] != sent[-1]:
        problems.append(f"{where}: the stored status output ({stored[-1].get('state')}) is not the last status "
                        f"the kernel sent ({sent[-1].get('state')}): update_display_data was not applied")
    return sent[-1]


def output_differences(a: Run, b: Run) -> list[tuple[int, Any, str]]:
    """(cell index, cell, what differed) for each code cell whose visible outputs differ between two runs."""
    cells_b = dict(b.cells())
    found = []
    for index, cell in a.cells():
        if cell.cell_type == "code":
            left, right = visible(cell), visible(cells_b[index])
            if left != right:
                found.append((index, cell, _describe_diff(left, right)))
    return found


def _describe_diff(left: list[tuple[str, ...]], right: list[tuple[str, ...]]) -> str:
    for n, (x, y) in enumerate(zip(left, right, strict=False)):
        if x == y:
            continue
        if x[:2] != y[:2] or len(x) != len(y):
            return f"output {n}: {_short(' | '.join(x))}\n      vs       {_short(' | '.join(y))}"
        field = next(k for k in range(len(x)) if x[k] != y[k])
        at = next((k for k, (c, d) in enumerate(zip(x[field], y[field], strict=False)) if c != d),
                  min(len(x[field]), len(y[field])))
        lo = max(0, at - 60)
        return (f"output {n} ({x[0]}, {x[field - 1] if field > 2 else x[1]}), from character {at}:\n"
                f"      {x[field][lo:at + 100]!r}\n      vs {y[field][lo:at + 100]!r}")
    longer, side = (left, "first") if len(left) > len(right) else (right, "second")
    extra = longer[min(len(left), len(right)):]
    return f"only the {side} run has {len(extra)} more output(s), first: {_short(' | '.join(extra[0]))}"


def _short(text: str) -> str:
    return text if len(text) <= 300 else text[:300] + "…"


def fingerprint_differences(a: Run, b: Run) -> list[str] | None:
    """Names whose fingerprints differ (or exist in one run only); None when a run printed no fingerprints."""
    fa, fb = a.fingerprints(), b.fingerprints()
    if fa is None or fb is None:
        return None
    return [n for n in sorted(set(fa) | set(fb)) if fa.get(n, "<missing>") != fb.get(n, "<missing>")]


@pytest.fixture(scope="module")
def summary() -> Iterator[dict[str, dict[str, Any]]]:
    per_notebook: dict[str, dict[str, Any]] = {}
    yield per_notebook
    if not per_notebook:
        return
    succeeded = sum(s["succeeded"] for s in per_notebook.values())
    replayed = sum(s["replayed"] for s in per_notebook.values())
    plain = sum(s["plain_run_all_s"] for s in per_notebook.values())
    replay = sum(s["replay_run_all_s"] for s in per_notebook.values())
    total = {
        "notebooks": len(per_notebook), "cells_succeeded": succeeded, "cells_replayed": replayed,
        "plain_run_all_s": round(plain, 3), "replay_run_all_s": round(replay, 3),
        "replay_over_plain": round(replay / plain, 3) if plain else None,
        "note": "Run All wall time of the notebook's cells (the durable run includes its %load_ext cell), kernel "
                "start excluded (reported separately) and the appended fingerprint cell not counted.",
    }
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "corpus-summary.json").write_text(json.dumps({"total": total, "notebooks": per_notebook}, indent=2))
    print(f"\ncorpus summary: {replayed}/{succeeded} cells replayed in {len(per_notebook)} notebooks; Run All "
          f"(kernel start excluded) replay {replay:.2f} s vs plain {plain:.2f} s ({total['replay_over_plain']}×)")
    for name, s in per_notebook.items():
        print(f"  {name:<22} {s['replayed']:>3}/{s['succeeded']:<3} replayed   plain {s['plain_run_all_s']:.2f} s   "
              f"replay {s['replay_run_all_s']:.2f} s   kernel start {s['kernel_start_s']:.2f} s")
    print(f"  written to {OUTPUT / 'corpus-summary.json'}")


# Known and open (issue 11): a matplotlib figure restored by a replay renders, in a real kernel, differently from
# the one drawn the first time, so cells drawing into it re-run, and a replayed figure shown as Out has no PNG.
# Strict: the day it passes, this mark must go.
KNOWN: dict[str, str] = {}
CASES = [pytest.param(p, marks=pytest.mark.xfail(reason=KNOWN[p.stem], strict=True)) if p.stem in KNOWN else p
         for p in NOTEBOOKS]


@pytest.mark.parametrize("notebook", CASES, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_replays_after_restart(notebook: Path, tmp_path: Path, summary: dict[str, dict[str, Any]]) -> None:
    name = notebook.stem
    secret = tmp_path / "secret"
    plain_nb = write_copy(notebook, tmp_path / "plain", load(notebook))
    plain_again_nb = write_copy(notebook, tmp_path / "plain-again", load(notebook))  # its own activity log
    durable_nb = write_copy(notebook, tmp_path / "durable", durable_variant(load(notebook)))

    plain = run(plain_nb, kernel_env(secret, "1"))
    plain_again = run(plain_again_nb, kernel_env(secret, "2"))
    first = run(durable_nb, kernel_env(secret, "1"))
    second = run(durable_nb, kernel_env(secret, "2"))

    # The corpus itself must be sound: every cell runs cleanly as written, and two plain runs (another hash seed)
    # show the same outputs. A failure here is the notebook's fault, not the product's.
    plain_errors = {i: errors(c) for i, c in plain.cells() if errors(c)}
    assert not plain_errors, f"{name}: the plain notebook raised (fix the corpus notebook): {plain_errors}"
    unstable = output_differences(plain, plain_again)
    assert not unstable, (f"{name}: two plain runs differ (fix the corpus notebook): "
                          + "; ".join(f"cell {i} ({first_line(c)!r}): {d}" for i, c, d in unstable))

    problems: list[str] = []
    for label, result in (("in the recording run (ii)", first), ("in the replay run (iii)", second)):
        for cell in result.nb.cells:
            if errors(cell):
                where = cell.metadata["corpus"].get("index", cell.metadata["corpus"].get("role"))
                problems.append(f"{name} cell {where} ({first_line(cell)!r}) raised {label} but not in the plain "
                                f"run: {errors(cell)}")

    log = durable_nb.with_name(name + ".durable.db")
    assert log.exists(), f"{name}: no durable log beside the notebook at {log}"

    # Every durable cell that succeeded in (ii) replays in (iii).
    cells_first = dict(first.cells())
    succeeded = replayed = 0
    for position, cell in enumerate(second.nb.cells):
        meta = cell.metadata["corpus"]
        if not meta.get("durable"):
            continue
        index = meta["index"]
        where = f"{name} cell {index} ({first_line(cell)!r})"
        recorded_cell = cells_first[index]
        recorded = final_status(first, first.nb.cells.index(recorded_cell), recorded_cell, problems,
                                f"{where} in run (ii)")
        if errors(recorded_cell) or recorded is None:
            continue
        if recorded.get("log") and Path(recorded["log"]).resolve() != log.resolve():
            problems.append(f"{where}: recorded into {recorded['log']}, not the log beside the notebook ({log})")
        succeeded += 1
        status = final_status(second, position, cell, problems, f"{where} in run (iii)")
        if status is None:
            continue
        if status.get("state") == "replayed":
            replayed += 1
        else:
            was = recorded.get("state")
            problems.append(f"{where}: state {status.get('state')!r} after restart, expected 'replayed'; "
                            f"reason: {status.get('reason')!r}"
                            + (f"; recorded as {was!r}" if was != "recorded" else "")
                            + (f"; problems: {recorded.get('problems')}" if recorded.get("problems") else ""))

    for a, b, label in ((plain, first, "between the plain run (i) and the recording run (ii)"),
                        (first, second, "between the recording run (ii) and the replay run (iii)")):
        for index, cell, diff in output_differences(a, b):
            problems.append(f"{name} cell {index} ({first_line(cell)!r}): outputs differ {label}:\n      {diff}")

    # The replay must restore exactly what was recorded: every fingerprint of (ii) again in (iii).
    fp_first = first.fingerprints()
    replay_diff = fingerprint_differences(first, second)
    if replay_diff is None:
        problems.append(f"{name}: the namespace fingerprint cell printed nothing in run (ii) or (iii)")
    for var in replay_diff or []:
        problems.append(f"{name}: variable {var!r} differs between the recording run (ii) and the replay run "
                        f"(iii): {fp_first.get(var, '<missing>') if fp_first else '?'} vs "
                        f"{(second.fingerprints() or {}).get(var, '<missing>')}")
    # Plain against durable, where meaningful: values whose fingerprints already differ between the two plain
    # runs (clock readings such as GridSearchCV's fit times, SVG dates, or values fingerprinted differently in two
    # processes, which the replay comparison above reports) are not blamed on running the cells durably.
    volatile = set(fingerprint_differences(plain, plain_again) or [])
    for var in fingerprint_differences(plain, first) or []:
        if var not in volatile:
            problems.append(f"{name}: variable {var!r} differs between the plain run (i) and the recording run (ii) "
                            "(but not between two plain runs)")

    summary[name] = {
        "succeeded": succeeded, "replayed": replayed,
        "plain_run_all_s": round(plain.run_all_seconds(), 3), "replay_run_all_s": round(second.run_all_seconds(), 3),
        "record_run_all_s": round(first.run_all_seconds(), 3),
        "plain_with_kernel_start_s": round(plain.total_seconds, 3),
        "replay_with_kernel_start_s": round(second.total_seconds, 3),
        "kernel_start_s": round(second.kernel_start_seconds, 3),
        "volatile_between_plain_runs": sorted(volatile),
        "problems": problems,
    }
    assert not problems, f"{name}: {len(problems)} replay-fidelity problem(s):\n  " + "\n  ".join(problems)
