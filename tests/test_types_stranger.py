"""What broke when tutorial-style notebooks (polars user guide, xarray tutorial, scikit-learn examples, pyarrow
compute) ran under %%durable across a restart, as tests in our own words."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from shells import Shell
from test_codecs import Log

from durable_nb.fingerprint import fingerprint


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = Log(tmp_path / "x.durable.db")
    yield log
    log.conn.close()


def test_a_lazy_query_over_a_replayed_frame_fingerprints_as_over_the_computed_one(log: Log) -> None:
    # fill_null leaves an all-valid validity bitmap; the frame replayed from the log has none. polars writes
    # its plan with the frame's layout, so the plan bytes differ while the query is the same.
    computed = pl.DataFrame({"tip": [1.0, None, 3.0] * 500}).with_columns(pl.col("tip").fill_null(0.0))
    _, replayed = log.round_trip(computed)
    assert replayed.equals(computed) and fingerprint(replayed) == fingerprint(computed)

    def query(frame: pl.DataFrame) -> pl.LazyFrame:
        return frame.lazy().filter(pl.col("tip") > 0.5).select(pl.col("tip").sum())

    assert query(computed).serialize() != query(replayed).serialize(), "the layout no longer shows: simplify"
    assert fingerprint(query(computed)) == fingerprint(query(replayed))
    assert fingerprint(query(computed)) != fingerprint(computed.lazy().filter(pl.col("tip") > 0.6))


def test_collecting_a_lazy_query_replays_after_a_restart(new_shell: Callable[[], Shell]) -> None:
    cells = ["trips = pl.DataFrame({'fare': [3.0, None, 8.5, 2.0] * 50}).with_columns(pl.col('fare').fill_null(0.0))",
             "query = trips.lazy().filter(pl.col('fare') > 2.5).select(pl.col('fare').sum())",
             "total = query.collect()"]
    states = []
    for _ in range(2):
        sh = new_shell()
        sh.run("import polars as pl")
        for cell in cells:
            sh.durable(cell)
            states.append(sh.last_status()["state"])
    # The query itself cannot be stored (polars' plan format is not stable across versions): it runs again,
    # and the cell that collects it, reading the same query, replays.
    assert states == ["recorded", "not-replayable", "recorded", "replayed", "not-replayable", "replayed"], states
    assert sh.ns["total"].item() == pytest.approx(50 * 11.5)
