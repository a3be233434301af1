"""The node's face: the REST API, its views of models, metrics."""
