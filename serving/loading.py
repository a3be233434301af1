"""The load phase a pod waits for: weights read while torch imports, then the model built over them.

torch and transformers take seconds to import (the start-up's ``prepare`` thread begins that
when the server starts, but a model already in the node cache is found at once). Reading and
checking the weights into host memory needs no torch (``serving.hostload``), so a CPU load
reads while they import, and a second thread reads config and tokenizer and imports the
model class meanwhile; the model is then built over the read buffers. A GPU load (``cuda``, or
``auto`` on a host with GPU device nodes) waits for torch and runs ``serving.model.load``,
whose pass copies to the device as it reads. Imports no torch itself.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

from serving import hostload
from serving.startup import Embedder

# Device nodes without which no torch build sees a GPU: NVIDIA, AMD ROCm, WSL.
GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def host_first(device: str, nodes: tuple[str, ...] = GPU_NODES) -> bool:
    """Whether the weights belong in host memory before torch can say which device serves."""
    if device == "auto":
        return not any(os.path.exists(node) for node in nodes)
    return device == "cpu"


_IMPORTING = threading.Lock()


def runtime() -> Any:
    """``serving.model`` (torch, transformers), imported by one thread at a time: the start-up's
    prepare thread and a load's side thread both come here, and the later one waits for the
    first one's import to finish here, not inside the import system."""
    with _IMPORTING:
        return importlib.import_module("serving.model")


def load(model_dir: Path, *, device: str, threads: int | None, check: bool) -> Embedder:
    """The ready-to-warm-up model in ``model_dir``; the first error (integrity first) is raised."""
    if not host_first(device):
        model = runtime()
        embedder: Embedder = model.load(model_dir, device=device, threads=threads, check=check)
        return embedder
    side = _Side(model_dir)
    host = hostload.read_host(model_dir, check=check)  # an IntegrityError wins over the side's errors
    module, found = side.result()
    embedder = module.load_host(model_dir, host, found, device=device, threads=threads)
    return embedder


class _Side:
    """``serving.model`` imported (or awaited from the prepare thread) and the model's other
    parts read, on a daemon thread: a start that fails meanwhile exits without waiting for it."""

    def __init__(self, model_dir: Path) -> None:
        self._done = threading.Event()
        self._value: tuple[Any, Any] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(model_dir,), name="serving-parts", daemon=True).start()

    def _run(self, model_dir: Path) -> None:
        try:
            module = runtime()
            self._value = (module, module.parts(model_dir))
        except BaseException as exc:  # handed to the loading thread, which raises it
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> tuple[Any, Any]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
