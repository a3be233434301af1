"""The one door to torch and transformers: load a sentence-embedding model and run it.

Imported lazily (by the start-up sequence only), so the app, the config and the agent image
work without torch installed. All calls here block; the app runs them on its inference thread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

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


def load(model_dir: Path, *, device: str = "auto", threads: int | None = None) -> TorchEmbedder:
    """Load tokenizer and safetensors weights from a local directory onto ``device``; no hub access."""
    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    target = pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True)
        model = model.to(target).eval()
    except Exception as exc:  # the loaders raise anything from OSError to SafetensorError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load the model in {model_dir}: {reason}") from exc
    return TorchEmbedder(tokenizer, model, target, _max_tokens(model_dir, tokenizer, model))


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
