"""Supervised training, evaluation and batch-norm re-estimation on in-memory tensor datasets."""

from __future__ import annotations

import itertools
import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from .config import TrainConfig
from .data import Split, load_split
from .errors import InputError, NonFiniteError


class EpochInfo(NamedTuple):
    epoch: int
    train_loss: float
    lr: float


class TrainStep(NamedTuple):
    """One SGD step, for progress and training curves. ``loss``: the batch's mean loss, ``logits`` ``(B, K)`` and
    ``labels`` ``(B,)``: detached tensors on the training device, not synced to the host (a callback that reads
    them only now and then costs no GPU stall and no extra work on the other steps); ``total``: the steps the
    schedule spans (epochs x steps per epoch; a budget may end training sooner), None for a run whose length is
    wall time (`train`'s ``wall_seconds``); ``last``: the run's final step (the last epoch's last step, or the step
    that spent ``max_batches`` or ``wall_seconds``)."""

    step: int
    epoch: int
    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    lr: float
    total: int | None
    last: bool


_FP32_LOCK = threading.Lock()
_FP32_USERS = 0
_FP32_SAVED: tuple[str, str, str] | None = None


@contextmanager
def full_float32() -> Iterator[None]:
    """float32 means float32 inside the block: cuBLAS matrix products and cuDNN convolutions use IEEE float32, not
    TF32 (PyTorch's default for convolutions on Ampere and later GPUs, whose 10-bit mantissa reads J v to about
    1e-3). Metric products, the Geo step's solvers, path lengths and evaluation run inside it; training does not
    (it runs under bf16 autocast on a GPU anyway). A no-op on the CPU.

    The flags are process-wide, and the flows run tasks on threads: the first block to enter sets them and the
    last to leave puts back what it found, so a traversal never sees them restored under it by another thread.
    It sets PyTorch's ``fp32_precision`` settings (cuDNN's convolutions and RNNs alike, so that the legacy
    ``torch.backends.cudnn.allow_tf32`` still reads one value inside the block). Also a decorator.
    """
    global _FP32_USERS, _FP32_SAVED
    matmul, conv, rnn = torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn
    with _FP32_LOCK:
        if _FP32_USERS == 0:
            _FP32_SAVED = (matmul.fp32_precision, conv.fp32_precision, rnn.fp32_precision)
            matmul.fp32_precision = conv.fp32_precision = rnn.fp32_precision = "ieee"
        _FP32_USERS += 1
    try:
        yield
    finally:
        with _FP32_LOCK:
            _FP32_USERS -= 1
            if _FP32_USERS == 0 and _FP32_SAVED is not None:
                matmul.fp32_precision, conv.fp32_precision, rnn.fp32_precision = _FP32_SAVED
                _FP32_SAVED = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip of an image batch ``(B, C, H, W)``."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(x.device)  # (B, H)
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(x.device)  # (B, W)
    idx_b = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_b, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    return torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)


def _lr_at(cfg: TrainConfig, epoch_frac: float) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch_frac / cfg.epochs))
    if cfg.schedule == "step":  # /10 at 50% and 75% of training
        return cfg.lr * (0.1 ** (int(epoch_frac >= 0.5 * cfg.epochs) + int(epoch_frac >= 0.75 * cfg.epochs)))
    if cfg.schedule == "onecycle":  # lr/25 -> lr over the first 15%, then linearly to 0
        frac, peak = epoch_frac / cfg.epochs, 0.15
        if frac < peak:
            return cfg.lr * (0.04 + 0.96 * frac / peak)
        return cfg.lr * max(0.0, (1.0 - frac) / (1.0 - peak))
    return cfg.lr


