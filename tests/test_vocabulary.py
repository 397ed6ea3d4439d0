"""One vocabulary: every front end shows a state with the same icon and colour, and the extension's copy is current."""

from __future__ import annotations

import re
from pathlib import Path

from durable_nb import gantt, status, vocabulary
from durable_nb.log import schema

ROOT = Path(__file__).resolve().parents[1]


def test_the_extension_reads_the_vocabulary_generated_from_python() -> None:
    committed = (ROOT / "extension" / "src" / "vocabulary.json").read_text(encoding="utf-8")
    assert committed == vocabulary.extension_json(), (
        "extension/src/vocabulary.json is stale: python -m durable_nb.vocabulary > extension/src/vocabulary.json")


def test_the_schema_allows_exactly_the_states_of_the_vocabulary() -> None:
    sql = " ".join(m.sql for m in schema.MIGRATIONS)
    execution = re.search(r"CREATE TABLE execution .*?CHECK \(state IN \(([^)]*)\)\)", sql, re.S)
    call = re.search(r"CREATE TABLE activity_call .*?state TEXT NOT NULL CHECK \(state IN \(([^)]*)\)\)", sql, re.S)
    assert execution and call, "the state CHECKs of the execution and activity_call tables were not found"
    assert tuple(s.strip(" '") for s in execution[1].split(",")) == vocabulary.STATES
    assert tuple(s.strip(" '") for s in call[1].split(",")) == vocabulary.CALL_STATES


def test_every_state_looks_different_and_alike_everywhere() -> None:
    icons = {vocabulary.LOOKS[s].icon for s in vocabulary.SHOWN_STATES}
    assert len(icons) == len(vocabulary.SHOWN_STATES)  # shape alone tells states apart
    for state in ("recorded", "replayed", "failed", "crashed", "running"):
        assert gantt.COLORS[state] == vocabulary.LOOKS[state].colour
    line = status.bundle({"state": "replayed", "message": "m", "log": "x"})
    assert vocabulary.LOOKS["replayed"].colour in line["text/html"]
    assert line["text/plain"].startswith(vocabulary.LOOKS["replayed"].icon)
    assert vocabulary.look("recorded", reason="input df changed").label == "re-ran"
    assert vocabulary.look("from the future") is vocabulary.UNKNOWN
