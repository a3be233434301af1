"""model-locality reference serving: embeddings from weights in the node cache.

``model-serve --model-dir DIR | --model-uri URI [--host H] [--port P]`` (default 0.0.0.0:8000).

* ``POST /v1/embeddings``: OpenAI shape, ``{"input": str | [str], "model"?, "encoding_format"?:
  "float" | "base64", "dimensions"?, "user"?}``. ``model`` may be omitted; a different name gets
  404 (as OpenAI and vLLM answer), so a client routed to the wrong deployment hears about it.
  Inputs longer than the model's ``max_seq_length`` are truncated (sentence-transformers does
  the same). Concurrent requests are batched (``--max-batch``, ``--max-wait-ms``); the queue is
  bounded (``--max-queue`` inputs) and a request that does not fit gets 429 with Retry-After.
* ``GET /readyz``: 503 until the weights are verified, loaded and a warm-up inference passed.
* ``GET /healthz``: 200 ``starting`` while loading (use a startupProbe on ``/readyz``); then a
  known input is embedded and compared with its start-up vector (cosine >= 0.999), 503 if not.
* ``GET /metrics``: ``model_locality_serving_*``: queue depth, in-flight requests, request latency
  and queue wait histograms (1 ms .. 10 s), batch size, start-up phase seconds
  (``wait_for_cache | verify | load | warmup``; ``load`` runs from the model found to the model
  ready to warm up: the digest check, done in the same pass as the read, and whatever is left of
  the torch/transformers import, which the read overlaps on a CPU; ``verify`` is a separate
  re-hash, only with ``--verify full``), readiness and health.

Start-up fails (exit 1, one line on stderr naming the file) on a damaged safetensors header, on a
node-cache model whose bytes differ from the agent's record, and on NaN/Inf or nonsensical
warm-up output. With ``--model-uri`` the local agent fetches the model and returns its path; mount
the cache read-only at the same path the agent uses. torch and transformers are imported only by
``serving.model`` and ``serving.loader`` (extra ``serving``), so the rest imports in the agent image.
"""
