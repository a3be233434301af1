"""The model lifecycle: one state machine per model (queued, fetching, ready, failed), pins, refreshes."""
