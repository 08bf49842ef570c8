"""A user's own model module: builders with the signature the project calls,
``(num_classes, in_channels, image_size, **kwargs) -> nn.Module``. Name one with ``--model my_models:small_mlp``
(from this folder, or with it on PYTHONPATH)."""

from torch import nn


def small_mlp(num_classes: int, in_channels: int, image_size: int, hidden: int = 64) -> nn.Module:
    """Flatten, one hidden ReLU layer of ``hidden`` units, linear output."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def small_cnn(num_classes: int, in_channels: int, image_size: int, channels: int = 8) -> nn.Module:
    """conv3(channels)-pool-conv3(2 channels)-pool-linear: a few thousand weights."""
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * side * side, num_classes),
    )
