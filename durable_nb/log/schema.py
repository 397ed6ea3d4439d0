"""The one source of truth for the log's SQL schema: numbered migrations, applied in order.

Tables are singular (`run`, `execution`, ...); the stable, documented views that users query are plural
(`runs`, `executions`, ...) and are (re)created by the migration that last changed them.
A log records every migration it has applied in `schema_migration`; a log whose highest version is newer
than `SCHEMA_VERSION` is refused, never written.
"""

from __future__ import annotations

from ..record import Record


class Migration(Record):
    __match_args__ = ("version", "name", "sql")
    __slots__ = __match_args__

    def __init__(self, version: int, name: str, sql: str) -> None:
        self.version = version
        self.name = name
        self.sql = sql


# The documented views (docs/schema.md) in their final form, written once for both backends (log/pg_schema.py
# creates the same ones): the SQL is portable but for the keys of a JSON object, given per backend.
ACTIVITY_VIEWS = """
        CREATE VIEW activities AS
        SELECT c.id AS call_id, c.run_id, c.execution_id, c.function, c.kind, c.key, c.occurrence, c.state,
               c.started_at, c.finished_at, c.finished_at - c.started_at AS duration,
               c.attempts, c.attempts - 1 AS retries,
               (SELECT a.error_type || ': ' || a.error_message FROM attempt a
                WHERE a.call_id = c.id ORDER BY a.n DESC LIMIT 1) AS last_error,
               c.codec, c.type, c.size AS result_size
        FROM activity_call c;

        CREATE VIEW attempts AS
        SELECT a.call_id, c.function, a.n, a.state, a.started_at, a.finished_at,
               a.finished_at - a.started_at AS duration, a.delay, a.error_type, a.error_message, a.traceback
        FROM attempt a JOIN activity_call c ON c.id = a.call_id
        UNION ALL
        SELECT c.id, c.function, c.attempts, CASE c.state WHEN 'recorded' THEN 'ok' ELSE c.state END,
               c.attempt_started_at, c.finished_at, c.finished_at - c.attempt_started_at, NULL, NULL, NULL, NULL
        FROM activity_call c WHERE c.state IN ('recorded', 'running', 'crashed');
"""

RUNS_VIEW = """
        CREATE VIEW runs AS
        SELECT r.id AS run_id, r.uuid, r.started_at, r.ended_at, r.host, r.pid, r.notebook, r.python, r.platform,
               r.packages,
               (SELECT count(*) FROM execution e WHERE e.run_id = r.id) AS executions,
               (SELECT count(*) FROM execution e WHERE e.run_id = r.id AND e.state = 'recorded') AS recorded,
               (SELECT count(*) FROM execution e WHERE e.run_id = r.id AND e.state = 'replayed') AS replayed,
               (SELECT count(*) FROM execution e WHERE e.run_id = r.id AND e.state = 'failed') AS failed,
               (SELECT count(*) FROM execution e WHERE e.run_id = r.id AND e.state = 'crashed') AS crashed,
               (SELECT coalesce(sum(e.saved_seconds), 0.0) FROM execution e WHERE e.run_id = r.id)
                   AS saved_seconds,
               (SELECT count(*) FROM activity_call c WHERE c.run_id = r.id) AS activities
        FROM run r;
"""

OUTPUTS_VIEW = """
        CREATE VIEW outputs AS
        SELECT o.execution_id, o.name, o.kind, o.codec, o.codec_version, o.type, o.size, o.target,
               o.inplace, o.signature IS NOT NULL AS signed,
               (SELECT count(*) FROM output_blob b WHERE b.execution_id = o.execution_id AND b.name = o.name)
                   AS blobs,
               (SELECT coalesce(sum(bl.stored_size), 0) FROM output_blob b JOIN blob bl ON bl.id = b.blob_id
                WHERE b.execution_id = o.execution_id AND b.name = o.name) AS stored_size
        FROM output o;
"""

