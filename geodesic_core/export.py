"""Compact export of a sparsified network: safetensors with the pruned tensors in a compressed sparse format,
and structured results as a physically smaller network.

Each floating-point tensor is stored in whichever of three encodings is smallest (chosen per tensor):

* ``dense``: the tensor itself (``n`` values);
* ``csr``: the tensor viewed as a matrix ``(rows = shape[0], cols = n / rows)`` in compressed sparse row form:
  the ``nnz`` non-zero values, their column indices (int16 when ``cols`` fits, else int32) and the ``rows + 1``
  row pointers (int32 or int64), ``4 nnz + nnz b_col + (rows + 1) b_row`` bytes for float32;
* ``bitmask``: one bit per entry (``ceil(n / 8)`` bytes, ``uint8``, little bit order) and the ``nnz`` values in
  row-major order, ``ceil(n / 8) + 4 nnz`` bytes.

A network whose conv layer has whole filters removed (structured sparsification, `geodesic_core.structured`) is
first made physically smaller (`compact_filters`: the filters, their batch-norm channels and the next layer's
matching input channels are gone); its remaining tensors are then encoded as above.

The file's safetensors metadata (strings only) holds ``format`` = ``geodesic-export/1``, the network's
architecture (``arch``: model, num_classes, in_channels, image_size, width, depth, compact layer and kept filters,
as JSON) and, per tensor, its encoding, shape and dtype (``tensors``, JSON). `load_export` rebuilds the dense
state dict and `load_exported_model` the network, whose outputs equal the masked network's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import arch_from_meta, atomic_write, check_finite_state
from .errors import InputError

FORMAT = "geodesic-export/1"
_ARCH_KEYS = ("model", "num_classes", "in_channels", "image_size", "width", "depth", "dataset")


def _index_dtype(limit: int) -> torch.dtype:
    return torch.int16 if limit < 2 ** 15 else torch.int32 if limit < 2 ** 31 else torch.int64


def encoded_sizes(t: torch.Tensor) -> dict[str, int]:
    """Bytes each encoding takes for tensor ``t`` (see the module docstring)."""
    n, item = t.numel(), t.element_size()
    nnz = int(torch.count_nonzero(t))
    rows = t.shape[0] if t.ndim >= 1 else 1
    cols = n // max(rows, 1)
    col_b = torch.empty(0, dtype=_index_dtype(cols)).element_size()
    row_b = torch.empty(0, dtype=_index_dtype(nnz + 1)).element_size()
    return {"dense": n * item, "csr": nnz * (item + col_b) + (rows + 1) * row_b,
            "bitmask": math.ceil(n / 8) + nnz * item}


def encode(name: str, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    """The stored tensors and the description of ``t`` in its smallest encoding."""
    t = t.detach().cpu().contiguous()
    info = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if not t.is_floating_point() or t.numel() < 16:
        return {name: t}, {**info, "encoding": "dense"}
    sizes = encoded_sizes(t)
    best = min(sizes, key=lambda k: (sizes[k], k != "dense"))
    info["encoding"] = best
    if best == "dense":
        return {name: t}, info
    if best == "csr":
        m = t.reshape(t.shape[0], -1)
        rows, cols = torch.nonzero(m, as_tuple=True)
        crow = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(rows, minlength=m.shape[0]).cumsum(0)
        return {f"{name}::values": m[rows, cols].contiguous(),
                f"{name}::col_indices": cols.to(_index_dtype(m.shape[1])).contiguous(),
                f"{name}::crow_indices": crow.to(_index_dtype(int(crow[-1]) + 1)).contiguous()}, info
    flat = t.reshape(-1)
    mask = flat != 0
    pad = (-flat.numel()) % 8
    bits = torch.cat([mask, torch.zeros(pad, dtype=torch.bool)]).reshape(-1, 8).to(torch.uint8)
    packed = (bits << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)
    return {f"{name}::bits": packed.contiguous(), f"{name}::values": flat[mask].contiguous()}, info


def decode(name: str, info: dict, stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense tensor ``name`` from its stored parts (inverse of `encode`)."""
    shape, dtype = tuple(info["shape"]), getattr(torch, info["dtype"])
    enc = info["encoding"]
    if enc == "dense":
        return stored[name]
    n = math.prod(shape)
    if enc == "csr":
        crow = stored[f"{name}::crow_indices"].long()
        rows = shape[0]
        row_of = torch.repeat_interleave(torch.arange(rows), crow[1:] - crow[:-1])
        out = torch.zeros(rows, n // max(rows, 1), dtype=dtype)
        out[row_of, stored[f"{name}::col_indices"].long()] = stored[f"{name}::values"]
        return out.reshape(shape)
    if enc == "bitmask":
        packed = stored[f"{name}::bits"]
        bits = ((packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[:n].bool()
        out = torch.zeros(n, dtype=dtype)
        out[bits] = stored[f"{name}::values"]
        return out.reshape(shape)
    raise InputError(f"export entry {name!r} has an unknown encoding {enc!r}; re-export it with this version")


def conv_layers_with_removed_filters(model: nn.Module) -> list[str]:
    """Conv layers (inside an ``nn.Sequential``, feeding another conv) with at least one whole filter removed."""
    from .structured import removed_filters

    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            try:
                if removed_filters(model, name).numel():
                    found.append(name)
            except InputError:  # not a compactable position (e.g. the last conv, a ResNet stem)
                pass
    return found


@dataclass(frozen=True)
class ExportReport:
    """What `export` wrote: sizes in bytes, the encodings used, the sparsity it found."""

    path: str
    dense_bytes: int
    export_bytes: int
    encodings: dict[str, str]
    sparsity: float  # percent of zeros among the floating-point parameters of the original network
    compact_layer: str | None
    removed_filters: int

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.export_bytes, 1)


def _zero_fraction(model: nn.Module) -> float:
    ts = [p.detach() for p in model.parameters() if p.is_floating_point()]
    n = sum(t.numel() for t in ts)
    return 100.0 * sum(int((t == 0).sum()) for t in ts) / max(n, 1)


def _dense_file_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def export(model: nn.Module, meta: dict, out: str | os.PathLike, *, layer: str | None = None,
           min_sparsity: float = 1.0) -> ExportReport:
    """Write ``model`` (a sparsified network with checkpoint metadata ``meta``) compactly to ``out`` (safetensors,
    atomically).

    Structured: the conv layer ``layer`` (or, if None, the one layer found with removed filters) loses its
    removed filters physically (`compact_filters`). Every tensor is then stored in its smallest encoding.

    Raises:
        InputError: the network is not sparse (fewer than ``min_sparsity`` percent zeros among its parameters and
            no removed filter), holds non-finite values, or ``layer`` cannot be compacted.
    """
    from safetensors.torch import save

    from .structured import compact_filters

    check_finite_state(model.state_dict(), "the network to export")
    layers = [layer] if layer else conv_layers_with_removed_filters(model)
    zeros = _zero_fraction(model)
    if not layers and zeros < min_sparsity:
        raise InputError(f"the network is not sparse ({zeros:.2f}% zeros among its parameters, no removed filter); "
                         f"export the output of `geodesic sparsify` (a final checkpoint), not a dense network")
    if len(layers) > 1:
        raise InputError(f"several conv layers have removed filters ({', '.join(layers)}); name one with --layer")
    dense_bytes = _dense_file_bytes(model)
    arch = {k: meta[k] for k in _ARCH_KEYS if k in meta}
    removed = 0
    if layers:
        model, removed = compact_filters(model, layers[0])
        arch["compact_layer"] = layers[0]
        arch["compact_kept"] = int(dict(model.named_modules())[layers[0]].out_channels)
    stored: dict[str, torch.Tensor] = {}
    infos: dict[str, dict] = {}
    for name, t in model.state_dict().items():
        parts, info = encode(name, t)
        stored.update(parts)
        infos[name] = info
    blob = save(stored, metadata={"format": FORMAT, "arch": json.dumps(arch), "tensors": json.dumps(infos)})
    path = Path(out)
    atomic_write(path, lambda fh: fh.write(blob))
    return ExportReport(str(path), dense_bytes, len(blob), {k: v["encoding"] for k, v in infos.items()}, zeros,
                        arch.get("compact_layer"), removed)


def load_export(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The dense state dict and the architecture metadata of an exported file (safetensors: no code runs)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise InputError(f"export {p} does not exist; write one with `geodesic export CHECKPOINT --out FILE`")
    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            stored = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise InputError(f"{p} is not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if header.get("format") != FORMAT:
        raise InputError(f"{p} is not an export of this project (format {FORMAT!r} expected)")
    infos, arch = json.loads(header["tensors"]), json.loads(header["arch"])
    state = {name: decode(name, info, stored) for name, info in infos.items()}
    check_finite_state(state, f"export {p}")
    return state, arch


class SparseLinear(nn.Module):
    """Inference-only ``nn.Linear`` whose weight ``(out, in)`` is held as a CSR tensor: y = (W x^T)^T + b through
    PyTorch's sparse-dense product, which skips the zeros (on a CPU about 3x faster than the dense product at 99%
    zeros for LeNet-300-100's first layer, measured with benchmarks/export.py)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = (self.weight @ flat.T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def use_sparse_kernels(model: nn.Module, min_zeros: float = 80.0) -> list[str]:
    """Replace (in place) every ``nn.Linear`` with at least ``min_zeros`` percent zero weights by a `SparseLinear`;
    returns the replaced layers' names. For inference: the sparse weights are buffers, not parameters."""
    import warnings

    done = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and 100.0 * float((mod.weight == 0).float().mean()) >= min_zeros:
            parent, _, leaf = name.rpartition(".")
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                setattr(model.get_submodule(parent) if parent else model, leaf, SparseLinear(mod))
            done.append(name)
    return done


def load_exported_model(path: str | os.PathLike, sparse_kernels: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the network of an exported file (the compact shapes for a structured export) with its weights;
    ``sparse_kernels``: linear layers with at least 80% zeros compute with their sparse weights (inference only,
    see `use_sparse_kernels`)."""
    from .models import build_model
    from .structured import shrink_to

    state, arch = load_export(path)
    model = build_model(arch["model"], int(arch["num_classes"]), int(arch["in_channels"]), int(arch["image_size"]),
                        **arch_from_meta(arch))
    if arch.get("compact_layer"):
        shrink_to(model, arch["compact_layer"], int(arch["compact_kept"]))
    model.load_state_dict(state, strict=True)
    if sparse_kernels:
        arch = {**arch, "sparse_layers": use_sparse_kernels(model)}
    return model, arch


def inference_ms(model: nn.Module, x: torch.Tensor, reps: int = 20) -> float:
    """Median wall time of one forward pass of ``model`` (eval mode) on ``x``, in milliseconds, after warm-up."""
    import statistics
    import time

    with torch.no_grad():
        model.eval()
        for _ in range(3):
            model(x)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def export_and_compare(model: nn.Module, meta: dict, out: str | os.PathLike, input_shape: tuple[int, ...], *,
                       layer: str | None = None, batch: int = 256, seed: int = 0) -> dict:
    """`export`, load the file back, and compare it with ``model`` on ``batch`` random inputs of ``input_shape``:
    the largest output difference (``max_abs_diff``, with ``output_scale`` the largest output magnitude), and
    the CPU time of one forward pass of each (``dense_ms``, ``export_ms``; the export's linear layers with at
    least 80% zeros on sparse kernels: ``sparse_layers``), with the `ExportReport` (``report``)."""
    report = export(model, meta, out, layer=layer)
    small, arch = load_exported_model(out, sparse_kernels=True)
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    model, small = model.cpu().eval(), small.eval()
    with torch.no_grad():
        y = model(x)
        diff = float((y - small(x)).abs().max())
    return {"report": report, "max_abs_diff": diff, "output_scale": float(y.abs().max()), "sparse_layers": arch["sparse_layers"],
            "dense_ms": inference_ms(model, x), "export_ms": inference_ms(small, x)}
