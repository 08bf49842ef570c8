"""Model registry: the architectures of the paper's experiments, torchvision's models, and the user's own.

``MODELS`` maps a name to a builder ``(num_classes, in_channels, image_size, **arch) -> nn.Module``. Wherever a
model name is accepted, two more forms are too: ``torchvision:<name>`` (a torchvision classification model,
e.g. ``torchvision:resnet18``, randomly initialized, adapted to the dataset's channels, image size and class count,
see `torchvision_model`) and an import path ``package.module:callable`` to the user's own builder with the same
signature (see `geodesic_core.plugins`).
Every model maps a batch ``x: (N, C, H, W)`` to logits ``(N, num_classes)``. The paper's CIFAR networks take
``width`` W (a channel multiplier: every layer has round(W c) channels, at least 1; W = 0.25 gives VGG11 a first
layer of 16 filters) and the pre-activation ResNet takes ``depth`` (9n + 2; 164 is the paper's, 20 a CPU-scale
member of the same family): `ARCH_OPTIONS` says which model takes which.

References:
    LeNet-300-100: LeCun et al. 1998. VGG (CIFAR variant with batch norm): Simonyan & Zisserman 2015.
    Pre-activation bottleneck ResNet-164: He et al. 2016 ("Identity mappings in deep residual networks").
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Callable

import torch
from torch import nn

from .errors import InputError
from .plugins import check_signature, colon_hint, is_import_path, load_callable

TORCHVISION = "torchvision:"


def lenet300(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """LeNet-300-100: a 784-300-100-10 ReLU MLP on flattened images (the paper's MNIST network)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Small CNN for MNIST / Fashion-MNIST: conv5(16)-pool-conv5(32)-pool-fc100-fc (about 65k weights)."""
    side = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def scaled(channels: int, width: float) -> int:
    """round(W c) channels of a layer with c channels at width W (the width must leave every layer at least 1)."""
    out = int(round(channels * width))
    if out < 1:
        raise InputError(f"width {width} leaves a layer of {channels} channels without any (round({channels} x "
                         f"{width}) = 0); use a width above {0.5 / channels:.3g}")
    return out


def _check_width(width: float) -> float:
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise InputError(f"width must be a positive channel multiplier (e.g. 1, 0.5, 0.25), got {width}")
    return float(width)


class VGG(nn.Module):
    """CIFAR VGG with batch norm: 3x3 conv-BN-ReLU stacks, 5 max-pools, one linear classifier; every layer's
    channel count scaled by ``width`` (see `scaled`).

    ``features[0]`` is the first conv layer (the layer whose filters the structured experiment zeroes).
    """

    def __init__(self, cfg: list, num_classes: int, in_channels: int, image_size: int, width: float = 1.0):
        super().__init__()
        width = _check_width(width)
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                v = scaled(v, width)
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        self.classifier = nn.Linear(c * max(side, 1) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> nn.Module:
    """VGG-11 with batch norm, CIFAR variant (9.2 M weights at width 1)."""
    return VGG(_VGG_CFG["vgg11"], num_classes, in_channels, image_size, width)


def vgg16(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> nn.Module:
    """VGG-16 with batch norm, CIFAR variant (14.7 M weights at width 1)."""
    return VGG(_VGG_CFG["vgg16"], num_classes, in_channels, image_size, width)


class _PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Conv2d(in_planes, out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        skip = self.shortcut(pre) if self.shortcut is not None else x
        y = self.conv1(pre)
        y = self.conv2(torch.relu(self.bn2(y)))
        y = self.conv3(torch.relu(self.bn3(y)))
        return y + skip


class PreResNet(nn.Module):
    """Pre-activation bottleneck ResNet for CIFAR; depth = 9n + 2 (n blocks per stage); channel counts
    (16, 32, 64 per stage, x4 in the bottleneck outputs) scaled by ``width``."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, width: float = 1.0):
        super().__init__()
        width = _check_width(width)
        if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
            raise InputError(f"the pre-activation ResNet's depth must be 9n + 2 with n >= 1 (11, 20, 29, ..., 164), "
                             f"got {depth}")
        n = (depth - 2) // 9
        base = scaled(16, width)
        self.conv1 = nn.Conv2d(in_channels, base, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = base
        for i, planes in enumerate(scaled(c, width) for c in (16, 32, 64)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_PreActBottleneck(in_planes, planes, stride))
                in_planes = planes * _PreActBottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def resnet164(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
              depth: int = 164) -> nn.Module:
    """Pre-activation bottleneck ResNet-164 (18 blocks per stage, 1.7 M weights), CIFAR variant; ``depth``
    selects another member of the family (20: 2 blocks per stage)."""
    return PreResNet(depth, num_classes, in_channels, width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "cnn": cnn,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "resnet164": resnet164,
}


# which architecture options each model takes (beyond num_classes, in_channels, image_size)
ARCH_OPTIONS: dict[str, tuple[str, ...]] = {"lenet300": (), "cnn": (), "vgg11": ("width",), "vgg16": ("width",),
                                            "resnet164": ("width", "depth")}


def arch_kwargs(name: str, width: float = 1.0, depth: int | None = None) -> dict:
    """The architecture options for ``name``: ``width`` / ``depth`` where the model takes them (the defaults
    are left out, so checkpoints and cache keys of default networks stay as they were). An option given to a
    model that does not take it is an error naming the models that do."""
    check_model_name(name)
    takes = ARCH_OPTIONS.get(name, ())
    out: dict = {}
    if width != 1.0:
        _check_width(width)
        if "width" not in takes:
            raise InputError(f"model {name!r} has no width option (width {width} given); --width applies to "
                             f"{', '.join(k for k, v in ARCH_OPTIONS.items() if 'width' in v)}")
        out["width"] = float(width)
    if depth is not None:
        if "depth" not in takes:
            raise InputError(f"model {name!r} has no depth option (depth {depth} given); --depth applies to "
                             f"{', '.join(k for k, v in ARCH_OPTIONS.items() if 'depth' in v)}")
        out["depth"] = int(depth)
    return out


_BUILDER_SIGNATURE = "a callable (num_classes, in_channels, image_size, **kwargs) -> nn.Module"


@functools.lru_cache(maxsize=1)
def torchvision_models() -> tuple[str, ...]:
    """The names of torchvision's classification models (``torchvision.models.list_models``)."""
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm)))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def torchvision_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """torchvision's classification model ``name``, randomly initialized with ``num_classes`` outputs, adapted to
    the data: the first convolution takes ``in_channels``; for a ResNet-family stem (``conv1`` + ``maxpool``) on
    images of at most 64 pixels, the 7x7 stride-2 convolution and the max-pool become one 3x3 stride-1
    convolution (the usual CIFAR adaptation: the full stem would shrink a 32x32 image to 8x8 before the first
    block). Networks that cannot run on the image size fail the output check of `check_model_output`."""
    import torchvision.models as tvm

    if name not in torchvision_models():
        raise InputError(f"unknown torchvision model {name!r}; torchvision's classification models: "
                         f"{', '.join(torchvision_models())}")
    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return model
    conv_name, conv = first
    small = image_size <= 64 and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d) and conv_name == "conv1"
    if small:
        _set_module(model, conv_name, nn.Conv2d(in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None))
        model.maxpool = nn.Identity()
    elif conv.in_channels != in_channels:
        _set_module(model, conv_name, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                                conv.padding, conv.dilation, conv.groups, conv.bias is not None))
    return model


