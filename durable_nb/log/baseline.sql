-- version 7
CREATE TABLE schema_migration (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);
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
        , input_names TEXT, output_names TEXT, read_files TEXT NOT NULL DEFAULT '{}');
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
            signature TEXT, signer_id INTEGER REFERENCES signer(id),
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
        , signer_id INTEGER REFERENCES signer(id), batch_id INTEGER REFERENCES signed_batch(id));
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
CREATE VIEW outputs AS
        SELECT o.execution_id, o.name, o.kind, o.codec, o.codec_version, o.type, o.size, o.target,
               o.inplace, o.signature IS NOT NULL AS signed,
               (SELECT count(*) FROM output_blob b WHERE b.execution_id = o.execution_id AND b.name = o.name)
                   AS blobs,
               (SELECT coalesce(sum(bl.stored_size), 0) FROM output_blob b JOIN blob bl ON bl.id = b.blob_id
                WHERE b.execution_id = o.execution_id AND b.name = o.name) AS stored_size
        FROM output o;
CREATE VIEW executions AS
        SELECT e.id AS execution_id, e.run_id, e.cell_name, e.cell_id, e.execution_count, e.state,
               e.started_at, e.finished_at, e.duration,
               CASE WHEN e.replayed_from IS NULL THEN e.duration
                    ELSE (SELECT s.duration FROM execution s WHERE s.id = e.replayed_from) END AS original_duration,
               e.saved_seconds, e.replayed_from, e.reason,
               e.input_names AS inputs, e.output_names AS outputs, e.bytes_stored, e.replayable, e.error_type,
               e.error_message, e.key, e.code_hash,
               (SELECT group_concat(j.key, ', ') FROM json_each(e.read_files) j) AS files_read
        FROM execution e;
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
