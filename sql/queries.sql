-- Every query orch runs, by name. Loaded once by orchestrator/store.py; parameters are
-- always bound (:name), never formatted in. A bound value compared bare with an indexed
-- column in an ordered query makes SQLite prepare the statement again at every
-- binding (several µs); written +:name, it is bound all the same and the plan is kept.

-- name: item
SELECT * FROM items WHERE id = :id;

-- name: item_by_key
SELECT * FROM items WHERE kind = :kind AND queue = :queue AND key = :key;

-- name: insert_item
INSERT INTO items (kind, queue, parent_id, key, payload, priority, status, attempts,
                   max_attempts, run_after, effect, created_at, updated_at)
VALUES (:kind, :queue, :parent_id, :key, :payload, :priority, 'pending', 0,
        :max_attempts, :run_after, :effect, :now, :now)
RETURNING *;

-- name: insert_item_with_id
-- Bulk submit: the caller gives the id and its submitted event (see rules.insert_plain).
INSERT INTO items (id, kind, queue, parent_id, key, payload, priority, status, attempts,
                   max_attempts, run_after, effect, created_at, updated_at, last_event)
VALUES (:id, :kind, :queue, NULL, NULL, :payload, :priority, 'pending', 0,
        :max_attempts, :run_after, :effect, :created_at, :updated_at, :last_event);

-- name: max_item_id
SELECT coalesce(max(id), 0) AS id FROM items;

-- name: next_claimable
-- The best pending item of one kind in one queue: one ordered probe of items_claimable.
SELECT * FROM items INDEXED BY items_claimable
WHERE status = 'pending' AND kind = +:kind AND queue = +:queue AND run_after <= +:now
ORDER BY priority DESC, id
LIMIT 1;

-- name: max_fence
SELECT max(fence) AS fence FROM items;

-- name: claim_item
-- The caller gives the new row (rules.claim_row). An expired lease with a cancel
-- request is never taken over (recovery makes it cancelled), so a claim clears it.
UPDATE items
SET status = 'running', attempts = :attempts, worker_id = :worker_id, fence = :fence,
    token_hash = :token_hash, lease_ttl_ms = :lease_ttl_ms,
    lease_expires_at = :lease_expires_at, heartbeat_at = :heartbeat_at,
    updated_at = :updated_at, cancel_requested = :cancel_requested
WHERE id = :id;

-- name: register_worker
INSERT INTO workers (worker_id, first_seen, last_seen, lease_expires_at)
VALUES (:worker_id, :now, :now, :expires)
ON CONFLICT (worker_id) DO UPDATE
SET last_seen = excluded.last_seen,
    lease_expires_at = max(lease_expires_at, excluded.lease_expires_at)
-- Refreshed at most once a second per worker: a claim need not rewrite this page.
WHERE excluded.lease_expires_at > workers.lease_expires_at + 1000;

-- name: extend_lease
UPDATE items SET lease_expires_at = :expires, heartbeat_at = :now, updated_at = :now
WHERE id = :id
RETURNING *;

-- name: settle
-- Any move out of a lease (release, recovery, cancel, resolve): the lease is dropped,
-- worker_id and fence stay to name the last holder. The caller gives the new row
-- (rules.settled).
UPDATE items
SET status = :status, run_after = :run_after, result = :result, error = :error,
    token_hash = NULL, lease_expires_at = NULL, heartbeat_at = NULL, updated_at = :updated_at
WHERE id = :id;

-- name: settle_linked
-- settle, for recovery in bulk, also naming the item's new latest event; run after the
-- events are inserted (they link to the previous latest).
UPDATE items
SET status = :status, run_after = :run_after, result = :result, error = :error,
    token_hash = NULL, lease_expires_at = NULL, heartbeat_at = NULL, updated_at = :updated_at,
    last_event = :last_event
WHERE id = :id;

-- name: request_cancel
UPDATE items SET cancel_requested = 1, updated_at = :now WHERE id = :id RETURNING *;

-- name: requeue_item
-- A dead, failed or cancelled item made claimable again (rules.retry_task): a new
-- attempt budget, any old cancel request cleared; result and error stay until the next
-- release replaces them.
UPDATE items
SET status = 'pending', run_after = :now, max_attempts = :max_attempts, cancel_requested = 0,
    updated_at = :now
WHERE id = :id
RETURNING *;

-- name: save_checkpoint
UPDATE items SET checkpoint = :checkpoint, updated_at = :now WHERE id = :id RETURNING *;

-- name: expired_leases
-- What recovery and status need, not whole rows (payloads and all): recovery reads
-- every expired lease at once.
SELECT id, kind, queue, effect, status, attempts, max_attempts, run_after, result, error,
       worker_id, fence, lease_expires_at, heartbeat_at, cancel_requested, last_event
FROM items INDEXED BY items_lease
WHERE status = 'running' AND lease_expires_at <= +:now
ORDER BY lease_expires_at, id
LIMIT :limit;

-- name: running_children
SELECT * FROM items INDEXED BY items_parent
WHERE parent_id = +:id AND status = 'running'
ORDER BY id;