def _channels_last(model: nn.Module, device: torch.device) -> bool:
    """Conv networks train in channels_last memory format on a GPU (tensor-core friendly convolutions)."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def train(model: nn.Module, data: Split, cfg: TrainConfig, *, augment: bool = False,
          masks: dict[str, torch.Tensor] | None = None, device: torch.device | None = None,
          callbacks: Sequence[Callable[[EpochInfo], None]] = (), max_batches: int | None = None,
          wall_seconds: float | None = None, on_step: Callable[[int], bool] | None = None,
          penalty: Callable[[nn.Module], torch.Tensor] | None = None,
          step_callbacks: Sequence[Callable[[TrainStep], None]] = (),
          teacher: nn.Module | None = None, teacher_temperature: float = 0.0,
          schedule_steps: int | None = None) -> int:
    """Minimize the mean (label-smoothed) cross-entropy on ``data`` (plus ``penalty(model)`` if given) with SGD
    (momentum or Nesterov, weight decay, schedule), in place. With ``teacher``, label-free distillation
    instead: minimize ½ mean_x ‖f(x; w) − f_teacher(x)‖² over the training inputs, or with
    ``teacher_temperature`` T > 0 the tempered loss of Hinton et al. (2015),
    T² mean_x KL(softmax(f_teacher(x) / T) ‖ softmax(f(x; w) / T)) (the teacher in eval mode, the labels unused
    except to report ``TrainStep``'s accuracy).

    Args:
        model: network mapping ``(B, C, H, W)`` to logits ``(B, K)``.
        data: training split, a `Split` or any ``(x, y)`` pair of tensors (on the CPU, or already resident on ``device``: a GPU then never waits for the
            host; on a GPU the split is moved there once per call).
        cfg: training settings; ``cfg.seed`` fixes initial shuffling and augmentation (CPU: bit-reproducible).
            On a GPU, ``cfg.precision == "bf16"`` runs forward and backward under bfloat16 autocast, and conv
            networks train in channels_last memory format (returned in the default format).
        augment: random crop + flip (CIFAR).
        masks: optional ``{param name: 0/1 tensor}``; masked weights are kept at exactly zero (masked
            fine-tuning of a pruned network).
        max_batches: stop after this many optimizer steps in total (a compute budget), if given.
        wall_seconds: a run whose length is this much wall time instead of ``cfg.epochs`` (the equal-time
            peers, at a speed not known in advance): it trains, epoch after epoch, until the time is spent (checked
            after every step), and its learning-rate schedule spans that time (the rate of each step read at the
            time spent so far: a cosine anneals to 0 at the end); ``cfg.epochs`` is then only the schedule's unit.
        on_step: called with the number of steps taken after every step; returning True stops training.
        penalty: a differentiable regularizer of the weights added to every batch's loss (the L2 pull and
            EWC baselines of continual learning).
        step_callbacks: called with a `TrainStep` after every step (progress, training curves).
        teacher: a network of the same outputs ``(B, K)`` whose outputs the model learns to match (distillation).
        teacher_temperature: 0: match the teacher's logits (squared distance); T > 0: match its softmax at
            temperature T (KL divergence, scaled by T² so its gradients keep their size across T).
        schedule_steps: the optimizer steps the learning-rate schedule spans (default ``cfg.epochs`` x steps per
            epoch): a run cut short by ``max_batches`` at this count still ends its schedule (a cosine reaches 0).

    Returns:
        the number of optimizer steps taken.

    Raises:
        NonFiniteError: an epoch's loss became NaN or Inf (checked once per epoch; the message names the rate).
    """
    data = Split(*data)  # a Split or any (x, y) pair of tensors
    device = device or default_device()
    model.to(device).train()
    cl = _channels_last(model, device)
    if cl:
        model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov)
    named = dict(model.named_parameters())
    masks = {k: m.to(device) for k, m in (masks or {}).items()}
    xs, ys = (data.x.to(device), data.y.to(device)) if device.type == "cuda" else (data.x, data.y)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.precision == "bf16")
    if teacher is not None:
        teacher.to(device).eval()
    n = xs.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    if schedule_steps is not None and schedule_steps < 1:
        raise ValueError(f"schedule_steps must be at least 1, got {schedule_steps}")
    if wall_seconds is not None and (schedule_steps is not None or not wall_seconds > 0):
        raise ValueError(f"wall_seconds must be positive and not given with schedule_steps, got "
                         f"{wall_seconds} (schedule_steps {schedule_steps})")
    if wall_seconds is not None and n == 0:
        raise ValueError("a wall-time run needs at least one training example (the split is empty)")
    total_steps = None if wall_seconds is not None else schedule_steps or cfg.epochs * steps_per_epoch
    done = 0
    t0 = time.perf_counter()
    out_of_budget = False
    try:
        for epoch in range(cfg.epochs) if wall_seconds is None else itertools.count():
            order = torch.randperm(n, generator=gen).to(xs.device)
            total, count = torch.zeros((), device=device), 0
            for b in range(steps_per_epoch):
                if wall_seconds is not None:
                    lr = _lr_at(cfg, cfg.epochs * min(1.0, (time.perf_counter() - t0) / wall_seconds))
                elif schedule_steps is not None:
                    lr = _lr_at(cfg, cfg.epochs * min(1.0, done / schedule_steps))
                else:
                    lr = _lr_at(cfg, epoch + b / steps_per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                xb = xs[idx]
                if augment:
                    xb = augment_batch(xb, gen)
                xb, yb = xb.to(device, non_blocking=True), ys[idx].to(device, non_blocking=True)
                if cl:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with autocast:
                    logits = model(xb)
                    if teacher is None:
                        loss = nn.functional.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                    else:
                        with torch.no_grad():  # after the model: a teacher may read its draw (`CurveAnchor`)
                            wanted = teacher(xb).float()
                        loss = distillation_loss(logits.float(), wanted, teacher_temperature)
                objective = loss + penalty(model) if penalty is not None else loss
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
                if masks:
                    with torch.no_grad():
                        for k, m in masks.items():
                            named[k].mul_(m)
                total += loss.detach().float() * len(idx)  # no host sync per step
                count += len(idx)
                done += 1
                spent = (max_batches is not None and done >= max_batches) or (
                    wall_seconds is not None and time.perf_counter() - t0 >= wall_seconds)
                if step_callbacks:
                    info = TrainStep(done, epoch, loss.detach(), logits.detach(), yb, lr, total_steps,
                                     spent or (wall_seconds is None and epoch == cfg.epochs - 1
                                              and b == steps_per_epoch - 1))
                    for cb in step_callbacks:
                        cb(info)
                out_of_budget = spent or (on_step is not None and bool(on_step(done)))
                if out_of_budget:
                    break
            if not torch.isfinite(total):  # one host sync per epoch
                length = f"{cfg.epochs}" if wall_seconds is None else f"a {wall_seconds:g} s run"
                raise NonFiniteError(f"training diverged: the loss became NaN or Inf in epoch {epoch + 1} of "
                                     f"{length} at learning rate {cfg.lr:g}; lower the learning rate")
            if callbacks:
                mean_loss = float(total) / max(count, 1)
                for cb in callbacks:
                    cb(EpochInfo(epoch, mean_loss, lr))
            if out_of_budget:
                break
    finally:
        if cl:  # flat-vector views (parameters_to_vector) need the default memory format
            model.to(memory_format=torch.contiguous_format)
    return done


def distillation_loss(logits: torch.Tensor, wanted: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """The label-free loss of a student's ``logits`` ``(B, K)`` against a teacher's ``wanted`` ``(B, K)``:
    ½ mean_b ‖logits − wanted‖² (``temperature`` 0), or T² mean_b KL(softmax(wanted / T) ‖ softmax(logits / T))
    (Hinton et al. 2015), whose gradient in the logits is T (softmax(logits / T) − softmax(wanted / T)) / B."""
    if temperature <= 0:
        return 0.5 * (logits - wanted).pow(2).sum(-1).mean()
    t = temperature
    return nn.functional.kl_div(torch.log_softmax(logits / t, -1), torch.log_softmax(wanted / t, -1),
                                log_target=True, reduction="batchmean") * (t * t)


def epochs_run(steps: int, examples: int, batch_size: int) -> float:
    """The epochs ``steps`` optimizer steps of batches of ``batch_size`` make over ``examples`` training examples
    (`train`'s last batch of an epoch may be short): steps / ceil(examples / batch_size)."""
    return steps / math.ceil(examples / batch_size)


@torch.no_grad()
@full_float32()
def evaluate(model: nn.Module, data: Split, batch_size: int = 1000,
             device: torch.device | None = None) -> tuple[float, float]:
    """Test accuracy in percent and mean cross-entropy loss of ``model`` (eval mode, `full_float32`) on ``data`` (a
    `Split` or any ``(x (N, ...), y (N,))`` pair of tensors)."""
    data = Split(*data)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, data.x.shape[0], batch_size):
        xb, yb = data.x[i:i + batch_size].to(device), data.y[i:i + batch_size].to(device)
        out = model(xb)
        loss_sum += nn.functional.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    model.train(was_training)
    n = data.x.shape[0]
    return 100.0 * correct / n, loss_sum / n


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
@full_float32()
def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate batch-norm running statistics for the current weights from inputs ``x (N, C, H, W)``.

    Needed to evaluate points along a path in weight space: the stored statistics belong to the endpoint.
    A no-op for networks without batch norm.
    """
    if not has_batchnorm(model):
        return model
    device = next(model.parameters()).device
    was_training = model.training
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    model.train()
    for i in range(0, x.shape[0], batch_size):
        model(x[i:i + batch_size].to(device))
    model.train(was_training)
    return model


@contextmanager
def bn_estimated(model: nn.Module, x: torch.Tensor) -> Iterator[nn.Module]:
    """``model`` with its batch-norm statistics re-estimated on ``x (N, C, H, W)`` (`recompute_bn`) for the duration
    of the block; its own statistics (and momenta) are put back afterwards. A no-op for networks without batch
    norm."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    recompute_bn(model, x)
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, (momentum, buffers) in zip(bns, saved):
                m.momentum = momentum
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(buffers[k])


