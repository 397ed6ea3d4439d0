"""What the cell runtime asks of a log, owned by the runtime (as Litestream's ReplicaClient is owned by its
replicator): the SQLite `LogStore` implements it, and a second backend implements the same methods without the
runtime (cell.py, cell_outputs.py, environment.py) changing. Record types are the storage layer's
(`durable_nb.log.cells`)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from .codecs.streams import Sink, Source
from .log.cells import ExecutionStart, Recorded, StoredOutput


class Blobs(Protocol):
    def sink(self) -> Sink: ...

    def source(self, blob_id: int) -> Source: ...


class CellLog(Protocol):
    path: Path
    readonly: bool

    @property
    def blobs(self) -> Blobs: ...

    def transaction(self) -> AbstractContextManager[Any]:
        """One write transaction: everything a finished cell records commits together, or not at all."""

    def start_execution(self, s: ExecutionStart) -> int:
        """Commit the execution as `running` before user code starts; returns its id."""

    def find_replayable(self, s: ExecutionStart) -> Recorded | None:
        """The latest replayable record of the execution's key (a backend may look up its
        previous_execution in the same query)."""

    def previous_execution(self, s: ExecutionStart) -> dict[str, Any] | None: ...

    def record_replay(self, s: ExecutionStart, source: Recorded, duration: float) -> None: ...

    def stored_outputs(self, execution_id: int) -> list[StoredOutput]: ...

    def output_names(self, execution_id: int) -> list[str]: ...

    def execution_events(self, execution_id: int) -> list[tuple[str, Any]]: ...

    def output_types(self, execution_id: int) -> list[tuple[str, str]]: ...

    def recorded_environment(self, execution_id: int) -> tuple[str, str | None] | None: ...

    # Inside `transaction()`:
    def write_events(self, execution_id: int, events: list[tuple[str, Any]]) -> None: ...

    def write_output(self, execution_id: int, out: StoredOutput) -> None: ...

    def finish_execution(self, execution_id: int, *, state: str, duration: float, **facts: Any) -> None: ...

    def note_package(self, package: str, version: str) -> None: ...
