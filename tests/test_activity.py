"""Activities: record, replay, occurrences, retries (fake clock), timeouts, concurrency, steps, crash recovery."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backends import is_postgres
from shells import Shell

import durable_nb
import durable_nb.calls as act
import durable_nb.views
from durable_nb import DurableLog, session
from durable_nb.calls import Permanent, activity, step
from durable_nb.errors import EncodeError
from durable_nb.fingerprint import fingerprint
from durable_nb.log.calls import flush
from durable_nb.log.journal import recover
from durable_nb.retry import RetryPolicy

BOTH_BACKENDS = True


@pytest.fixture
def db(log_location: Path, secret: Path) -> Iterator[Path]:
    path = log_location
    session.open_log(path)
    act.reset_scope()
    yield path
    flush()
    session.close_log()


def restart(path: Path, durability: str = "normal") -> DurableLog:
    """What a new process sees: everything flushed, a new log object (a new run), counters from zero."""
    flush()
    session.close_log()
    act.reset_scope()
    return session.open_log(path, durability=durability)  # type: ignore[arg-type]


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    flush()
    with DurableLog(path, readonly=True) as log:
        return log.conn.execute(sql, args).fetchall()


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Calls(list):  # type: ignore[type-arg]
    """A side channel counting real calls. An activity's key covers the globals and closure values it reads,
    so this list's content must not count: it fingerprints as empty."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Calls, ())


class Flaky:
    """Fails `failures` times with `error`, then returns x * 10 (its call count is not part of its state)."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __reduce__(self) -> tuple[type, tuple[int, type[BaseException]]]:
        return (Flaky, (self.failures, self.error))

    def __call__(self, x: int) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"flaky failure {self.calls}")
        return x * 10


def test_record_then_replay_in_a_new_log_session(db: Path) -> None:
    calls = Calls()

    @activity
    def square(x: int, offset: int = 0) -> dict[str, int]:
        calls.append(x)
        return {"x": x, "sq": x * x + offset}

    first = [square(i) for i in range(50)]
    assert len(calls) == 50
    restart(db)
    again = [square(i) for i in range(50)]
    assert again == first and len(calls) == 50
    # Binding: keyword, positional and applied defaults are the same call.
    act.reset_scope()  # a new cell: occurrences count from zero again
    assert square(x=3) == {"x": 3, "sq": 9}
    act.reset_scope()
    assert square(3, 0) == {"x": 3, "sq": 9} and len(calls) == 50
    assert square(3, offset=1) == {"x": 3, "sq": 10} and len(calls) == 51
    states = rows(db, "SELECT state, count(*), max(attempts), max(retries) FROM activities GROUP BY state "
                  "ORDER BY state")
    assert states == [("recorded", 51, 1, 0)]


def test_inline_results_of_any_bytes_come_back_exact(db: Path) -> None:
    """Every byte value (a backslash, a newline, NUL: what a COPY in text format must escape) in results kept
    in the call row, moved into the log by a flush and replayed from it."""
    calls = Calls()

    @activity
    def raw(shift: int) -> np.ndarray:
        calls.append(shift)
        return np.roll(np.arange(256, dtype=np.uint8), shift)

    first = [raw(i) for i in range(3)]
    restart(db)
    again = [raw(i) for i in range(3)]
    assert len(calls) == 3 and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_a_journal_that_cannot_be_written_sends_calls_to_the_log(db: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The journal's next file is /dev/full (every write fails with ENOSPC, for root too): that call is committed
    to the log instead, said once, and returned; the call after it journals again in a new file."""
    calls = Calls()

    @activity
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert double(1) == 2
    flush()
    journal = session.current_log().call_recorder(lambda: None).journal
    full = journal.folder / f"{journal.prefix}{journal.seq + 1}.jsonl"
    full.symlink_to("/dev/full")
    assert [double(i) for i in range(2, 6)] == [4, 6, 8, 10]
    said = capsys.readouterr().err
    assert f"activity journal {journal.folder} cannot be written (No space left on device)" in said, said
    assert "nothing is lost" in said and said.count("cannot be written") == 1, said
    assert journal.path is not None and journal.path != full, "the next call journals in a new file"
    flush()
    assert not full.is_symlink(), "the file given up is removed once its calls are in the log"
    restart(db)
    assert [double(i) for i in range(1, 6)] == [2, 4, 6, 8, 10] and len(calls) == 5
    assert rows(db, "SELECT count(*), count(DISTINCT uid) FROM activity_call WHERE state = 'recorded'") == [(5, 5)]


