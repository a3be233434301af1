"""model-locality node agent: pre-fetches model weights into the node's local cache."""