# The files an execution read, by name: `group_concat` of `json_each` keys here, `string_agg` of
# `json_object_keys` on PostgreSQL.
SQLITE_FILES_READ = "(SELECT group_concat(j.key, ', ') FROM json_each(e.read_files) j)"


def executions_view(files_read: str) -> str:
    """The `executions` view, with the backend's SQL for the names of the files an execution read."""
    return """
        CREATE VIEW executions AS
        SELECT e.id AS execution_id, e.run_id, e.cell_name, e.cell_id, e.execution_count, e.state,
               e.started_at, e.finished_at, e.duration,
               CASE WHEN e.replayed_from IS NULL THEN e.duration
                    ELSE (SELECT s.duration FROM execution s WHERE s.id = e.replayed_from) END AS original_duration,
               e.saved_seconds, e.replayed_from, e.reason,
               e.input_names AS inputs, e.output_names AS outputs, e.bytes_stored, e.replayable, e.error_type,
               e.error_message, e.key, e.code_hash,
               """ + files_read + """ AS files_read
        FROM execution e;
"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "cells: runs, executions, outputs, events, blobs",
        """
        CREATE TABLE run (
            id INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL UNIQUE,
            started_at REAL NOT NULL,
            ended_at REAL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            pid_started_at REAL,
            notebook TEXT,
            python TEXT NOT NULL,
            platform TEXT NOT NULL,
            packages TEXT NOT NULL DEFAULT '{}'
        );

        CREATE TABLE execution (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES run(id),
            cell_name TEXT,
            cell_id TEXT,
            execution_count INTEGER,
            key TEXT NOT NULL,
            code TEXT NOT NULL,
            code_hash TEXT NOT NULL,
            lineage TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL
                CHECK (state IN ('running', 'recorded', 'replayed', 'failed', 'crashed')),
            started_at REAL NOT NULL,
            finished_at REAL,
            duration REAL,
            replayed_from INTEGER REFERENCES execution(id),
            saved_seconds REAL,
            reason TEXT,
            inputs TEXT NOT NULL DEFAULT '{}',
            deps_files TEXT NOT NULL DEFAULT '{}',
            replayable INTEGER NOT NULL DEFAULT 0,
            problems TEXT NOT NULL DEFAULT '[]',
            bytes_stored INTEGER NOT NULL DEFAULT 0,
            error_type TEXT,
            error_message TEXT,
            traceback TEXT
        );
        -- Few indexes, none on `state`: every index is a page more to write at each cell's two commits.
        CREATE INDEX execution_by_key ON execution(key);
        CREATE INDEX execution_by_lineage ON execution(lineage, id);
        CREATE INDEX execution_by_run ON execution(run_id, id);

        CREATE TABLE blob (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            stored_size INTEGER NOT NULL,
            chunk_count INTEGER NOT NULL,
            created_at REAL NOT NULL
        );

        CREATE TABLE chunk (
            id INTEGER PRIMARY KEY,
            blob_id INTEGER NOT NULL REFERENCES blob(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            raw_size INTEGER NOT NULL,
            compression TEXT NOT NULL DEFAULT 'none',
            data BLOB NOT NULL,
            UNIQUE (blob_id, seq)
        );

        CREATE TABLE output (
            execution_id INTEGER NOT NULL REFERENCES execution(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('value', 'module', 'alias', 'deleted', 'result')),
            codec TEXT,
            codec_version INTEGER,
            type TEXT,
            meta TEXT NOT NULL DEFAULT '{}',
            size INTEGER NOT NULL DEFAULT 0,
            target TEXT,
            inplace INTEGER NOT NULL DEFAULT 0,
            signature TEXT,
            PRIMARY KEY (execution_id, name)
        );

        CREATE TABLE output_blob (
            execution_id INTEGER NOT NULL,
            name TEXT NOT NULL,
            seq INTEGER NOT NULL,
            blob_id INTEGER NOT NULL REFERENCES blob(id),
            PRIMARY KEY (execution_id, name, seq),
            FOREIGN KEY (execution_id, name) REFERENCES output(execution_id, name) ON DELETE CASCADE
        );
        CREATE INDEX output_blob_by_blob ON output_blob(blob_id);

        CREATE TABLE event (
            execution_id INTEGER NOT NULL REFERENCES execution(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL
                CHECK (kind IN ('stdout', 'stderr', 'display', 'update_display', 'clear_output')),
            data TEXT NOT NULL,
            PRIMARY KEY (execution_id, seq)
        );

        CREATE VIEW runs AS
        SELECT id AS run_id, uuid, started_at, ended_at, host, pid, notebook, python, platform, packages,
               (SELECT count(*) FROM execution e WHERE e.run_id = run.id) AS executions
        FROM run;

        CREATE VIEW executions AS
        SELECT e.id AS execution_id, e.run_id, e.cell_name, e.cell_id, e.execution_count, e.key, e.state,
               e.started_at, e.finished_at, e.duration, e.replayed_from, e.saved_seconds, e.reason,
               e.inputs, (SELECT json_group_array(o.name) FROM output o
                          WHERE o.execution_id = e.id AND o.kind != 'result') AS outputs,
               e.replayable, e.problems, e.bytes_stored, e.error_type, e.error_message, e.code
        FROM execution e;

        CREATE VIEW outputs AS
        SELECT o.execution_id, o.name, o.kind, o.codec, o.codec_version, o.type, o.size, o.target
        FROM output o;
        """,
    ),
    Migration(
        2,
        "activities: calls, attempts, result blobs",
        """
        CREATE TABLE activity_call (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,
            run_id INTEGER NOT NULL REFERENCES run(id),
            execution_id INTEGER REFERENCES execution(id) ON DELETE SET NULL,
            function TEXT NOT NULL,
            key TEXT NOT NULL,
            occurrence INTEGER NOT NULL,
            kind TEXT NOT NULL DEFAULT 'activity' CHECK (kind IN ('activity', 'step')),
            state TEXT NOT NULL CHECK (state IN ('running', 'recorded', 'failed', 'crashed')),
            started_at REAL NOT NULL,
            finished_at REAL,
            attempts INTEGER NOT NULL DEFAULT 1,
            attempt_started_at REAL NOT NULL,
            codec TEXT,
            codec_version INTEGER,
            type TEXT,
            meta TEXT,
            size INTEGER,
            inline BLOB,
            parts INTEGER NOT NULL DEFAULT 0,
            signature TEXT
        );
        CREATE INDEX activity_call_by_key ON activity_call(function, state, key, occurrence);
        CREATE INDEX activity_call_by_run ON activity_call(run_id, state);
        CREATE INDEX activity_call_by_execution ON activity_call(execution_id);

        CREATE TABLE attempt (
            call_id INTEGER NOT NULL REFERENCES activity_call(id) ON DELETE CASCADE,
            n INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('failed', 'timed-out')),
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL,
            delay REAL,
            error_type TEXT,
            error_message TEXT,
            traceback TEXT,
            PRIMARY KEY (call_id, n)
        );

        CREATE TABLE activity_blob (
            call_id INTEGER NOT NULL REFERENCES activity_call(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            blob_id INTEGER NOT NULL REFERENCES blob(id),
            PRIMARY KEY (call_id, seq)
        );
        CREATE INDEX activity_blob_by_blob ON activity_blob(blob_id);

        """ + ACTIVITY_VIEWS,
    ),
    Migration(
        3,
        "history views: names instead of fingerprints, run totals, output storage",
        """
        DROP VIEW runs;
        DROP VIEW executions;
        DROP VIEW outputs;
        """ + RUNS_VIEW + """

        CREATE VIEW executions AS
        SELECT e.id AS execution_id, e.run_id, e.cell_name, e.cell_id, e.execution_count, e.state,
               e.started_at, e.finished_at, e.duration, e.saved_seconds, e.replayed_from, e.reason,
               (SELECT group_concat(j.key, ', ') FROM json_each(e.inputs) j) AS inputs,
               (SELECT group_concat(o.name, ', ') FROM output o
                WHERE o.execution_id = coalesce(e.replayed_from, e.id) AND o.kind != 'result') AS outputs,
               e.bytes_stored, e.replayable, e.error_type, e.error_message, e.key, e.code_hash
        FROM execution e;

        """ + OUTPUTS_VIEW,
    ),
    Migration(
        4,
        "input and output names kept on the execution row (written with it), so history reads neither JSON nor "
        "outputs",
        """
        ALTER TABLE execution ADD COLUMN input_names TEXT;
        ALTER TABLE execution ADD COLUMN output_names TEXT;
        UPDATE execution SET input_names = (SELECT group_concat(j.key, ', ') FROM json_each(execution.inputs) j);
        UPDATE execution SET output_names = (
            SELECT group_concat(name, ', ') FROM (
                SELECT o.name FROM output o WHERE o.execution_id = coalesce(execution.replayed_from, execution.id)
                AND o.kind != 'result' ORDER BY o.name));

        DROP VIEW executions;
        CREATE VIEW executions AS
        SELECT e.id AS execution_id, e.run_id, e.cell_name, e.cell_id, e.execution_count, e.state,
               e.started_at, e.finished_at, e.duration, e.saved_seconds, e.replayed_from, e.reason,
               e.input_names AS inputs, e.output_names AS outputs, e.bytes_stored, e.replayable, e.error_type,
               e.error_message, e.key, e.code_hash
        FROM execution e;
        """,
    ),
    Migration(
        5,
        "files and directory listings a cell read, found while it ran (path → size, mtime, hash)",
        """
        ALTER TABLE execution ADD COLUMN read_files TEXT NOT NULL DEFAULT '{}';

        DROP VIEW executions;
        CREATE VIEW executions AS
        SELECT e.id AS execution_id, e.run_id, e.cell_name, e.cell_id, e.execution_count, e.state,
               e.started_at, e.finished_at, e.duration, e.saved_seconds, e.replayed_from, e.reason,
               e.input_names AS inputs, e.output_names AS outputs, e.bytes_stored, e.replayable, e.error_type,
               e.error_message, e.key, e.code_hash,
               (SELECT group_concat(j.key, ', ') FROM json_each(e.read_files) j) AS files_read
        FROM execution e;
        """,
    ),
    Migration(
        6,
        "executions: original_duration, so a replay's three figures (original, replay, saved) come from one place",
        """
        DROP VIEW executions;
        """ + executions_view(SQLITE_FILES_READ),
    ),
    Migration(
        7,
        "signers: the Ed25519 public key of whoever signed a stored value, one row per key",
        # Older rows keep signer_id NULL: their signature is the HMAC of their recorder's secret. A signed_batch is
        # one signature over the payload digests of the activity results one flush moved into the log (a
        # signature per call would cost more than recording it); its calls reference it by batch_id.
        """
        CREATE TABLE signer (
            id INTEGER PRIMARY KEY,
            public_key BLOB NOT NULL UNIQUE,
            name TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE signed_batch (
            id INTEGER PRIMARY KEY,
            signer_id INTEGER NOT NULL REFERENCES signer(id),
            digests BLOB NOT NULL,
            signature TEXT NOT NULL
        );
        ALTER TABLE output ADD COLUMN signer_id INTEGER REFERENCES signer(id);
        ALTER TABLE activity_call ADD COLUMN signer_id INTEGER REFERENCES signer(id);
        ALTER TABLE activity_call ADD COLUMN batch_id INTEGER REFERENCES signed_batch(id);
        """,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
