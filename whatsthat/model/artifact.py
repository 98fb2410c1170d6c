"""The torch-only serving artifact: the model's weights and its exact validation preprocessing, no pickled code.

`export.pkl` is a pickled fastai Learner: loading it needs fastai, torchvision and the very library
versions that wrote it. The model process of the web page needs far less, so beside export.pkl we write

- `export.safetensors`: the state dict of `learn.model` (safetensors: tensors only, loads across torch
  versions, cannot run code);
- `export.serving.json`: what rebuilds the model and its input: the architecture, the body's cut point,
  the head's layers, the classes, and the validation preprocessing fastai applies (its item transforms
  at split_idx=1: resize/crop; ToTensor; IntToFloatTensor's /255; Normalize's statistics).

`load_serving_model` rebuilds the *same module tree* as `learn.model`, `nn.Sequential(body, head)`,
in plain torch (the state dict keys match exactly, so `strict=True` loading checks the structure, and
code written against learn.model, such as `ood.split_forward`, works on both). It needs torch, pillow,
safetensors and efficientnet_lite_pytorch: no fastai, no torchvision, no numpy.

ResNets are torchvision models in training; here they are re-expressed (whatsthat.model.networks: the
same attribute names, so the same keys) because torchvision does not install beside the CPU torch that
serving pins, and a hand-written BasicBlock is 20 lines. `write_artifact` checks the rebuilt model
against the learner on a random batch before it writes anything, so an architecture this module gets
wrong is refused at export time, never served wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from whatsthat.atomic import atomic_write
from whatsthat.errors import WhatsthatError
from whatsthat.model.files import ModelFiles
from whatsthat.model.networks import full_network
from whatsthat.model.verdict import rank

FORMAT = "whatsthat-serving"
VERSION = 1
# The rebuilt model must give the learner's logits on the same input: float32 rounding only.
CHECK_ATOL = 1e-4

log = logging.getLogger("whatsthat.model.artifact")


def artifact_paths(model_path: str | Path) -> tuple[Path, Path]:
    """(weights, description) beside `model_path`: export.pkl -> export.safetensors, export.serving.json."""
    files = ModelFiles(model_path)
    return files.weights, files.serving


def has_artifact(model_path: str | Path) -> bool:
    return ModelFiles(model_path).has_artifact()


# -- the model, in plain torch --


class ConcatPool2d(nn.Module):
    """fastai's AdaptiveConcatPool2d: max pool and average pool side by side (max first, as fastai)."""

    def __init__(self) -> None:
        super().__init__()
        self.ap = nn.AdaptiveAvgPool2d(1)
        self.mp = nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)


