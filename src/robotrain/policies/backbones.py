"""ResNet-18/34/50 image encoders with torchvision's parameter names, written here (torchvision is not a dependency).

Keeping the names (conv1, bn1, layer1.0.conv1, ..., fc) means ImageNet weights published for torchvision (or timm's
`*.tv_in1k` repos, which use the same names) load as they are. `--policy.pretrained_backbone_weights=` accepts:
  - a torchvision enum name, e.g. ResNet18_Weights.IMAGENET1K_V1: torch's hub cache is searched for the file
    torchvision downloads, then the matching timm repo on the Hugging Face Hub;
  - a local file: .safetensors, or a torch file (loaded with weights_only=True, so it cannot run code);
  - a Hub repo id holding model.safetensors (e.g. timm/resnet18.tv_in1k).
Differences from torchvision: dilation also works in BasicBlock (ResNet-18/34), where torchvision raises; the
classification head is left out (policies use the layer4 feature map).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from robotrain.errors import ConfigError

logger = logging.getLogger(__name__)

FIELD = "pretrained_backbone_weights"
FLAG = f"policy.{FIELD}"  # errors are raised while the model is built, outside the parser's flag prefixing
# torchvision weight enum -> (the file torchvision caches in $TORCH_HOME/hub/checkpoints, a timm repo with them)
KNOWN_WEIGHTS = {
    "ResNet18_Weights.IMAGENET1K_V1": ("resnet18-f37072fd.pth", "timm/resnet18.tv_in1k"),
    "ResNet34_Weights.IMAGENET1K_V1": ("resnet34-b627a593.pth", "timm/resnet34.tv_in1k"),
    "ResNet50_Weights.IMAGENET1K_V1": ("resnet50-0676ba61.pth", "timm/resnet50.tv_in1k"),
    "ResNet50_Weights.IMAGENET1K_V2": ("resnet50-11ad3fa6.pth", "timm/resnet50.tv2_in1k"),
}
_DEPTHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms (buffers, not parameters): small batches cannot drift it."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # present in weights saved from nn.BatchNorm2d
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def make_norm(kind: str, channels: int) -> nn.Module:
    """'batch', 'frozen' (ACT) or 'group' (Diffusion: one group per 16 channels, as the paper's code does)."""
    if kind == "frozen":
        return FrozenBatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(channels // 16, channels)
    return nn.BatchNorm2d(channels)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, dilation: int, norm: str):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5: the stride sits on the 3x3 convolution, as in torchvision."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, dilation: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = make_norm(norm, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """The convolutional trunk of a ResNet: (B, 3, H, W) -> layer4 feature map (B, C, H/32, W/32)."""

    def __init__(self, name: str = "resnet18", norm: str = "batch", dilate_last: bool = False):
        super().__init__()
        if name not in _DEPTHS:
            raise ConfigError("vision_backbone", name, "is not a supported backbone",
                              "use resnet18, resnet34 or resnet50")
        kind, depths = _DEPTHS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.name, self.norm = name, norm
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin, self._dilation = 64, 1
        self.layer1 = self._make_layer(block, 64, depths[0], 1, False)
        self.layer2 = self._make_layer(block, 128, depths[1], 2, False)
        self.layer3 = self._make_layer(block, 256, depths[2], 2, False)
        # ACT's replace_final_stride_with_dilation: layer4 keeps the resolution and widens its receptive field.
        self.layer4 = self._make_layer(block, 512, depths[3], 2, dilate_last)
        self.out_channels = 512 * block.expansion
        self._init_weights()

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self._cin, planes * block.expansion, 1, stride=stride, bias=False),
                                       make_norm(self.norm, planes * block.expansion))
        layers = [block(self._cin, planes, stride, downsample, first_dilation, self.norm)]
        self._cin = planes * block.expansion
        layers += [block(self._cin, planes, 1, None, self._dilation, self.norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def make_resnet(name: str, norm: str = "batch", dilate_last: bool = False, weights: str | None = None) -> ResNet:
    """A ResNet trunk, with ImageNet (or any torchvision-named) weights loaded when `weights` is given."""
    model = ResNet(name, norm, dilate_last)
    if weights:
        load_resnet_weights(model, weights)
    return model


def load_resnet_weights(model: ResNet, spec: str) -> None:
    """Load weights named as torchvision's into `model`; the classification head (fc.*) is ignored."""
    state = _read_state_dict(_locate_weights(spec), spec)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        example = (missing or unexpected or wrong_shape)[0]
        raise ConfigError(FLAG, spec, f"does not hold {model.name} weights (first mismatch: {example})",
                          f"use weights of a {model.name}, or set --policy.vision_backbone to match them")
    model.load_state_dict(state, strict=False)
    logger.info("loaded %s weights from %s", model.name, spec)


def _locate_weights(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if spec in KNOWN_WEIGHTS:
        filename, hub_repo = KNOWN_WEIGHTS[spec]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if cached.is_file():
            return cached
        return _from_hub(hub_repo, spec, f"or place torchvision's {filename} in {cached.parent}")
    if "/" in spec and not path.suffix:
        return _from_hub(spec, spec, "")
    raise ConfigError(FLAG, spec, "is neither a file, a known torchvision weights name nor a Hub repo id",
                      f"use one of {', '.join(KNOWN_WEIGHTS)}, a .safetensors/.pth file, a Hub repo, or null")


def _from_hub(repo_id: str, spec: str, extra_fix: str) -> Path:
    from robotrain.hub import fetch_hub_file

    try:
        return fetch_hub_file(repo_id, "model.safetensors", f"policy.{FIELD}")
    except ConfigError as exc:
        raise ConfigError(FLAG, spec, f"needs weights from the Hub repo {repo_id}, which failed: {exc.problem}",
                          f"download them once while online, pass a local file {extra_fix}, "
                          f"or train from scratch with --policy.{FIELD}=null".replace("  ", " ")) from None


def _read_state_dict(path: Path, spec: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which and why
        raise ConfigError(FLAG, spec, f"could not be read as weights ({type(exc).__name__}: {exc})",
                          "pass a .safetensors file or a torch state dict") from None
    for key in ("state_dict", "model"):  # training checkpoints often wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(FLAG, spec, "does not hold a state dict", "pass a .safetensors file or a torch state dict")
    return state


# LeRobot builds its Diffusion and VQ-BeT backbones as nn.Sequential(*resnet.children()[:-2]): the children are
# numbered there and named here (torchvision's names).
LEROBOT_RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def rename_lerobot_backbone(state: dict[str, torch.Tensor], backbone: re.Pattern[str],
                            dropped: re.Pattern[str]) -> dict[str, torch.Tensor]:
    """A LeRobot state dict with the numbered ResNet children under `backbone` (a pattern whose group 1 is the
    backbone's prefix and group 2 the child's number) named, and the tensors matching `dropped` (buffers
    robotrain rebuilds from the config) left out."""
    out = {}
    for name, tensor in state.items():
        if dropped.match(name):
            continue
        match = backbone.match(name)
        if match and match.group(2) in LEROBOT_RESNET_CHILDREN:
            name = f"{match.group(1)}.{LEROBOT_RESNET_CHILDREN[match.group(2)]}.{name[match.end():]}"
        out[name] = tensor
    return out