def test_the_nth_identical_call_replays_the_nth_recording(db: Path) -> None:
    calls = Calls()

    @activity
    def sample(prompt: str) -> int:
        calls.append(prompt)
        return len(calls) - 1

    first = [sample("same"), sample("same"), sample("other"), sample("same")]
    assert first == [0, 1, 2, 3]
    restart(db)
    assert [sample("same"), sample("same"), sample("other"), sample("same"), sample("same")] == [0, 1, 2, 3, 4]
    occ = rows(db, "SELECT occurrence FROM activities WHERE function LIKE '%sample' ORDER BY call_id")
    assert [o for (o,) in occ] == [0, 1, 0, 2, 3]


def test_changed_code_or_version_records_afresh(db: Path) -> None:
    @activity(version="1")
    def value() -> str:
        return "one"

    assert value() == "one"
    restart(db)

    @activity(version="2")  # type: ignore[no-redef]
    def value() -> str:
        return "two"

    assert value() == "two"


def test_retries_back_off_exponentially_then_succeed(db: Path) -> None:
    sleep, flaky = FakeSleep(), Flaky(3)
    call = activity(retries=5, delay=1.0, backoff=2.0, max_delay=3.0, jitter=0.0, sleep=sleep)(
        lambda x: flaky(x))
    assert call(4) == 40
    assert flaky.calls == 4 and sleep.waits == [1.0, 2.0, 3.0]  # capped at max_delay
    (calls, retries, last_error), = rows(db, "SELECT attempts, retries, last_error FROM activities")
    assert (calls, retries) == (4, 3) and last_error == "ConnectionError: flaky failure 3"
    attempts = rows(db, "SELECT n, state, error_type, delay, traceback IS NOT NULL FROM attempts ORDER BY n")
    assert attempts == [(1, "failed", "ConnectionError", 1.0, 1), (2, "failed", "ConnectionError", 2.0, 1),
                        (3, "failed", "ConnectionError", 3.0, 1), (4, "ok", None, None, 0)]
    restart(db)
    assert call(4) == 40 and flaky.calls == 4


def test_the_last_error_propagates_unchanged_and_the_call_runs_again_later(db: Path) -> None:
    sleep, errors = FakeSleep(), Calls()

    def fail(x: int) -> int:
        errors.append(ConnectionError(f"down {len(errors)}"))
        raise errors[-1]

    call = activity(retries=2, jitter=0.0, sleep=sleep)(fail)
    with pytest.raises(ConnectionError) as info:
        call(1)
    assert info.value is errors[-1] and len(errors) == 3 and len(sleep.waits) == 2
    assert rows(db, "SELECT state, attempts, retries FROM activities") == [("failed", 3, 2)]
    assert len(rows(db, "SELECT * FROM attempts WHERE state = 'failed'")) == 3
    restart(db)
    with pytest.raises(ConnectionError):
        call(1)
    assert len(errors) == 6


def test_retry_on_and_predicates_decide_what_is_retried(db: Path) -> None:
    sleep = FakeSleep()
    flaky = Flaky(1, ValueError)
    only_conn = activity(retries=3, retry_on=(TimeoutError, ConnectionError), sleep=sleep)(lambda x: flaky(x))
    with pytest.raises(ValueError, match="flaky failure 1"):
        only_conn(1)
    assert flaky.calls == 1 and sleep.waits == []
    flaky2 = Flaky(2, ValueError)
    by_message = activity(retries=3, retry_on=lambda e: "flaky" in str(e), sleep=sleep)(lambda x: flaky2(x))
    assert by_message(2) == 20 and flaky2.calls == 3