class Flatten(nn.Module):
    """fastai's Flatten(full=False): one row per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


def describe_head(head: nn.Module) -> list[dict]:
    """The head's layers as JSON-able dicts; a layer this module cannot rebuild raises WhatsthatError."""
    out: list[dict] = []
    for layer in head.children():
        name = type(layer).__name__
        if name == "AdaptiveConcatPool2d":
            out.append({"type": "concat_pool"})
        elif name == "AdaptiveAvgPool2d" and layer.output_size in (1, (1, 1)):
            out.append({"type": "avg_pool"})
        elif name == "Flatten" and not getattr(layer, "full", False):
            out.append({"type": "flatten"})
        elif isinstance(layer, nn.BatchNorm1d):
            out.append({"type": "batchnorm1d", "num_features": layer.num_features, "eps": layer.eps, "momentum": layer.momentum})
        elif isinstance(layer, nn.Dropout):
            out.append({"type": "dropout", "p": layer.p})
        elif isinstance(layer, nn.Linear):
            out.append({"type": "linear", "in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None})
        elif isinstance(layer, nn.ReLU):
            out.append({"type": "relu"})
        else:
            raise WhatsthatError(f"the model's head has a {name} layer, which the torch-only artifact cannot describe")
    return out


def build_head(layers: Sequence[dict]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for spec in layers:
        kind = spec["type"]
        if kind == "concat_pool":
            modules.append(ConcatPool2d())
        elif kind == "avg_pool":
            modules.append(nn.AdaptiveAvgPool2d(1))
        elif kind == "flatten":
            modules.append(Flatten())
        elif kind == "batchnorm1d":
            modules.append(nn.BatchNorm1d(spec["num_features"], eps=spec["eps"], momentum=spec["momentum"]))
        elif kind == "dropout":
            modules.append(nn.Dropout(spec["p"]))
        elif kind == "linear":
            modules.append(nn.Linear(spec["in"], spec["out"], bias=spec["bias"]))
        elif kind == "relu":
            modules.append(nn.ReLU(inplace=True))
        else:
            raise WhatsthatError(f"unknown head layer {kind!r} in the serving description")
    return nn.Sequential(*modules)


def build_model(description: dict) -> nn.Sequential:
    """nn.Sequential(body, head) from a serving description, untrained."""
    children = list(full_network(description["arch"]).children())
    body = nn.Sequential(*children[: int(description["body_cut"])])
    return nn.Sequential(body, build_head(description["head"]))


# -- the preprocessing: fastai's validation transforms, re-expressed on PIL images --


def _size_wh(size: Sequence[int]) -> list[int]:
    # fastai stores item-transform sizes as (width, height) after _process_sz
    return [int(size[0]), int(size[1])]


def describe_preprocessing(learn: Any) -> list[dict]:
    """The learner's validation pipeline as steps `preprocess` replays exactly; unknown steps raise."""
    steps: list[dict] = []
    for tfm in learn.dls.valid.after_item.fs:
        name = type(tfm).__name__
        if name == "RandomResizedCrop":
            # validation: squish the whole picture to size + val_xtra, then crop the centre to size
            size = _size_wh(tfm.size)
            xtra = math.ceil(max(size) * tfm.val_xtra / 8) * 8  # exactly fastai's arithmetic
            steps.append({"op": "resize", "size": [size[0] + int(xtra), size[1] + int(xtra)], "resample": int(tfm.mode)})
            if xtra:
                steps.append({"op": "center_crop", "size": size})
        elif name == "Resize":
            method = str(tfm.method)
            if method == "squish":
                steps.append({"op": "resize", "size": _size_wh(tfm.size), "resample": int(tfm.mode)})
            elif method == "crop":
                steps.append({"op": "fit_crop", "size": _size_wh(tfm.size), "resample": int(tfm.mode)})
            else:
                raise WhatsthatError(f"Resize(method={method!r}) is not supported by the torch-only artifact")
        elif name == "ToTensor":
            steps.append({"op": "to_tensor"})
        else:
            raise WhatsthatError(f"the validation item transform {name} is not supported by the torch-only artifact")
    for tfm in learn.dls.valid.after_batch.fs:
        name = type(tfm).__name__
        if name == "IntToFloatTensor":
            steps.append({"op": "scale", "div": float(tfm.div)})
        elif name == "Normalize":
            mean = [float(v) for v in tfm.mean.flatten().tolist()]
            std = [float(v) for v in tfm.std.flatten().tolist()]
            steps.append({"op": "normalize", "mean": mean, "std": std})
        elif tfm.split_idx == 0 or (name in ("Flip", "Rotate", "Zoom", "Warp", "AffineCoordTfm") and tfm.size is None):
            # training-only augmentation; the affine ones run at validation as an identity resample
            continue
        else:
            raise WhatsthatError(f"the validation batch transform {name} is not supported by the torch-only artifact")
    if not any(s["op"] == "to_tensor" for s in steps):
        raise WhatsthatError("the validation pipeline has no ToTensor step")
    return steps


def _center_crop(im: Image.Image, size: Sequence[int]) -> Image.Image:
    w, h = im.size
    left, top = (w - size[0]) // 2, (h - size[1]) // 2
    if left < 0 or top < 0:
        raise WhatsthatError(f"center crop to {size} from a smaller picture {im.size}")
    return im.crop((left, top, left + size[0], top + size[1]))


def _fit_crop(im: Image.Image, size: Sequence[int], resample: int) -> Image.Image:
    # fastai Resize(method='crop') at validation: the largest centred box of the target's shape
    w, h = im.size
    m = w / size[0] if w / size[0] < h / size[1] else h / size[1]
    cw, ch = int(m * size[0]), int(m * size[1])
    left, top = int(0.5 * (w - cw)), int(0.5 * (h - ch))
    return im.crop((left, top, left + cw, top + ch)).resize(tuple(size), resample)


def preprocess(im: Image.Image, steps: Sequence[dict]) -> torch.Tensor:
    """One RGB picture -> the float tensor (3, H, W) the model takes, by the serving description's steps."""
    x: torch.Tensor | None = None
    for step in steps:
        op = step["op"]
        if op == "resize":
            im = im.resize(tuple(step["size"]), step["resample"])
        elif op == "center_crop":
            im = _center_crop(im, step["size"])
        elif op == "fit_crop":
            im = _fit_crop(im, step["size"], step["resample"])
        elif op == "to_tensor":
            if im.mode != "RGB":
                im = im.convert("RGB")
            w, h = im.size
            # bytes -> tensor without numpy (fastai goes through np.array; same values)
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)
        elif op == "scale":
            x = x.float().div_(step["div"])
        elif op == "normalize":
            mean = torch.tensor(step["mean"]).view(-1, 1, 1)
            std = torch.tensor(step["std"]).view(-1, 1, 1)
            x = (x - mean) / std
        else:
            raise WhatsthatError(f"unknown preprocessing step {op!r} in the serving description")
    if x is None:
        raise WhatsthatError("the serving description has no to_tensor step")
    return x


# -- writing and loading --


def _learner_arch(learn: Any, card: dict) -> str:
    if card.get("arch"):
        return str(card["arch"])
    arch = getattr(learn, "arch", None)  # vision_learner keeps the builder; its name is the arch
    name = getattr(arch, "__name__", None)
    if not name:
        raise WhatsthatError("cannot tell the learner's architecture (no model card, no learn.arch)")
    return name


def write_artifact(learn: Any, model_path: str | Path, card: dict | None = None) -> tuple[Path, Path]:
    """Write export.safetensors + export.serving.json beside `model_path` for a live fastai learner.

    Checks first that the rebuilt plain-torch model gives the learner's logits on a random batch, so a
    wrong description is never written. Raises WhatsthatError for anything it cannot express.
    """
    from safetensors.torch import save

    card = card or {}
    model = learn.model
    if not isinstance(model, nn.Sequential) or len(model) != 2:
        raise WhatsthatError("the learner's model is not nn.Sequential(body, head) (a vision_learner)")
    arch = _learner_arch(learn, card)
    description = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "body_cut": len(model[0]),
        "head": describe_head(model[1]),
        "classes": [str(c) for c in learn.dls.vocab],
        "preprocess": describe_preprocessing(learn),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    rebuilt = build_model(description)
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WhatsthatError(f"the torch-only {arch} does not match the learner's model: {e}") from e
    size = next(s["size"] for s in reversed(description["preprocess"]) if "size" in s)
    description["image_size"] = [size[1], size[0]]  # height, width, as tensors are laid out
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size[1], size[0], generator=gen)
    was_training = model.training
    model.eval()
    rebuilt.eval()
    try:
        with torch.inference_mode():
            want = model.cpu()(x).float()
            got = rebuilt(x).float()
    finally:
        model.train(was_training)
    if not torch.allclose(want, got, atol=CHECK_ATOL, rtol=0):
        raise WhatsthatError(
            f"the torch-only {arch} computes other logits than the learner (max diff {(want - got).abs().max():.2e})"
        )
    weights_path, spec_path = artifact_paths(Path(model_path).resolve())
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    blob = save(state, metadata={"format": FORMAT})
    description["weights"] = weights_path.name
    description["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    description["torch_at_export"] = torch.__version__
    atomic_write(weights_path, blob)
    atomic_write(spec_path, json.dumps(description, indent=2) + "\n")
    return weights_path, spec_path


def read_description(model_path: str | Path) -> dict:
    _, spec_path = artifact_paths(model_path)
    try:
        description = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WhatsthatError(f"serving description {spec_path} is unreadable: {e}") from e
    if description.get("format") != FORMAT or description.get("version") != VERSION:
        raise WhatsthatError(
            f"{spec_path} is not a whatsthat serving description of version {VERSION} "
            "(rewrite it with `whatsthat artifact export.pkl`)"
        )
    return description


@dataclass
class ServingModel:
    """The rebuilt model with its classes and preprocessing; `probabilities` runs a batch of pictures."""

    model: nn.Sequential
    classes: list[str]
    steps: list[dict]
    description: dict

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The input batch for `images` (RGB PIL pictures), channels_last for oneDNN's faster CPU convolutions."""
        x = torch.stack([preprocess(im, self.steps) for im in images])
        return x.contiguous(memory_format=torch.channels_last)

    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(self.model(self.batch(images)).float(), dim=1)

    def predict_many(self, images: Sequence[Image.Image]) -> list[list[tuple[str, float]]]:
        """Ranked (label, probability) pairs for each picture, highest first (as predict.Classifier)."""
        return [rank(self.classes, row) for row in self.probabilities(images).tolist()]


def load_serving_model(model_path: str | Path) -> ServingModel:
    """Rebuild the model described beside `model_path` and load its weights (torch only; clear errors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path, spec_path = artifact_paths(model_path)
    if not weights_path.is_file() or not spec_path.is_file():
        raise WhatsthatError(
            f"no serving artifact beside {model_path} ({weights_path.name} + {spec_path.name}); "
            "write it with `whatsthat artifact export.pkl`"
        )
    description = read_description(model_path)
    expected = description.get("weights_sha256")
    if expected:
        digest = hashlib.sha256()
        with weights_path.open("rb") as f:
            while chunk := f.read(1 << 20):  # streamed: no second in-memory copy of the weights
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise WhatsthatError(f"{weights_path} does not belong to {spec_path} (checksum differs): rewrite the artifact")
    try:
        state = load_file(str(weights_path))  # memory-mapped: 11 MB PSS instead of 43 MB for the bears model
    except SafetensorError as e:
        raise WhatsthatError(f"{weights_path} is not a readable safetensors file: {e}") from e
    # channels_last weights first (oneDNN's faster CPU convolutions), then the model is built on the meta
    # device and takes these tensors as its parameters: no random init, no second copy of the weights
    state = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in state.items()}
    with torch.device("meta"):
        model = build_model(description)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise WhatsthatError(f"{weights_path} does not fit the model its description names: {e}") from e
    model.eval()
    classes = [str(c) for c in description["classes"]]
    return ServingModel(model, classes, list(description["preprocess"]), description)
