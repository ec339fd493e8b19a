-- Checkpoints waiting for the promotion gate, oldest first: the last checkpoint of a chain (no checkpoint continues
-- from it) that the gate has never decided on. The daily flow gates one when enough out-of-sample days exist.
SELECT c.checkpoint_id, c.created_at
FROM checkpoints AS c
WHERE c.checkpoint_id NOT IN (SELECT parent_id FROM checkpoints WHERE parent_id IS NOT NULL)
  AND c.checkpoint_id NOT IN (SELECT candidate FROM promotions)
ORDER BY c.created_at, c.checkpoint_id;