def test_permanent_errors_are_not_retried(db: Path) -> None:
    sleep, inner = FakeSleep(), ValueError("bad request")

    @activity(retries=5, sleep=sleep)
    def wrapped(x: int) -> int:
        raise Permanent(inner)

    with pytest.raises(ValueError) as info:
        wrapped(1)
    assert info.value is inner and sleep.waits == []

    class Forbidden(Permanent):
        pass

    @activity(retries=5, sleep=sleep)
    def subclassed(x: int) -> int:
        raise Forbidden("no")

    with pytest.raises(Forbidden):
        subclassed(1)
    assert sleep.waits == []
    assert rows(db, "SELECT attempts FROM activities") == [(1,), (1,)]


def test_jitter_stays_within_its_fraction_and_the_cap() -> None:
    import random

    policy = RetryPolicy(retries=10, delay=2.0, backoff=3.0, max_delay=20.0, jitter=0.5, rng=random.Random(7))
    for n, nominal in [(1, 2.0), (2, 6.0), (3, 18.0), (4, 20.0), (8, 20.0)]:
        waits = [policy.wait_before(n) for _ in range(200)]
        assert min(waits) >= nominal / 2 and max(waits) <= nominal and max(waits) - min(waits) > nominal / 4
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff=0.5)
    with pytest.raises(TypeError, match="retry_on"):
        RetryPolicy(retry_on=42)  # type: ignore[arg-type]


