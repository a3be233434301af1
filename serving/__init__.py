"""model-locality reference serving: embeddings from weights in the node cache."""
