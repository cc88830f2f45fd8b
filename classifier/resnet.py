"""ResNet-18 (He et al. 2016) in plain PyTorch, with torchvision's attribute names, so torchvision's own
ImageNet file `resnet18-f37072fd.pth` loads as it is (keys conv1, bn1, layer1.0.conv1, ..., fc) with
weights-only unpickling. The paper's classifier: these weights with a new 2-class linear head.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mini_ldm import cli
from mini_ldm.errors import UserError, first_line
from mini_ldm.hashes import file_sha256
from mini_ldm.io import UnsafePickle, torch_load

WEIGHTS_FILE = "resnet18-f37072fd.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
FEATURES = 512  # width of the pooled features, the head's input


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; `downsample` (1x1 conv + BN) where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):  # (B, c_in, H, W) -> (B, c_out, H / stride, W / stride)
        shortcut = x if self.downsample is None else self.downsample(x)
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + shortcut)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths = (64, 128, 256, 512)
        for i, width in enumerate(widths):
            c_in, stride = widths[max(i - 1, 0)], 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1)))
        self.fc = nn.Linear(FEATURES, num_classes)

    def forward(self, x):  # (B, 3, H, W) -> (B, num_classes) logits
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, H/32, W/32)
        return self.fc(x.mean(dim=(2, 3)))  # global average pool -> (B, 512) -> head

    def init_weights(self, generator: torch.Generator, head_only: bool = False):
        """torchvision's initialisation (Kaiming-normal convolutions, BN scale 1 and shift 0) and PyTorch's
        default for the linear head, drawn from `generator` so a seed fixes it."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not head_only:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d) and not head_only:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        bound = 1 / FEATURES ** 0.5  # nn.Linear's own default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        nn.init.uniform_(self.fc.weight, -bound, bound, generator=generator)
        nn.init.uniform_(self.fc.bias, -bound, bound, generator=generator)
        return self


def default_weights() -> Path:
    return cli.weights_folder() / WEIGHTS_FILE


def read_backbone(path) -> tuple:
    """The ImageNet backbone tensors of a torchvision ResNet-18 file (fc left out: the head is new) and the
    file's SHA-256. One-line UserErrors for a missing, unreadable, unsafe or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file; download {WEIGHTS_URL} into {cli.weights_folder()}/ "
                        "(or pass --weights PATH), or train without pretrained weights with --from-scratch")
    try:
        state = torch_load(path)
    except UnsafePickle as e:
        raise UserError(f"--weights {path}: the file asks to run code ({e.what or 'a pickled object'}) and was "
                        f"not loaded; use torchvision's own {WEIGHTS_FILE}") from None
    except Exception as e:  # damaged or not a torch file at all; torch raises many kinds
        raise UserError(f"--weights {path}: cannot be read as a PyTorch weights file ({first_line(e)})") from None
    expected = {k: v.shape for k, v in ResNet18().state_dict().items() if not k.startswith("fc.")}
    if not isinstance(state, dict):
        raise UserError(f"--weights {path}: holds a {type(state).__name__}, not a state dict of {WEIGHTS_FILE}")
    for key, shape in expected.items():
        found = state.get(key)
        if found is None and key.endswith("num_batches_tracked"):
            continue  # older torchvision files do not store the counter; it is not used in training
        if not isinstance(found, torch.Tensor) or found.shape != shape:
            what = "missing" if found is None else f"of shape {tuple(getattr(found, 'shape', ()))}"
            raise UserError(f"--weights {path}: not a torchvision ResNet-18 file ({key} {what}, expected "
                            f"{tuple(shape)}); use {WEIGHTS_FILE}")
    # a deeper ResNet (34: three blocks in layer1) shares ResNet-18's first blocks' shapes: refuse what is left over
    unexpected = sorted(k for k in state if k not in expected and not k.startswith("fc."))
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
        raise UserError(f"--weights {path}: not a ResNet-18 file, it holds keys ResNet-18 has not ({shown}); a "
                        f"deeper ResNet perhaps; use {WEIGHTS_FILE}")
    backbone = {k: state[k] for k in expected if k in state}
    return backbone, file_sha256(path)


def build(backbone: dict | None, num_classes: int, generator: torch.Generator) -> ResNet18:
    """A ResNet-18 with a new `num_classes` head drawn from `generator`; the other layers are `backbone`'s
    tensors (ImageNet weights), or torchvision's random initialisation when `backbone` is None."""
    model = ResNet18(num_classes).init_weights(generator, head_only=backbone is not None)
    if backbone is not None:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        assert not unexpected and all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in missing)
    return model
