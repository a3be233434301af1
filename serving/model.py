"""The one door to torch and transformers: load a sentence-embedding model and run it.

Imported lazily (by the start-up sequence only), so the app, the config and the agent image
work without torch installed (``serving.loader``, the weights' one-pass reader, is imported
from here only). All calls here block; the app runs them on its inference thread.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

# PreTrainedModel: the whole modeling stack (seconds), imported here so the prepare thread pays it
from transformers import MODEL_MAPPING, AutoConfig, AutoTokenizer, PreTrainedModel

from serving import loader
from serving.hostload import HostWeights
from serving.integrity import IntegrityError

DEFAULT_MAX_TOKENS = 512


class ModelLoadError(Exception):
    """The directory could not be turned into a working model; the message says why."""


class TorchEmbedder:
    """A transformer encoder plus mean pooling and L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, tokenizer: Any, model: Any, device: str, max_tokens: int) -> None:
        self._tokenizer = tokenizer
        self._model = model
        self.device = device
        self.max_tokens = max_tokens
        self.dimension = int(model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int]]:
        """Embed ``texts``; return unit vectors and each input's token count.

        ``v = normalize(sum_t(h_t * m_t) / max(sum_t m_t, 1e-9))`` with hidden states ``h`` and the
        attention mask ``m``, so padding never leaks into a vector.
        """
        enc = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        tokens = enc["attention_mask"].sum(dim=1)
        return vectors.cpu().tolist(), [int(t) for t in tokens.cpu().tolist()]


def pick_device(wanted: str) -> str:
    """``cuda`` when asked or when ``auto`` finds a GPU; ``cpu`` otherwise."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA device")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


@dataclass(frozen=True, slots=True)
class Parts:
    """What a model needs besides its weights: config, the class it names (imported), tokenizer."""

    config: Any
    cls: Any
    tokenizer: Any


def parts(model_dir: Path) -> Parts:
    """Read ``config.json`` and the tokenizer, import the model class; ``ModelLoadError`` if any fails."""
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        return Parts(config, MODEL_MAPPING[type(config)], tokenizer)
    except Exception as exc:  # the loaders raise anything from OSError to ValueError
        raise _load_error(model_dir, exc) from exc


def load(
    model_dir: Path, *, device: str = "auto", threads: int | None = None, check: bool = True
) -> TorchEmbedder:
    """Load tokenizer and safetensors weights from a local directory onto ``device``; no hub access.

    The weights come from ``serving.loader`` in one pass: read, hashed against the node cache
    record (``check``, when the directory is a cached model) and placed on the device; a damaged
    file raises ``IntegrityError`` naming the file and chunk.
    """
    target = _setup(device, threads)
    state = loader.load_state_dict(model_dir, device=target, check=check)  # IntegrityError as is
    return _embedder(model_dir, state, target, parts(model_dir))


def load_host(
    model_dir: Path, host: HostWeights, found: Parts, *, device: str = "cpu", threads: int | None = None
) -> TorchEmbedder:
    """The model over weights already read into host memory and checked (``serving.hostload``).

    ``device`` is normally the CPU; a GPU that ``auto`` finds after all gets a copy of the model.
    """
    target = _setup(device, threads)
    model = _embedder(model_dir, loader.tensors_of(host), "cpu", found)
    if target != "cpu":
        model._model.to(target)
        model.device = target
    return model


def _setup(device: str, threads: int | None) -> str:
    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    return pick_device(device)


def _embedder(model_dir: Path, state: dict[str, torch.Tensor], target: str, found: Parts) -> TorchEmbedder:
    try:
        model = _build(found, state, target)
    except IntegrityError:
        raise
    except Exception as exc:
        raise _load_error(model_dir, exc) from exc
    return TorchEmbedder(found.tokenizer, model, target, _max_tokens(model_dir, found.tokenizer, model))


def _load_error(model_dir: Path, exc: Exception) -> ModelLoadError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelLoadError(f"cannot load the model in {model_dir}: {reason}")


def _build(found: Parts, state: dict[str, torch.Tensor], target: str) -> Any:
    """The model class of ``config.json`` over ``state``'s tensors, without copying them.

    On the CPU: built with its parameters on the meta device (no memory, no random init) and
    each pointed at its tensor (``assign``); a checkpoint that needs renaming, tying or
    initialising goes through ``from_pretrained``. transformers places a given state dict on
    the CPU unless ``accelerate`` drives a device map, so for a GPU the model is built over
    untouched host placeholders (``torch.empty`` costs no page until written) and each
    parameter is then pointed at its device tensor.
    """
    config, cls = found.config, found.cls
    if target == "cpu":
        model = assemble(cls, config, state)
        if model is None:
            model = cls.from_pretrained(None, config=config, state_dict=state)
        return model.eval()
    hosts = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in state.items()}
    model, info = cls.from_pretrained(None, config=config, state_dict=hosts, output_loading_info=True)
    _adopt(model, hosts, state, set(info["missing_keys"]))
    return model.to(target).eval()


def assemble(
    cls: type[PreTrainedModel], config: Any, state: dict[str, torch.Tensor]
) -> PreTrainedModel | None:
    """``cls(config)`` over exactly ``state``'s tensors, or None when they are not exactly its
    parameters and persistent buffers (extra non-persistent buffers, which old checkpoints
    carry, are left out as ``from_pretrained`` does)."""
    with _parameters_on_meta():
        model = cls(config)
    wanted = set(model.state_dict())
    extra = set(state) - wanted
    if wanted - set(state) or not extra <= _non_persistent(model):
        return None
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    return model


def _non_persistent(model: Any) -> set[str]:
    return {
        f"{prefix}.{name}".lstrip(".")
        for prefix, module in model.named_modules()
        for name in module._non_persistent_buffers_set
    }


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered meanwhile moves to the meta device (its init is then free);
    buffers stay real (position ids and the like are computed in ``__init__``, not loaded)."""
    register = torch.nn.Module.register_parameter

    def on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            kind = type(param)
            module._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _adopt(
    model: Any, hosts: dict[str, torch.Tensor], state: dict[str, torch.Tensor], missing: set[str]
) -> None:
    """Point each parameter and buffer built over a placeholder at the same key's device tensor."""
    by_ptr = {t.data_ptr(): state[k] for k, t in hosts.items() if t.numel()}
    placed = {t.data_ptr() for t in state.values()}  # a tied weight is met twice
    for module_name, module in model.named_modules():
        for slots in (module._parameters, module._buffers):
            for name, tensor in slots.items():
                if tensor is None or not tensor.numel() or tensor.data_ptr() in placed:
                    continue
                found = by_ptr.get(tensor.data_ptr())
                if found is not None and found.shape == tensor.shape and found.dtype == tensor.dtype:
                    tensor.data = found
                elif f"{module_name}.{name}".lstrip(".") not in missing and name in module._parameters:
                    raise ModelLoadError(f"cannot place {module_name}.{name} on the device without a copy")


def _max_tokens(model_dir: Path, tokenizer: Any, model: Any) -> int:
    """sentence-transformers' ``max_seq_length`` when present, else the position-embedding limit."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            return int(json.loads(st_config.read_text(encoding="utf-8"))["max_seq_length"])
        except (ValueError, KeyError, TypeError):
            pass
    limits = [DEFAULT_MAX_TOKENS, int(getattr(model.config, "max_position_embeddings", DEFAULT_MAX_TOKENS))]
    if isinstance(tokenizer.model_max_length, int):
        limits.append(tokenizer.model_max_length)
    return min(limits)
