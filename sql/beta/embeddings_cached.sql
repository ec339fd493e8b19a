-- Cached frozen-LM embeddings of some states under one model. Parameters: $state_ids (VARCHAR[]), $model.
SELECT e.state_id, e.embedding
FROM state_embeddings AS e
SEMI JOIN (SELECT unnest($state_ids::VARCHAR[]) AS state_id) AS wanted USING (state_id)
WHERE e.model = $model;