def _builder(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION):
        return functools.partial(torchvision_model, name[len(TORCHVISION):])
    fn = load_callable(name, "model")
    check_signature(fn, name, "model", _BUILDER_SIGNATURE, num_classes=10, in_channels=1, image_size=28)
    return fn


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a registered model, ``torchvision:<a torchvision classification model>`` or an
    import path to a builder that imports and takes (num_classes, in_channels, image_size); else raise an error
    that lists the valid forms."""
    if not isinstance(name, str) or not name:
        raise InputError(f"a model name is a string, got {name!r}; valid models: {', '.join(sorted(MODELS))}")
    if name in MODELS:
        return name
    if name.startswith(TORCHVISION):
        if name[len(TORCHVISION):] not in torchvision_models():
            raise InputError(f"unknown torchvision model {name!r}; torchvision's classification models: "
                             f"{', '.join(torchvision_models())}")
        return name
    if is_import_path(name):
        _builder(name)
        return name
    raise InputError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}, torchvision:<name> "
                     f"(e.g. torchvision:resnet18), or an import path module:callable to your own builder "
                     f"(e.g. mypkg.nets:build_net){colon_hint(name)}")


def check_model_output(name: str, num_classes: int, input_shape: tuple[int, ...], **arch) -> None:
    """Build ``name`` for inputs of shape ``input_shape`` (one example, e.g. ``(C, H, W)``) and run two zero
    inputs through it: it must be an ``nn.Module`` returning finite logits ``(2, num_classes)``. Raises an
    `InputError` naming the model and what came back, before any work."""
    in_channels = input_shape[0]
    image_size = input_shape[-1] if len(input_shape) > 1 else 1
    try:
        model = build_model(name, num_classes, in_channels, image_size, seed=0, **arch)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"model {name!r} could not be built for {num_classes} classes, {in_channels} input "
                         f"channels, image size {image_size}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    try:
        with torch.no_grad():
            model.eval()
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise InputError(f"model {name!r} does not run on inputs of shape (N, {', '.join(map(str, input_shape))}): "
                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"model {name!r} returned {got} for a batch of 2 inputs of shape "
                         f"{tuple(input_shape)}; expected logits of shape (2, {num_classes}) (N x classes)")
    if not torch.isfinite(out).all():
        raise InputError(f"model {name!r} returned non-finite outputs for zero inputs; check its initialization")


_INIT_LOCK = threading.Lock()


def build_model(name: str, num_classes: int, in_channels: int, image_size: int, seed: int | None = None,
                width: float = 1.0, depth: int | None = None) -> nn.Module:
    """Build a model (a registered name, ``torchvision:<name>`` or an import path, see `check_model_name`) for
    inputs ``(N, in_channels, image_size, image_size)``, at channel multiplier
    ``width`` and (pre-activation ResNet) ``depth`` (see `arch_kwargs`).

    ``seed``: initialize from this seed, under a lock and on a forked copy of PyTorch's global generator, so
    that two networks built at once in two threads each get exactly their seed's initialization (with
    ``torch.manual_seed`` then ``build_model`` the two threads would draw from each other's stream).
    """
    arch = arch_kwargs(name, width, depth)
    builder = _builder(name)
    if seed is None:
        model = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **arch)
    else:
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **arch)
    if not isinstance(model, nn.Module):
        raise InputError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module; expected "
                         f"{_BUILDER_SIGNATURE}")
    return model