def test_sync_timeout_abandons_the_thread_and_retries(db: Path) -> None:
    release, sleep, calls = threading.Event(), FakeSleep(), Calls()

    @activity(timeout=0.05, retries=1, sleep=sleep)
    def slow(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            release.wait(5)  # the first attempt overruns
        return x

    try:
        assert slow(7) == 7
    finally:
        release.set()
    assert len(calls) == 2 and len(sleep.waits) == 1
    assert rows(db, "SELECT n, state, error_type FROM attempts ORDER BY n") == [
        (1, "timed-out", "TimeoutError"), (2, "ok", None)]


def test_async_activities_with_gather_and_timeouts(db: Path) -> None:
    calls = Calls()

    @activity(timeout=0.05, retries=0)
    async def fetch(i: int) -> int:
        calls.append(i)
        await asyncio.sleep(10 if i == 99 else 0.001)
        return i * 2

    async def main() -> list[int]:
        return list(await asyncio.gather(*(fetch(i) for i in range(20))))

    assert asyncio.run(main()) == [i * 2 for i in range(20)]
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
        asyncio.run(fetch(99))
    restart(db)
    assert asyncio.run(main()) == [i * 2 for i in range(20)] and len(calls) == 21
    assert rows(db, "SELECT state, count(*) FROM activities GROUP BY state ORDER BY state") == [
        ("failed", 1), ("recorded", 20)]


def test_calls_from_many_threads_are_all_recorded(db: Path) -> None:
    lock, calls = threading.Lock(), Calls()

    @activity
    def work(t: int, i: int) -> list[int]:
        with lock:
            calls.append((t, i))
        return [t, i]

    def run(t: int) -> None:
        for i in range(40):
            assert work(t, i) == [t, i]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 240
    restart(db)
    for t in range(6):
        run(t)
    assert len(calls) == 240
    assert rows(db, "SELECT count(DISTINCT key), count(*) FROM activities") == [(240, 240)]


def test_bad_input_errors_name_the_activity_and_argument(db: Path) -> None:
    @activity
    def returns_lock(x: int) -> Any:
        return threading.Lock()

    with pytest.raises(EncodeError, match=r"activity .*returns_lock: its result cannot be recorded"):
        returns_lock(1)
    assert rows(db, "SELECT state, last_error LIKE '%EncodeError%' FROM activities") == [("failed", 1)]

    @activity
    def takes(client: Any, n: int) -> int:
        return n

    with pytest.raises(EncodeError, match=r"argument 'client' cannot be fingerprinted"):
        takes(threading.Lock(), 1)
    keyed = activity(key=lambda client, n: n)(lambda client, n: n + 1)
    assert keyed(threading.Lock(), 1) == 2


def test_generators_bound_methods_and_objects_are_refused_clearly() -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        activity(gen)

    class Client:
        def ask(self, q: str) -> str:
            return q

    with pytest.raises(TypeError, match="bound method"):
        activity(Client().ask)
    with pytest.raises(TypeError, match="expects a function"):
        activity(print)


def test_methods_defined_in_a_class_body_key_by_self(db: Path) -> None:
    class Model:
        def __init__(self, name: str) -> None:
            self.name = name

        @activity
        def ask(self, q: str) -> str:
            return f"{self.name}:{q}"

    assert Model("a").ask("x") == "a:x" and Model("b").ask("x") == "b:x"


def test_big_results_are_blobs_and_pickles_are_signed(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arr = np.arange(200_000, dtype=np.float64)

    @activity
    def big() -> Any:
        return arr

    class Point:
        # Pickling caches __slotnames__ on the class, which fingerprint.py (as of this commit) counts as a
        # change of the class: without this line the second run would miss.
        __slotnames__: list[str] = []  # noqa: RUF012

        def __init__(self, x: int) -> None:
            self.x = x

    @activity
    def point() -> Point:
        return Point(3)

    assert big() is arr and point().x == 3
    restart(db)
    replayed = big()
    assert replayed is not arr and np.array_equal(replayed, arr)
    assert point().x == 3
    assert rows(db, "SELECT count(*) FROM activity_blob") == [(1,)]
    # A small pickled result is signed with the others of its flush: one signature per batch, not per call.
    (codec, sig, batch), = rows(db, "SELECT codec, signature, batch_id FROM activity_call WHERE function LIKE "
                                    "'%point'")
    assert codec == "pickle" and sig is None and batch is not None
    (digests,), = rows(db, "SELECT digests FROM signed_batch WHERE id = ?", batch)
    assert len(digests) == 16, "the batch lists the one pickled result's payload digest"
    log = restart(db)
    with log.transaction() as conn:
        conn.execute("UPDATE signed_batch SET digests = ? WHERE id = ?", (bytes(16), batch))
    act.reset_scope()
    capsys.readouterr()
    assert point().x == 3  # an unverifiable pickle is a miss: the function runs again
    assert "does not match the value" in capsys.readouterr().err


def test_a_pickled_result_finished_while_the_flusher_writes_its_call_as_running_stays_signed(db: Path) -> None:
    """The race of a call that finishes between the flusher picking it as running and writing it: the row must
    end up signed (by its batch), or the call would not replay as the kernel's own."""
    from durable_nb.log.calls import encode_result, recorder_for

    class Point:
        __slotnames__: list[str] = []  # noqa: RUF012 (see test_big_results_are_blobs_and_pickles_are_signed)

    rec = recorder_for(session.current_log(), lambda: None)
    rec._add_signer()
    call = rec.begin("raced", "key", 0, "activity", None)
    call.result, call.state, call.finished_at = encode_result("raced", Point()), "recorded", time.time()
    with rec.wlock:  # the flusher thread waits here, as it would behind a flush that picked the call
        rec.finish(call)  # journaled, its signature left to the next flush's batch
        rec._write([], [call])  # the flusher's write of the calls it picked as running, after they finished
    rec.flush()  # the journal line moves in
    (sig, batch), = rows(db, "SELECT signature, batch_id FROM activity_call WHERE function = 'raced'")
    assert sig is not None or batch is not None, "the call's row lost its signature"


def test_steps_checkpoint_values_of_a_loop_body(db: Path) -> None:
    trained: list[int] = []

    def loop() -> list[int]:
        state, seen = 0, []
        for epoch in range(4):
            with step("epoch", epoch) as s:
                seen.append(s.replayed)
                if not s.replayed:
                    trained.append(epoch)
                    s.result = state + epoch
            state = s.result
        return [state, *seen]

    assert loop() == [6, False, False, False, False]
    restart(db)
    assert loop() == [6, True, True, True, True] and trained == [0, 1, 2, 3]
    with pytest.raises(ZeroDivisionError), step("broken"):
        1 / 0  # noqa: B018
    assert rows(db, "SELECT kind, state FROM activities WHERE function = 'step:broken'") == [("step", "failed")]


def test_execution_scope_links_calls_to_the_cell_execution(db: Path) -> None:
    log = session.current_log()
    run_id = log.run_id
    with log.transaction() as conn:
        (execution_id,) = conn.execute(
            "INSERT INTO execution (run_id, key, code, code_hash, state, started_at) "
            "VALUES (?, 'k', 'x', 'h', 'running', 0) RETURNING id", (run_id,)).fetchone()

    @activity
    def f(x: int) -> int:
        return x

    with act.execution_scope(execution_id):
        assert act.current_execution_id() == execution_id
        f(1), f(1)
    f(2)
    got = rows(db, "SELECT execution_id, occurrence FROM activities ORDER BY call_id")
    assert got == [(execution_id, 0), (execution_id, 1), (None, 0)]


def test_plain_ipython_cells_restart_occurrences(shell: Any) -> None:
    shell.run("import durable_nb.calls as act\nclass Calls(list):\n    def __reduce__(self):\n"
              "        return (Calls, ())\ncalls = Calls()\n"
              "@act.activity\ndef f(x):\n    calls.append(x)\n    return x + 1")
    loop = "out = [f(1), f(1), f(2)]"
    shell.run(loop)
    shell.run(loop)
    assert shell.ns["out"] == [2, 2, 3] and shell.ns["calls"] == [1, 1, 2]


def test_wrappers_fingerprint_by_function_and_options() -> None:
    def body(x: int) -> int:
        return x

    a, b, c = activity(body), activity(body), activity(retries=3)(body)
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_full_durability_records_and_replays(tmp_path: Path, secret: Path) -> None:
    path = tmp_path / "full.db"
    session.open_log(path, durability="full")
    try:
        f = activity(lambda x: x * 3)
        assert [f(i) for i in range(5)] == [0, 3, 6, 9, 12]
        restart(path, "full")
        assert [f(i) for i in range(5)] == [0, 3, 6, 9, 12]
        assert rows(path, "SELECT count(*) FROM activities") == [(5,)]
    finally:
        flush()
        session.close_log()


CHILD = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import durable_nb.calls as act
import durable_nb.log.calls as log_calls
from durable_nb import session
log_calls.FLUSH_DELAY = {flush_delay}
session.open_log({db!r})

@act.activity
def step(i):
    if i == 5:
        time.sleep(0.3)  # long enough to be written as running (unless FLUSH_DELAY is longer)
        os.kill(os.getpid(), signal.SIGKILL)
    return i * i

for i in range(10):
    step(i)
"""


@pytest.mark.parametrize(("flush_delay", "states"), [(60, ["recorded"] * 5),
                                                     (0.02, ["recorded"] * 5 + ["crashed"])])
def test_sigkill_loses_no_returned_call(tmp_path: Path, secret: Path, flush_delay: float,
                                        states: list[str]) -> None:
    """flush_delay=60: nothing reached SQLite, the journal alone holds the five calls that returned.
    0.02: they were imported, and the call in progress was written as running, so it shows as crashed."""
    db = tmp_path / "k.db"
    code = CHILD.format(root=str(Path(__file__).parents[1]), db=str(db), flush_delay=flush_delay)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ}, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    journals = list((tmp_path / "k.db-activities").glob("*.jsonl"))
    assert bool(journals) == (flush_delay == 60)
    session.open_log(db)  # a writer opening the log imports the journals of dead runs
    act.reset_scope()
    try:
        log = session.current_log()
        assert recover(log.conn, log.path, set(log.dead_run_ids())) == 0, "already imported when the log was opened"
        got = rows(db, "SELECT occurrence, state FROM activities ORDER BY call_id")
        assert [s for _, s in got] == states
        assert not list((tmp_path / "k.db-activities").glob("*.jsonl"))
    finally:
        session.close_log()


def test_a_script_that_exits_cleanly_ends_its_run_and_a_killed_one_does_not(tmp_path: Path, secret: Path) -> None:
    # A plain script opens the default log on its first call and never closes it itself.
    code = ("import os, signal, sys; sys.path.insert(0, {root!r}); import durable_nb\n"
            "@durable_nb.activity\ndef double(x):\n    return 2 * x\n"
            "double(21)\n{end}\n")
    root = str(Path(__file__).parents[1])
    for end in ("", "os.kill(os.getpid(), signal.SIGKILL)"):
        subprocess.run([sys.executable, "-c", code.format(root=root, end=end)], cwd=tmp_path, timeout=60)
    got = rows(tmp_path / "durable.db", "SELECT r.ended_at IS NOT NULL, count(c.id) FROM run r "
                                        "LEFT JOIN activity_call c ON c.run_id = r.id GROUP BY r.id ORDER BY r.id")
    assert got == [(1, 1), (0, 0)], "the clean run ended, recording the call; the killed one replayed it, unended"


def test_a_forked_child_that_exits_leaves_its_parents_run_open(tmp_path: Path, secret: Path) -> None:
    code = ("import os, sys, sqlite3; sys.path.insert(0, {root!r}); import durable_nb\n"
            "@durable_nb.activity\ndef double(x):\n    return 2 * x\n"
            "double(1)\npid = os.fork()\nif pid == 0:\n    sys.exit(0)\nos.waitpid(pid, 0)\n"
            "print(sqlite3.connect('durable.db').execute('SELECT ended_at FROM run').fetchall())\ndouble(2)\n")
    out = subprocess.run([sys.executable, "-c", code.format(root=str(Path(__file__).parents[1]))], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[(None,)]", "the child's exit hooks ended the parent's run"
    got = rows(tmp_path / "durable.db", "SELECT (SELECT count(*) FROM activity_call), ended_at IS NOT NULL FROM run")
    assert got == [(2, 1)]


def test_the_package_attribute_decorates_with_and_without_options(db: Path) -> None:
    import durable_nb

    @durable_nb.activity(retries=1)
    def with_options(x: int) -> int:
        return x + 1

    @durable_nb.activity
    def bare(x: int) -> int:
        return x + 2

    assert with_options(1) == 2 and bare(1) == 3
    assert rows(db, "SELECT count(*) FROM activities") == [(2,)]


def test_calls_in_a_durable_cell_are_linked_to_its_execution(shell: Any, tmp_path: Path) -> None:
    shell.run("import durable_nb\n@durable_nb.activity\ndef double(x):\n    return x * 2")
    shell.durable("out = [double(i) for i in range(3)]")
    assert shell.ns["out"] == [0, 2, 4]
    flush()
    log = session.current_log()
    (execution_id,), = log.conn.execute("SELECT execution_id FROM executions").fetchall()
    got = log.conn.execute("SELECT execution_id, state FROM activities").fetchall()
    assert got == [(execution_id, "recorded")] * 3


def test_an_activity_defined_in_a_durable_cell_works_after_the_cell_replays(new_shell: Any) -> None:
    cell = ("import durable_nb\n@durable_nb.activity(retries=2, retry_on=(ConnectionError,))\n"
            "def triple(x):\n    return x * 3")
    first = new_shell()
    first.durable(cell)
    first.run("before = [triple(i) for i in range(3)]")
    flush()
    second = new_shell()
    second.durable(cell)
    assert second.last_status()["state"] == "replayed"
    second.run("after = [triple(i) for i in range(3)]")
    assert second.ns["after"] == first.ns["before"] == [0, 3, 6]
    assert session.current_log().conn.execute("SELECT count(*) FROM activities").fetchone() == (3,)


def test_pickled_results_with_fortran_ordered_buffers_replay(db: Path) -> None:
    class Holder:
        __slotnames__: list[str] = []  # noqa: RUF012  (see test_big_results_are_blobs_and_pickles_are_signed)

        def __init__(self, a: Any) -> None:
            self.a = a

    @activity
    def make(n: int) -> Holder:
        return Holder(np.asfortranarray(np.arange(n * 3, dtype=np.float64).reshape(n, 3)))

    first = make(50_000)
    restart(db)
    again = make(50_000)
    assert again is not first and np.array_equal(again.a, first.a) and again.a.flags.f_contiguous
    assert rows(db, "SELECT count(*), max(state) FROM activities") == [(1, "recorded")]


def test_the_log_and_its_views_show_calls_made_a_moment_ago(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls reach SQLite from a journal in the background; log.flush() and the pandas views must not wait."""
    import durable_nb
    from durable_nb.log import calls as log_calls

    monkeypatch.setattr(log_calls, "FLUSH_DELAY", 60.0)  # no background flush during this test

    @activity
    def double(x: int) -> int:
        return 2 * x

    assert [double(i) for i in range(3)] == [0, 2, 4]
    log = session.current_log()
    assert len(durable_nb.activities(log)) == 3
    assert double(3) == 6
    log.flush()
    assert log.conn.execute("SELECT count(*) FROM activities").fetchone()[0] == 4


def test_a_failing_background_flush_is_shown_until_the_log_takes_the_calls(shell: Shell,
                                                                          log_location: Path | str) -> None:
    """The flusher thread has no caller: its error must reach %durable_status and the next cell's status line,
    and go away once the calls are in the log."""
    import io
    from contextlib import redirect_stdout

    from durable_nb import session
    from durable_nb.log import calls as log_calls

    shell.run("import durable_nb\n@durable_nb.activity\ndef inc(x):\n    return x + 1\n")
    shell.run("inc(1)")
    log = session.current_log()
    rec = log_calls.recorder_for(log, lambda: None)
    rec.flush()
    # The database itself now refuses the flusher's writes.
    refuse, accept = (("SET default_transaction_read_only = on", "SET default_transaction_read_only = off")
                      if is_postgres(log_location) else ("PRAGMA query_only = 1", "PRAGMA query_only = 0"))
    rec.conn.execute(refuse)
    shell.run("inc(2)")
    deadline = time.time() + 5
    while not any("activity flusher" in p for p in durable_nb.views.status(log).problems) and time.time() < deadline:
        time.sleep(0.05)
    out = io.StringIO()
    with redirect_stdout(out):
        shell.run("%durable_status")
    assert "problem:    activity flusher: activity calls wait in the journal" in out.getvalue()
    assert "journaled, not yet in the log" in out.getvalue()
    shell.durable("z = 1")
    assert "activity flusher" in shell.last_status()["message"]
    rec.conn.execute(accept)
    log_calls._FLUSHER.wake(rec)
    deadline = time.time() + 5
    while durable_nb.views.status(log).problems and time.time() < deadline:
        time.sleep(0.05)
    assert durable_nb.views.status(log).problems == []
    assert len(durable_nb.activities(log)) == 2


def _bound_by_inspect(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """How a call's key material was made before the code object was read directly (keys must not change)."""
    signature = inspect.signature(fn)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if all(p.kind in positional for p in signature.parameters.values()):
        return tuple(bound.arguments.values())
    return tuple(bound.arguments.items())


def _shapes() -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    def plain(a, b=2, c=None):  # type: ignore[no-untyped-def]
        return a

    def only_positional(a, /, b=[1]):  # type: ignore[no-untyped-def]  # noqa: B006
        return a

    def keywords(a, *, k=3, m):  # type: ignore[no-untyped-def]
        return a

    def varargs(*items, **options):  # type: ignore[no-untyped-def]
        return items

    @functools.wraps(plain)
    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        return plain(*args, **kwargs)

    return [(plain, (1,), {}), (plain, (1, 5), {}), (plain, (1,), {"c": 4}), (plain, (), {"a": 1}),
            (only_positional, (7,), {}), (keywords, (1,), {"m": 2}), (varargs, (1, 2), {"x": 3}),
            (wrapped, (1,), {}), (wrapped, (1,), {"b": 9}), (lambda: 0, (), {})]


def test_a_calls_key_material_is_what_inspect_binds_for_every_shape_of_signature() -> None:
    """The fast path reads the code object instead of importing inspect; a key it made differently would make
    every recorded call of an existing log run again."""
    from durable_nb.calls import _Spec

    options = {"retries": 0, "delay": 1.0, "backoff": 2.0, "max_delay": 60.0, "jitter": 0.5,
               "retry_on": Exception, "timeout": None, "key": None, "version": None}
    for fn, args, kwargs in _shapes():
        assert _Spec(fn, options, None)._key_material(args, kwargs) == _bound_by_inspect(fn, args, kwargs), fn