-- name: children
SELECT * FROM items INDEXED BY items_parent WHERE parent_id = +:id ORDER BY id;

-- name: list_items
SELECT * FROM items
WHERE (:status IS NULL OR status = :status)
  AND (:queue IS NULL OR queue = :queue)
  AND (:kind IS NULL OR kind = :kind)
ORDER BY id DESC
LIMIT :limit;

-- name: count_by_status
SELECT status, count(*) AS n FROM items GROUP BY status;

-- name: count_by_queue_status
-- The daemon's metrics, at each scrape, and the web view's overview: one pass over the
-- items, like count_by_status (an index kept for it would cost every write).
SELECT queue, status, kind, count(*) AS n FROM items GROUP BY queue, status, kind;

-- name: running_leases
-- The live (and expired, not yet recovered) leases, with what a person needs to see of
-- each: never the token hash.
SELECT id, kind, queue, worker_id, fence, lease_ttl_ms, lease_expires_at, heartbeat_at,
       cancel_requested
FROM items INDEXED BY items_lease
WHERE status = 'running'
ORDER BY worker_id, id
LIMIT :limit;

-- name: running_by_worker
SELECT worker_id, id FROM items INDEXED BY items_lease
WHERE status = 'running'
ORDER BY worker_id, id;

-- name: live_workers
SELECT * FROM workers WHERE lease_expires_at > :now ORDER BY worker_id;

-- name: last_event
SELECT seq, hash FROM event_log ORDER BY seq DESC LIMIT 1;

-- name: insert_event
-- Linked to the item's previous event; then link_event makes this one its latest.
INSERT INTO event_log (seq, at, item_id, type, worker_id, fence, detail, prev_hash, hash,
                       item_prev)
VALUES (:seq, :at, :item_id, :type, :worker_id, :fence, :detail, :prev_hash, :hash,
        coalesce((SELECT last_event FROM items WHERE id = :item_id), 0));

-- name: link_event
UPDATE items SET last_event = :seq WHERE id = :item_id;

-- name: log_head
-- The last event's number (on PostgreSQL, the event horizon: see events_since there).
SELECT coalesce(max(seq), 0) AS seq FROM event_log;

-- name: event_at_or_after
SELECT seq, at FROM event_log WHERE seq >= :seq ORDER BY seq LIMIT 1;

-- name: activity
-- Claims, releases and failures (a failed release, a lost lease) per time slot, among
-- the events :first..:last at or after :start (the web view's charts).
SELECT :bucket * (at / :bucket) AS slot,
       sum(type = 'claimed') AS claims,
       sum(type = 'released') AS releases,
       sum(type = 'expired'
           OR (type = 'released' AND json_extract(detail, '$.outcome') = 'failed')) AS failures
FROM event_log
WHERE seq BETWEEN :first AND :last AND at >= :start
GROUP BY 1
ORDER BY 1;

-- name: events_since
SELECT * FROM event_log WHERE seq > :since ORDER BY seq LIMIT :limit;

-- name: events_of_item
-- Linked events: back from the item's latest, one link at a time, down to :since.
-- Events from before the links (migration 0002): through their partial index.
WITH RECURSIVE chain (seq) AS (
    SELECT last_event FROM items WHERE id = :item_id AND last_event > :since
    UNION ALL
    SELECT e.item_prev FROM event_log AS e JOIN chain ON e.seq = chain.seq
    WHERE e.item_prev > :since
)
SELECT e.* FROM event_log AS e JOIN chain ON e.seq = chain.seq
WHERE e.item_prev IS NOT NULL
UNION ALL
SELECT * FROM event_log INDEXED BY event_log_item_unlinked
WHERE item_id = +:item_id AND item_prev IS NULL AND seq > +:since
ORDER BY seq
LIMIT :limit;

-- name: all_items
SELECT * FROM items ORDER BY id;

-- name: all_events
SELECT * FROM event_log ORDER BY seq;

-- name: next_due
-- When the next delayed item of one kind in one queue becomes claimable (daemon waiters).
SELECT min(run_after) AS due FROM items INDEXED BY items_claimable
WHERE status = 'pending' AND kind = +:kind AND queue = +:queue AND run_after > +:now;

-- name: data_version
PRAGMA data_version;

-- name: ancestor
-- A goal's or tool execution's ancestor, read to check its claim (PostgreSQL locks it).
SELECT * FROM items WHERE id = :id;

-- name: items_after
-- This query and the next two are orch copy's, which moves this file into a PostgreSQL
-- database: read in pages, all inside one read transaction (the file as of one moment).
SELECT * FROM items WHERE id > :after ORDER BY id LIMIT :limit;

-- name: all_workers
SELECT * FROM workers ORDER BY worker_id;

-- name: count_items_events
-- What orch copy compares between the file and the database it filled.
SELECT (SELECT count(*) FROM items) AS items,
       (SELECT count(*) FROM event_log) AS events,
       (SELECT count(*) FROM workers) AS workers,
       (SELECT coalesce(max(fence), 0) FROM items) AS max_fence,
       (SELECT coalesce(max(seq), 0) FROM event_log) AS last_seq;
