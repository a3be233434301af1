"""The start-up sequence (wait for cache, [full verify,] load incl. check, warm-up) and its health probe."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from serving import integrity
from serving.metrics import Metrics
from serving.policy import cosine, output_problem

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_TEXT = "model-locality health probe: the quick brown fox jumps over the lazy dog."
# An embedding model worth serving ranks a paraphrase above an unrelated sentence; random or
# scrambled weights do so only by chance, so this catches damage that no digest record covers.
SANITY = (
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The central bank raised interest rates again.",
)
WARM_TEXT = "Warm-up input long enough to exercise attention over a realistic number of tokens. " * 3
HEALTHY_COSINE = 0.999


class Embedder(Protocol):
    """What the app needs from a loaded model (``serving.model.TorchEmbedder`` is the real one)."""

    dimension: int
    device: str

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int]]: ...


class StartupError(Exception):
    """Start-up cannot finish; the message is the one line the CLI prints before exiting 1."""


RunInThread = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Loaded:
    embedder: Embedder
    reference: tuple[float, ...]  # the probe's vector at start-up
    model_dir: Path


async def start(
    resolve: Callable[[], Awaitable[Path]],
    load: Callable[[Path], Embedder],
    run: RunInThread,
    metrics: Metrics,
    *,
    max_batch: int,
    verify: str,
    prepare: Callable[[], object] | None = None,
) -> Loaded:
    """Run the phases in order, exporting each duration; raise ``StartupError`` on any failure.

    ``prepare`` (importing torch: seconds) runs on a daemon thread while the cache is awaited and
    verified, so the slow import overlaps the wait instead of adding to it; the loader's own import
    then waits on Python's import lock, and a failed start exits without waiting for it.

    ``verify``: ``stream`` leaves the digest check to ``load`` (one pass: the loader hashes what
    it reads); ``full`` re-hashes the whole model first, in a ``verify`` phase of its own; the
    ``verify`` gauge stays 0 unless that phase runs.
    """
    if prepare is not None:
        threading.Thread(target=_quietly, args=(prepare,), name="serving-prepare", daemon=True).start()
    model_dir = await _phase(metrics, "wait_for_cache", resolve())
    if verify == "full":
        await _phase(metrics, "verify", asyncio.to_thread(_verify, model_dir, True))
    try:
        embedder: Embedder = await _phase(metrics, "load", run(load, model_dir))
    except StartupError:
        raise
    except Exception as exc:  # ModelLoadError lives in serving.model, which imports torch
        raise StartupError(str(exc) or f"cannot load the model in {model_dir}: {type(exc).__name__}") from exc
    reference = await _phase(metrics, "warmup", _warm_up(embedder, run, max_batch))
    log.info("model in %s ready on %s (%d dimensions)", model_dir, embedder.device, embedder.dimension)
    return Loaded(embedder, reference, model_dir)


def _quietly(prepare: Callable[[], object]) -> None:
    start = time.perf_counter()
    try:
        prepare()
    except Exception as exc:  # the loader repeats the import and reports the error properly
        log.debug("prepare failed: %s", exc)
        return
    log.info("prepared (model runtime imported) in %.3fs", time.perf_counter() - start)


async def _phase(metrics: Metrics, name: str, work: Awaitable[T]) -> T:
    start = time.perf_counter()
    result = await work
    seconds = time.perf_counter() - start
    metrics.startup_phase.labels(phase=name).set(seconds)
    log.info("start-up phase %s took %.3fs", name, seconds)
    return result


def _verify(model_dir: Path, against_cache: bool) -> None:
    """Header checks always; digest checks when the directory is a node-cache model."""
    try:
        tensors = integrity.check_dir(model_dir)
        in_cache = against_cache and integrity.verify_in_cache(model_dir)
    except integrity.IntegrityError as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise StartupError(f"cannot read {exc.filename or model_dir}: {exc.strerror or exc}") from exc
    log.info("%s: %d tensors, headers intact%s", model_dir, tensors, ", digests match" if in_cache else "")


async def _warm_up(embedder: Embedder, run: RunInThread, max_batch: int) -> tuple[float, ...]:
    """Embed the probe and sanity sentences (then a full batch on a GPU); return the probe's vector."""
    vectors, _ = await run(embedder.embed, [PROBE_TEXT, *SANITY])
    problem = output_problem(vectors)
    if problem:
        raise StartupError(f"warm-up output is unusable: {problem}")
    if cosine(vectors[1], vectors[2]) <= cosine(vectors[1], vectors[3]):
        raise StartupError("warm-up sanity check failed: a paraphrase scored below an unrelated sentence")
    if embedder.device != "cpu":  # allocate for the largest batch now, not on a client's request
        full, _ = await run(embedder.embed, [WARM_TEXT] * max_batch)
        problem = output_problem(full)
        if problem:
            raise StartupError(f"warm-up output is unusable: {problem}")
    return tuple(vectors[0])


async def probe(loaded: Loaded, run: RunInThread) -> str | None:
    """Embed the probe text again; why the model is unhealthy, or ``None`` when it matches."""
    vectors, _ = await run(loaded.embedder.embed, [PROBE_TEXT])
    problem = output_problem(vectors)
    if problem:
        return f"health probe output is unusable: {problem}"
    similarity = cosine(vectors[0], loaded.reference)
    if similarity < HEALTHY_COSINE:
        return f"health probe drifted: cosine {similarity:.4f} to the start-up reference"
    return None