def train_and_save(model_name: str | None, dataset: str, cfg: TrainConfig, out: str, data_dir: str | None = None,
                   device: torch.device | None = None, task: int = 0, permutation_seed: int = 0,
                   callbacks: Sequence[Callable[[EpochInfo], None]] = (), width: float | None = None,
                   depth: int | None = None, step_callbacks: Sequence[Callable[[TrainStep], None]] = (),
                   init: str | None = None, keep_zeros: bool = False, teacher: str | None = None,
                   teacher_temperature: float = 0.0) -> dict:
    """Train a model (registered, torchvision's or the user's) on a dataset (registered or the user's) from seed ``cfg.seed``, evaluate it on the test split
    and write the checkpoint atomically to ``out``. Inputs are checked before any work starts.

    With ``init``, training starts from that checkpoint's weights (the same model, width, depth, classes and
    input shape; ``model_name``, ``width`` and ``depth`` left as None are the checkpoint's, which is read once)
    instead of random ones; ``keep_zeros`` then keeps every parameter entry that is exactly zero
    there at exactly zero (masked SGD: fine-tuning a sparsified network keeps its mask, and a structured
    one its removed filters). With ``teacher`` (a checkpoint with the same classes and input shape) training
    is label-free: masked SGD on ½ mean_x ‖f(x; w) − f(x; w_teacher)‖² over the training inputs, or at
    ``teacher_temperature`` T > 0 on T² KL between the softmaxes at T (`distillation_loss`). Without ``init``,
    ``model_name`` is required and ``width`` defaults to 1.

    Returns:
        the checkpoint metadata (model, dataset, test_accuracy, test_loss, sha256, ...; with ``init`` also
        ``init_sha256``, ``keep_zeros`` and ``zero_fraction``, the fraction of parameter entries held at zero;
        with ``teacher`` ``teacher_sha256`` and ``teacher_temperature``).
    """
    from .checkpoint import arch_from_meta, load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
    from .data import check_data_files, get_spec, check_dataset_name
    from .models import arch_kwargs, build_model, check_model_name

    if not teacher_temperature >= 0 or (teacher_temperature and not teacher):
        raise InputError(f"teacher_temperature (--teacher-temperature) must be >= 0 and needs a teacher (--teacher "
                         f"CHECKPOINT), got {teacher_temperature} with teacher {teacher!r}")
    if keep_zeros and not init:
        raise InputError("keep_zeros (--keep-zeros) needs a checkpoint to start from (--init CHECKPOINT): a random "
                         "network has no zeros to keep")
    if init:  # the architecture not given is the starting checkpoint's (checked below against what is given)
        init_state, init_meta = load_checkpoint(init)
        init_arch = arch_from_meta(init_meta)
        model_name = model_name or init_meta.get("model")
        width = init_arch.get("width", 1.0) if width is None else width
        depth = init_arch.get("depth") if depth is None else depth
    elif model_name is None:
        raise InputError("a model (--model) is required, or a checkpoint to start from (--init CHECKPOINT: "
                         "continue training that network)")
    check_model_name(model_name)
    arch = arch_kwargs(model_name, 1.0 if width is None else width, depth)
    dataset = check_dataset_name(dataset)
    check_data_files(dataset, data_dir)
    spec = get_spec(dataset, data_dir)
    extra: dict = {}
    if init:
        model = model_from_checkpoint(init_state, init_meta, init, expect_model=model_name,
                                      expect_num_classes=spec.num_classes, expect_arch=arch)
        _check_input_shape(init, init_meta, spec)
        extra = {"init_sha256": init_meta["sha256"], "keep_zeros": bool(keep_zeros),  # a compact export stays compact:
                 **{k: init_meta[k] for k in ("compact_layer", "compact_kept") if init_meta.get(k)}}
    else:
        model = build_model(model_name, spec.num_classes, spec.in_channels, spec.image_size, seed=cfg.seed, **arch)
    masks = {k: (p.detach() != 0).float() for k, p in model.named_parameters() if keep_zeros and bool((p == 0).any())}
    if init:
        n_zero = sum(int((m == 0).sum()) for m in masks.values())
        extra["zero_fraction"] = n_zero / sum(p.numel() for p in model.parameters())
    teacher_model = None
    if teacher:
        teacher_model, teacher_meta = load_model(teacher, expect_num_classes=spec.num_classes)
        _check_input_shape(teacher, teacher_meta, spec)
        extra.update(teacher_sha256=teacher_meta["sha256"], teacher_temperature=float(teacher_temperature))
    train_split = load_split(dataset, True, data_dir, task, permutation_seed)
    test_split = load_split(dataset, False, data_dir, task, permutation_seed)
    t0 = time.perf_counter()
    train(model, train_split, cfg, augment=spec.augment, device=device, callbacks=callbacks,
          step_callbacks=step_callbacks, masks=masks, teacher=teacher_model, teacher_temperature=teacher_temperature)
    train_seconds = time.perf_counter() - t0
    acc, loss = evaluate(model, test_split)
    meta = {"model": model_name, "dataset": dataset, "num_classes": spec.num_classes,
            "in_channels": spec.in_channels, "image_size": spec.image_size, "task": task,
            "permutation_seed": permutation_seed, **arch, "test_accuracy": acc, "test_loss": loss, "train_seconds": train_seconds,
            **{f"train_{k}": v for k, v in cfg.model_dump().items()}, **extra}
    meta["sha256"] = save_checkpoint(out, model.cpu(), meta)
    return meta


def _check_input_shape(path: str, meta: dict, spec) -> None:
    """A checkpoint given to `train_and_save` must take the dataset's inputs (channels, image size)."""
    have = (int(meta.get("in_channels", -1)), int(meta.get("image_size", -1)))
    if have != (spec.in_channels, spec.image_size):
        raise InputError(f"checkpoint {path} takes {have[0]}-channel {have[1]}x{have[1]} inputs but the dataset's are "
                         f"{spec.in_channels}-channel {spec.image_size}x{spec.image_size}; use a checkpoint trained on "
                         f"inputs of this shape")
