-- The first schema: work items with their leases, workers, and the append-only,
-- hash-chained event log. Applied in one transaction with user_version.

CREATE TABLE items (
    id               INTEGER PRIMARY KEY,
    kind             TEXT    NOT NULL CHECK (kind IN ('task', 'session', 'goal', 'tool_execution')),
    queue            TEXT    NOT NULL,
    parent_id        INTEGER REFERENCES items (id),
    key              TEXT,
    payload          TEXT    NOT NULL,          -- JSON text
    priority         INTEGER NOT NULL DEFAULT 0,
    status           TEXT    NOT NULL CHECK (status IN
                        ('pending', 'running', 'succeeded', 'failed', 'dead', 'cancelled', 'unknown')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,          -- 0: unlimited
    run_after        INTEGER NOT NULL,          -- epoch ms
    effect           TEXT    NOT NULL CHECK (effect IN ('idempotent', 'unsafe')),
    checkpoint       TEXT,                      -- JSON text
    result           TEXT,                      -- JSON text
    error            TEXT,
    -- the lease (worker_id and fence stay after release: they name the last holder)
    worker_id        TEXT,
    fence            INTEGER,
    token_hash       TEXT,                      -- sha256 of the token; the token itself is never stored
    lease_ttl_ms     INTEGER,
    lease_expires_at INTEGER,
    heartbeat_at     INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    CHECK ((status = 'running') = (token_hash IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- An idempotency key is unique per (kind, queue) forever.
CREATE UNIQUE INDEX items_key ON items (kind, queue, key) WHERE key IS NOT NULL;
-- Claiming: one ordered lookup per (kind, queue) among pending items only.
CREATE INDEX items_claimable ON items (kind, queue, priority DESC, id, run_after)
    WHERE status = 'pending';
-- Recovery: only running items, ordered by expiry, so a pass costs what has expired.
CREATE INDEX items_lease ON items (lease_expires_at) WHERE status = 'running';
-- Children of a session or goal (cascade, replay).
CREATE INDEX items_parent ON items (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE workers (
    worker_id        TEXT    PRIMARY KEY,
    first_seen       INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL
) WITHOUT ROWID;

-- There is no fence counter: a claim's fence is the sequence number of its 'claimed'
-- event, which is unique, only grows, and commits or vanishes with the claim.

CREATE TABLE event_log (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    item_id   INTEGER,
    type      TEXT    NOT NULL,
    worker_id TEXT,
    fence     INTEGER,
    detail    TEXT    NOT NULL,                 -- JSON object
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE INDEX event_log_item ON event_log (item_id, seq);

CREATE TRIGGER event_log_no_update BEFORE UPDATE ON event_log
BEGIN
    SELECT RAISE(ABORT, 'event_log is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER event_log_no_delete BEFORE DELETE ON event_log
BEGIN
    SELECT RAISE(ABORT, 'event_log is append-only: DELETE is not allowed');
END;
