"""model-locality scheduler extender: scores nodes by the model weights they already hold."""
