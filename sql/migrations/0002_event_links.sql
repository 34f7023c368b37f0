-- Each event links to the previous event of its item, and each item names its latest
-- event, so an item's history is found by following the links back from the item.
-- That lets the event_log_item index go: it cost one more page written at nearly
-- every commit. Events written before this migration have no link (item_prev NULL);
-- a partial index keeps them findable, and no later event enters it.

ALTER TABLE event_log ADD COLUMN item_prev INTEGER;  -- the item's previous event, 0: none
ALTER TABLE items ADD COLUMN last_event INTEGER NOT NULL DEFAULT 0;  -- its latest event

UPDATE items SET last_event = coalesce(
    (SELECT max(seq) FROM event_log INDEXED BY event_log_item WHERE item_id = items.id), 0);

CREATE INDEX event_log_item_unlinked ON event_log (item_id, seq) WHERE item_prev IS NULL;
DROP INDEX event_log_item;
