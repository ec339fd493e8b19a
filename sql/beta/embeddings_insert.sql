-- Store newly computed embeddings (the registered relation `new_embeddings`, columns of state_embeddings). A row
-- that another run stored meanwhile is kept as it was: the same (state, model) always embeds to the same vector.
INSERT INTO state_embeddings BY NAME
SELECT state_id, model, dim, embedding, created_at FROM new_embeddings
ON CONFLICT (state_id, model) DO NOTHING;
