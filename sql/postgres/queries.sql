-- Every query orch runs on PostgreSQL, under the names of sql/queries.sql (SQLite's),
-- with psycopg's %(name)s parameters. A name ending in __locked is the form a write
-- transaction runs instead of the plain one: it locks the rows it reads, so two
-- machines deciding about one item take turns, and claimers skip rows another claimer
-- holds (SKIP LOCKED) instead of queueing behind it. Times are epoch ms from the
-- server's clock (orchestrator/postgres.py reads it at the start of each transaction).

-- name: item
SELECT * FROM items WHERE id = %(id)s;

-- name: item__locked
-- orch_head (the hash the item's next event chains over) saves a round trip per event;
-- orchestrator/postgres.py takes it off the row.
SELECT *, (SELECT e.hash FROM event_log AS e WHERE e.seq = items.last_event) AS orch_head FROM items WHERE id = %(id)s
FOR NO KEY UPDATE OF items;

-- name: ancestor
SELECT * FROM items WHERE id = %(id)s;

-- name: ancestor__locked
-- A child's holder write checks its ancestors' claims; sharing the lock makes a
-- parent's release (which locks its running children) and the child's write take
-- turns. NOWAIT: a parent being released fails the child's transaction at once, which
-- is retried whole, instead of waiting in a deadlock the server would break after 1 s.
SELECT * FROM items WHERE id = %(id)s FOR SHARE NOWAIT;

-- name: item_by_key
SELECT * FROM items WHERE kind = %(kind)s AND queue = %(queue)s AND key = %(key)s;

-- name: item_by_key__locked
SELECT *, (SELECT e.hash FROM event_log AS e WHERE e.seq = items.last_event) AS orch_head FROM items
WHERE kind = %(kind)s AND queue = %(queue)s AND key = %(key)s
FOR NO KEY UPDATE OF items;

-- name: insert_item
INSERT INTO items (kind, queue, parent_id, key, payload, priority, status, attempts,
                   max_attempts, run_after, effect, created_at, updated_at)
VALUES (%(kind)s, %(queue)s, %(parent_id)s, %(key)s, %(payload)s, %(priority)s, 'pending', 0,
        %(max_attempts)s, %(run_after)s, %(effect)s, %(now)s, %(now)s)
RETURNING id, kind, queue, parent_id, key, payload, priority, status, attempts,
          max_attempts, run_after, effect, checkpoint, result, error, worker_id, fence,
          token_hash, lease_ttl_ms, lease_expires_at, heartbeat_at, cancel_requested,
          created_at, updated_at, last_event;

-- name: insert_item_with_id
INSERT INTO items (id, kind, queue, parent_id, key, payload, priority, status, attempts,
                   max_attempts, run_after, effect, created_at, updated_at, last_event)
VALUES (%(id)s, %(kind)s, %(queue)s, NULL, NULL, %(payload)s, %(priority)s, 'pending', 0,
        %(max_attempts)s, %(run_after)s, %(effect)s, %(created_at)s, %(updated_at)s,
        %(last_event)s);

-- name: new_item_ids
-- Ids for a bulk submit, from the identity's sequence: never one another machine got.
SELECT nextval(pg_get_serial_sequence('items', 'id')) AS id
FROM generate_series(1, %(n)s);

-- name: max_item_id
SELECT coalesce(max(id), 0) AS id FROM items;

-- name: next_claimable
SELECT * FROM items
WHERE status = 'pending' AND kind = %(kind)s AND queue = %(queue)s AND run_after <= %(now)s
ORDER BY priority DESC, id
LIMIT 1;

-- name: next_claimable__locked
SELECT *, (SELECT e.hash FROM event_log AS e WHERE e.seq = items.last_event) AS orch_head FROM items
WHERE status = 'pending' AND kind = %(kind)s AND queue = %(queue)s AND run_after <= %(now)s
ORDER BY priority DESC, id
LIMIT 1
FOR NO KEY UPDATE OF items SKIP LOCKED;

-- name: max_fence
SELECT max(fence) AS fence FROM items;

-- name: claim_item
UPDATE items
SET status = 'running', attempts = %(attempts)s, worker_id = %(worker_id)s, fence = %(fence)s,
    token_hash = %(token_hash)s, lease_ttl_ms = %(lease_ttl_ms)s,
    lease_expires_at = %(lease_expires_at)s, heartbeat_at = %(heartbeat_at)s,
    updated_at = %(updated_at)s, cancel_requested = %(cancel_requested)s
WHERE id = %(id)s;

-- name: register_worker
INSERT INTO workers AS w (worker_id, first_seen, last_seen, lease_expires_at)
VALUES (%(worker_id)s, %(now)s, %(now)s, %(expires)s)
ON CONFLICT (worker_id) DO UPDATE
SET last_seen = excluded.last_seen,
    lease_expires_at = greatest(w.lease_expires_at, excluded.lease_expires_at)
WHERE excluded.lease_expires_at > w.lease_expires_at + 1000;

-- name: extend_lease
UPDATE items SET lease_expires_at = %(expires)s, heartbeat_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s
RETURNING *;

-- name: settle
UPDATE items
SET status = %(status)s, run_after = %(run_after)s, result = %(result)s, error = %(error)s,
    token_hash = NULL, lease_expires_at = NULL, heartbeat_at = NULL,
    updated_at = %(updated_at)s
WHERE id = %(id)s;

-- name: settle_linked
UPDATE items
SET status = %(status)s, run_after = %(run_after)s, result = %(result)s, error = %(error)s,
    token_hash = NULL, lease_expires_at = NULL, heartbeat_at = NULL,
    updated_at = %(updated_at)s, last_event = %(last_event)s
WHERE id = %(id)s;

-- name: request_cancel
UPDATE items SET cancel_requested = 1, updated_at = %(now)s WHERE id = %(id)s RETURNING *;

-- name: requeue_item
-- A dead, failed or cancelled item made claimable again (rules.retry_task).
UPDATE items
SET status = 'pending', run_after = %(now)s, max_attempts = %(max_attempts)s,
    cancel_requested = 0, updated_at = %(now)s
WHERE id = %(id)s
RETURNING *;

-- name: save_checkpoint
UPDATE items SET checkpoint = %(checkpoint)s, updated_at = %(now)s WHERE id = %(id)s
RETURNING *;

-- name: expired_leases
SELECT id, kind, queue, effect, status, attempts, max_attempts, run_after, result, error,
       worker_id, fence, lease_expires_at, heartbeat_at, cancel_requested, last_event
FROM items
WHERE status = 'running' AND lease_expires_at <= %(now)s
ORDER BY lease_expires_at, id
LIMIT CASE WHEN %(limit)s::bigint < 0 THEN NULL ELSE %(limit)s::bigint END;

-- name: expired_leases__locked
-- Two machines recovering at once each take the expired leases the other has not
-- locked; the server checks the row is still running and expired when it locks it.
SELECT id, kind, queue, effect, status, attempts, max_attempts, run_after, result, error,
       worker_id, fence, lease_expires_at, heartbeat_at, cancel_requested, last_event
FROM items
WHERE status = 'running' AND lease_expires_at <= %(now)s
ORDER BY lease_expires_at, id
LIMIT CASE WHEN %(limit)s::bigint < 0 THEN NULL ELSE %(limit)s::bigint END
FOR NO KEY UPDATE SKIP LOCKED;

-- name: running_children
SELECT * FROM items WHERE parent_id = %(id)s AND status = 'running' ORDER BY id;

-- name: running_children__locked
SELECT *, (SELECT e.hash FROM event_log AS e WHERE e.seq = items.last_event) AS orch_head FROM items
WHERE parent_id = %(id)s AND status = 'running' ORDER BY id
FOR NO KEY UPDATE OF items;

-- name: children
SELECT * FROM items WHERE parent_id = %(id)s ORDER BY id;

-- name: list_items
SELECT * FROM items
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
ORDER BY id DESC
LIMIT CASE WHEN %(limit)s::bigint < 0 THEN NULL ELSE %(limit)s::bigint END;

-- name: count_by_status
SELECT status, count(*) AS n FROM items GROUP BY status;

-- name: count_by_queue_status
-- The daemon's metrics, at each scrape, and the web view's overview (like
-- count_by_status, one pass over the items).
SELECT queue, status, kind, count(*) AS n FROM items GROUP BY queue, status, kind;

-- name: running_leases
SELECT id, kind, queue, worker_id, fence, lease_ttl_ms, lease_expires_at, heartbeat_at,
       cancel_requested
FROM items
WHERE status = 'running'
ORDER BY worker_id, id
LIMIT %(limit)s;

-- name: running_by_worker
SELECT worker_id, id FROM items WHERE status = 'running' ORDER BY worker_id, id;

-- name: live_workers
SELECT * FROM workers WHERE lease_expires_at > %(now)s ORDER BY worker_id;

-- name: last_event
SELECT seq, hash FROM event_log ORDER BY seq DESC LIMIT 1;

-- name: item_head
-- The hash an item's next event chains over: its latest event's, or none yet.
SELECT e.hash FROM items AS i JOIN event_log AS e ON e.seq = i.last_event
WHERE i.id = %(item_id)s;

-- name: next_seq
SELECT nextval('orch_event_seq') AS seq;

-- name: next_seq_and_head
SELECT nextval('orch_event_seq') AS seq,
       (SELECT e.hash FROM items AS i JOIN event_log AS e ON e.seq = i.last_event
        WHERE i.id = %(item_id)s) AS hash;

-- name: insert_event
-- And makes it the item's latest (link_event), in the same round trip; an item not yet
-- inserted (a bulk submit writes its events first) is linked by its own insert.
WITH inserted AS (
    INSERT INTO event_log (seq, at, item_id, type, worker_id, fence, detail, prev_hash, hash,
                           item_prev)
    VALUES (%(seq)s, %(at)s, %(item_id)s, %(type)s, %(worker_id)s, %(fence)s, %(detail)s,
            %(prev_hash)s, %(hash)s,
            coalesce((SELECT last_event FROM items WHERE id = %(item_id)s), 0))
    RETURNING seq, item_id
)
UPDATE items SET last_event = inserted.seq FROM inserted WHERE items.id = inserted.item_id;

-- name: link_event
UPDATE items SET last_event = %(seq)s WHERE id = %(item_id)s;

-- name: log_head
-- The event horizon (see events_since): the overview counts events up to it, so one
-- committing later under a smaller number is never passed over.
SELECT %(horizon)s::bigint AS seq;

-- name: event_at_or_after
SELECT seq, at FROM event_log WHERE seq >= %(seq)s ORDER BY seq LIMIT 1;

-- name: activity
SELECT %(bucket)s::bigint * (at / %(bucket)s::bigint) AS slot,
       count(*) FILTER (WHERE type = 'claimed') AS claims,
       count(*) FILTER (WHERE type = 'released') AS releases,
       count(*) FILTER (WHERE type = 'expired'
                        OR (type = 'released'
                            AND detail::jsonb ->> 'outcome' = 'failed')) AS failures
FROM event_log
WHERE seq BETWEEN %(first)s AND %(last)s AND at >= %(start)s
GROUP BY 1
ORDER BY 1;

-- name: events_since
-- Only up to the horizon: every event numbered up to it has committed or never will
-- (see event_horizon), so a follower that goes on from the last one it saw misses none.
SELECT * FROM event_log WHERE seq > %(since)s AND seq <= %(horizon)s ORDER BY seq
LIMIT CASE WHEN %(limit)s::bigint < 0 THEN NULL ELSE %(limit)s::bigint END;

-- name: events_of_item
WITH RECURSIVE chain (seq) AS (
    SELECT last_event FROM items WHERE id = %(item_id)s AND last_event > %(since)s
    UNION ALL
    SELECT e.item_prev FROM event_log AS e JOIN chain ON e.seq = chain.seq
    WHERE e.item_prev > %(since)s
)
SELECT e.* FROM event_log AS e JOIN chain ON e.seq = chain.seq
ORDER BY e.seq
LIMIT CASE WHEN %(limit)s::bigint < 0 THEN NULL ELSE %(limit)s::bigint END;

-- name: all_items
SELECT * FROM items ORDER BY id;

-- name: all_events
SELECT * FROM event_log ORDER BY seq;

-- name: next_due
SELECT min(run_after) AS due FROM items
WHERE status = 'pending' AND kind = %(kind)s AND queue = %(queue)s AND run_after > %(now)s;

-- name: data_version
-- Moves whenever anyone appends an event: the daemon's safety net under LISTEN/NOTIFY.
SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS v FROM orch_event_seq;

-- name: begin_write
-- This query and the ones after it, up to notify_claimable, are the transaction-level
-- queries of orchestrator/postgres.py.
-- Every write transaction holds this shared lock until it ends; a follower reads the
-- writers holding it to know when every event numbered so far has committed or
-- rolled back. Shared: writers never wait for one another on it.
SELECT pg_advisory_xact_lock_shared(1869771624, hashtext(current_schema()) & 2147483647),
       floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now;

-- name: server_now
SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now;

-- name: event_horizon
SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS horizon FROM orch_event_seq;

-- name: event_writers
-- Run after event_horizon: any transaction holding a number up to the horizon took
-- its lock before taking the number, so it is among these (or has ended).
SELECT coalesce(array_agg(virtualtransaction), '{}') AS writers FROM pg_locks
WHERE locktype = 'advisory' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = 1869771624
  AND objid::bigint = (hashtext(current_schema()) & 2147483647) AND objsubid = 2;

-- name: event_writers_left
SELECT count(*) AS n FROM pg_locks
WHERE locktype = 'advisory' AND granted AND virtualtransaction = ANY(%(writers)s)
  AND classid::bigint = 1869771624
  AND objid::bigint = (hashtext(current_schema()) & 2147483647) AND objsubid = 2;

-- name: migrate_lock
-- Two machines starting at once: one migrates, the other waits and finds it done.
SELECT pg_advisory_xact_lock(1869771625, hashtext(current_schema()) & 2147483647);

-- name: migrations_table
CREATE TABLE IF NOT EXISTS orch_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_version
SELECT coalesce(max(version), 0) AS version FROM orch_migrations;

-- name: record_migration
INSERT INTO orch_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: has_migrations_table
-- current_schema() is null when no schema of the search_path exists or is usable by
-- this role (lacking USAGE on a schema hides it).
SELECT to_regclass('orch_migrations') IS NOT NULL AS present,
       to_regclass('items') IS NOT NULL AS items,
       current_schema() AS schema, current_setting('search_path') AS search_path,
       current_user AS role;

-- name: meta
SELECT value FROM orch_meta WHERE key = %(key)s;

-- name: set_meta
INSERT INTO orch_meta (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: notify_claimable
SELECT pg_notify('orch_claimable', '');

-- name: items_after
-- This query and the ones after it are orch copy's (orchestrator/pgcopy.py): a SQLite
-- file's items, workers and events written into an empty schema, in one transaction.
SELECT * FROM items WHERE id > %(after)s ORDER BY id LIMIT %(limit)s;

-- name: all_workers
SELECT * FROM workers ORDER BY worker_id;

-- name: count_items_events
SELECT (SELECT count(*) FROM items) AS items,
       (SELECT count(*) FROM event_log) AS events,
       (SELECT count(*) FROM workers) AS workers,
       (SELECT coalesce(max(fence), 0) FROM items) AS max_fence,
       (SELECT coalesce(max(seq), 0) FROM event_log) AS last_seq;

-- name: schema_tables
-- What the schema a URL works in holds already (indexes aside): orch copy fills only an
-- empty schema, or one orch made that holds no items or events yet.
SELECT c.relname AS name
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
ORDER BY c.relname;

-- name: lock_for_copy
-- Readers go on; a writer (another orch copy, a daemon already pointed here) waits, so
-- the emptiness checked next stays true until the copy commits.
LOCK TABLE items, workers, event_log IN EXCLUSIVE MODE;

-- name: copy_worker
INSERT INTO workers (worker_id, first_seen, last_seen, lease_expires_at)
VALUES (%(worker_id)s, %(first_seen)s, %(last_seen)s, %(lease_expires_at)s);

-- name: copy_item
-- Ids, fences and the latest event as the file has them; a parent is copied before its
-- children (ids only grow).
INSERT INTO items (id, kind, queue, parent_id, key, payload, priority, status, attempts,
                   max_attempts, run_after, effect, checkpoint, result, error, worker_id,
                   fence, token_hash, lease_ttl_ms, lease_expires_at, heartbeat_at,
                   cancel_requested, created_at, updated_at, last_event)
VALUES (%(id)s, %(kind)s, %(queue)s, %(parent_id)s, %(key)s, %(payload)s, %(priority)s,
        %(status)s, %(attempts)s, %(max_attempts)s, %(run_after)s, %(effect)s,
        %(checkpoint)s, %(result)s, %(error)s, %(worker_id)s, %(fence)s, %(token_hash)s,
        %(lease_ttl_ms)s, %(lease_expires_at)s, %(heartbeat_at)s, %(cancel_requested)s,
        %(created_at)s, %(updated_at)s, %(last_event)s);

-- name: copy_event
-- Numbers, hashes and prev_hash as written on SQLite (one chain over the whole log);
-- item_prev as pgcopy computed it where the file has none.
INSERT INTO event_log (seq, at, item_id, type, worker_id, fence, detail, prev_hash, hash,
                       item_prev)
VALUES (%(seq)s, %(at)s, %(item_id)s, %(type)s, %(worker_id)s, %(fence)s, %(detail)s,
        %(prev_hash)s, %(hash)s, %(item_prev)s);

-- name: set_event_seq
-- The next event (and so the next fence) is numbered above every copied one. greatest:
-- numbers handed out here before the copy (to transactions that rolled back) stay used.
SELECT setval('orch_event_seq',
              greatest(%(seq)s, (SELECT CASE WHEN is_called THEN last_value ELSE 0 END
                                 FROM orch_event_seq)));

-- name: set_item_seq
-- New items, from any machine, get ids above every copied one.
SELECT setval(pg_get_serial_sequence('items', 'id'), %(id)s);
