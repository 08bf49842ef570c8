"""Checkpoints: state dict + metadata, written atomically, verified on load, never unpickled as code.

File layout (a ``torch.save`` dict readable with ``weights_only=True``)::

    {"format": "geodesic-checkpoint/1", "state_dict": {name: tensor}, "meta": {str: str|int|float|bool},
     "sha256": content hash of the state dict}
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from .errors import InputError
from .models import build_model

FORMAT = "geodesic-checkpoint/1"


def state_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, then rename: readers see
    the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> str:
    """Write ``model.state_dict()`` and ``meta`` atomically (temp file + rename). Returns the content hash.

    ``meta`` must hold ``model`` (registry name), ``num_classes``, ``in_channels`` and ``image_size`` so the
    network can be rebuilt; values must be str/int/float/bool.
    """
    for key in ("model", "num_classes", "in_channels", "image_size"):
        if key not in meta:
            raise InputError(f"checkpoint metadata needs {key!r}")
    return _save_verified(path, FORMAT, model.state_dict(), meta, "model")


def _save_verified(path, fmt: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], what: str) -> str:
    state = {k: v.detach().cpu().clone() for k, v in tensors.items()}
    check_finite_state(state, f"{what} to be saved at {path}")
    digest = state_hash(state)
    _atomic_torch_save({"format": fmt, "state_dict": state, "meta": dict(meta), "sha256": digest}, Path(path))
    return digest


TENSORS_FORMAT = "geodesic-tensors/1"


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write named tensors (not a network: e.g. EWC's accumulated Fisher penalty) atomically with a content
    hash, in the checkpoint's safe format. Returns the hash."""
    return _save_verified(path, TENSORS_FORMAT, tensors, meta, "tensors")


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a file written by `save_tensors` (``weights_only=True``, content hash, finite)."""
    return _load_verified(path, TENSORS_FORMAT, "a tensor file of this project")


def check_finite_state(state: dict[str, torch.Tensor], what: str) -> None:
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError(f"{what} holds NaN/Inf values in {name!r}; use a checkpoint with finite weights "
                             f"(e.g. retrain, or take an earlier checkpoint)")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a checkpoint with ``torch.load(weights_only=True)``.

    Returns:
        ``(state_dict, meta)``; ``meta["sha256"]`` is the verified content hash.

    Raises:
        InputError: the file is missing, truncated, not a checkpoint of this project, fails its content
            hash, or holds non-finite values.
    """
    return _load_verified(path, FORMAT, "a checkpoint of this project")


def _load_verified(path: str | os.PathLike, fmt: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {p} does not exist; pass the path of a file written by `geodesic train`")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint {p} could not be loaded safely ({type(exc).__name__}: {str(exc)[:200]}); "
                         f"it is truncated, corrupt or not a weights-only checkpoint. Re-create it with "
                         f"`geodesic train`.") from exc
    if not isinstance(blob, dict) or blob.get("format") != fmt or not isinstance(blob.get("state_dict"), dict):
        raise InputError(f"{p} is not {what} (format {fmt!r} expected); "
                         f"re-create it with `geodesic train`")
    state, meta = blob["state_dict"], dict(blob.get("meta") or {})
    if state_hash(state) != blob.get("sha256"):
        raise InputError(f"checkpoint {p} fails its content hash (corrupted after writing); re-create it")
    check_finite_state(state, f"checkpoint {p}")
    meta["sha256"] = blob["sha256"]
    return state, meta


def arch_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The architecture options (``width``, ``depth``) a checkpoint records; absent in checkpoints of default
    networks (and of earlier versions), which are then built at width 1 and the model's own depth."""
    out: dict[str, Any] = {}
    if "width" in meta:
        out["width"] = float(meta["width"])
    if meta.get("depth") not in (None, ""):
        out["depth"] = int(meta["depth"])
    return out


def load_model(path: str | os.PathLike, expect_model: str | None = None, expect_num_classes: int | None = None,
               expect_arch: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored at ``path`` and load its weights; check architecture expectations
    (``expect_arch``: the width / depth options, as `geodesic_core.models.arch_kwargs` gives them)."""
    state, meta = load_checkpoint(path)
    return model_from_checkpoint(state, meta, path, expect_model, expect_num_classes, expect_arch), meta


def model_from_checkpoint(state: dict[str, torch.Tensor], meta: dict[str, Any], path: str | os.PathLike,
                          expect_model: str | None = None, expect_num_classes: int | None = None,
                          expect_arch: dict[str, Any] | None = None) -> nn.Module:
    """The network of a checkpoint already read by `load_checkpoint` (``state``, ``meta``; ``path`` names it in
    errors), with `load_model`'s checks of the expected architecture."""
    if expect_arch is not None and arch_from_meta(meta) != dict(expect_arch):
        raise InputError(f"checkpoint {path} holds a {meta.get('model')!r} network with options "
                         f"{arch_from_meta(meta) or 'width 1, default depth'} but {dict(expect_arch) or 'the defaults'} "
                         f"were requested; pass --width / --depth as the checkpoint was trained")
    if expect_model is not None and meta.get("model") != expect_model:
        raise InputError(f"checkpoint {path} holds a {meta.get('model')!r} network but {expect_model!r} was "
                         f"requested; pass a checkpoint of the same architecture or change --model")
    if expect_num_classes is not None and int(meta.get("num_classes", -1)) != expect_num_classes:
        raise InputError(f"checkpoint {path} has {meta.get('num_classes')} classes, the dataset has "
                         f"{expect_num_classes}; use a checkpoint trained on this dataset")
    model = build_model(meta["model"], int(meta["num_classes"]), int(meta["in_channels"]), int(meta["image_size"]),
                        **arch_from_meta(meta))
    if meta.get("compact_layer"):  # a structured export: the network with the removed filters physically gone
        from .structured import shrink_to

        shrink_to(model, str(meta["compact_layer"]), int(meta["compact_kept"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"checkpoint {path} does not match architecture {meta['model']!r}: {str(exc)[:300]}") from exc
    return model
