"""Image datasets for the vision notebooks, as tensors, through torchvision transforms.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; shipped
  inside scikit-learn, so offline). Used by the smoke and cpu profiles.
* ``cifar10``: CIFAR-10 (60,000 32x32 colour images, 10 classes) through ``torchvision.datasets``,
  kept in the course cache (``course_lib.data.cache_dir() / "cifar10"``). Used by the gpu profile.
  A copy of ``cifar-10-python.tar.gz`` in a ``COURSE_DATA_MIRROR`` folder is used before the
  network; without either, :class:`course_lib.data.DataError` says what to put where.

Images are stored in [0, 1] (digits as float, CIFAR-10 as uint8) and normalised per batch with
``torchvision.transforms.v2.Normalize``; :func:`batches` draws deterministic, resumable batches
(a pure function of the step, as ``course_lib.train.fit`` wants) with optional augmentation:
random translation by padding and cropping, horizontal flips, small rotations. The augmentation is
vectorised over the batch (one random draw per image, on whatever device the images live), because
torchvision's v2 transforms draw one set of parameters per call and a per-image Python loop would
cost more than the model on 8x8 digits.
"""
from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import data as _data

__all__ = ["ImageSplit", "load_digits", "load_cifar10", "load_images", "with_validation", "batches", "augment",
           "accuracy",
           "CIFAR10_FILE", "CIFAR10_URL", "CIFAR10_MD5", "CIFAR10_CLASSES"]

CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_SIZE = 170498071
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class ImageSplit:
    """A train/test split held as tensors: images (N, C, H, W) in [0, 1] (float, or uint8 in 0..255),
    labels (N,) int64, and the per-channel statistics used for normalisation. ``x_val``/``y_val``
    hold a validation part carved from the training images by :func:`with_validation` (None until then)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] (or uint8) images -> float, standardised per channel (torchvision v2 transforms)."""
        from torchvision.transforms import v2

        tf = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))])
        return tf(x)

    def part(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of ``"train"``, ``"val"`` or ``"test"``."""
        parts = {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
                 "test": (self.x_test, self.y_test)}
        if name not in parts:
            raise ValueError(f"part must be one of {', '.join(parts)}, received {name!r}")
        if parts[name][0] is None:
            raise ValueError(f"{self.name} has no validation part; carve one with vision.with_validation(split, n_val)")
        return parts[name]

    def test_batches(self, batch_size: int = 1000, part: str = "test"):
        """Normalised images and labels of ``part`` (default the test part) in order, batch by batch."""
        x, y = self.part(part)
        for i in range(0, len(y), batch_size):
            yield self.normalize(x[i:i + batch_size]), y[i:i + batch_size]

    def to(self, device: torch.device | str) -> ImageSplit:
        """The same split with its tensors on ``device`` (e.g. the GPU, so batches never cross PCIe)."""
        def move(t):
            return None if t is None else t.to(device)

        return ImageSplit(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                          self.y_test.to(device), self.classes, self.mean, self.std, move(self.x_val), move(self.y_val))

    def __repr__(self) -> str:
        val = "" if self.x_val is None else f", val {tuple(self.x_val.shape)}"
        return (f"ImageSplit({self.name!r}: train {tuple(self.x_train.shape)}{val}, test {tuple(self.x_test.shape)}, "
                f"{self.n_classes} classes)")


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).tolist())


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float images in [0, 1], split train/test
    (stratified by class, deterministic given ``seed``); mean and std come from the training part."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), received {test_fraction}")
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split
    from torchvision.transforms import v2

    bunch = _sk_digits()
    images = torch.from_numpy(bunch.images).float()[:, None]          # (1797, 1, 8, 8), values 0..16
    x = v2.Lambda(lambda t: t / 16.0)(images)                          # ink intensity in [0, 1]
    y = torch.from_numpy(bunch.target).long()
    idx = torch.arange(len(y))
    tr, te = train_test_split(idx.numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy())
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    mean, std = _channel_stats(x[tr])
    return ImageSplit("digits", x[tr].contiguous(), y[tr], x[te].contiguous(), y[te],
                      tuple(str(c) for c in range(10)), mean, std)


def with_validation(split: ImageSplit, n_val: int, seed: int = 0) -> ImageSplit:
    """The split with ``n_val`` of its training images moved to a validation part (stratified by
    class, deterministic given ``seed``); the test part is untouched and the normalisation statistics
    are recomputed from the training images that remain. Choices are made on the validation part,
    so the test part is looked at once, at the end."""
    if split.x_val is not None:
        raise ValueError(f"{split.name} already has a validation part of {len(split.y_val)} images")
    if isinstance(n_val, bool) or not isinstance(n_val, int):
        raise TypeError(f"n_val must be an int, received {type(n_val).__name__}")
    n = len(split.y_train)
    if not split.n_classes <= n_val <= n - split.n_classes:
        raise ValueError(f"n_val must be in {split.n_classes}..{n - split.n_classes} (one image per class on each "
                         f"side of {n} training images), received {n_val}")
    from sklearn.model_selection import train_test_split

    labels = split.y_train.cpu().numpy()
    tr, va = train_test_split(torch.arange(n).numpy(), test_size=n_val, random_state=seed, stratify=labels)
    tr, va = torch.from_numpy(tr).to(split.y_train.device), torch.from_numpy(va).to(split.y_train.device)
    x_tr = split.x_train[tr].contiguous()
    mean, std = _channel_stats(x_tr)
    return ImageSplit(split.name, x_tr, split.y_train[tr], split.x_test, split.y_test, split.classes, mean, std,
                      split.x_train[va].contiguous(), split.y_train[va])


def _cifar_missing_message(root: Path, problem: str) -> str:
    mirrors = ", ".join(str(m) for m in _data.mirror_dirs()) or "(COURSE_DATA_MIRROR not set)"
    return (f"CIFAR-10 is not available: {problem}\n"
            f"Needed: {CIFAR10_FILE} ({CIFAR10_SIZE} bytes, md5 {CIFAR10_MD5}) from {CIFAR10_URL}\n"
            f"Searched: the cache folder {root} and the mirrors {mirrors}\n"
            f"To fix: download it on a machine with internet and put it in {root} (or in a folder named by "
            f"COURSE_DATA_MIRROR); it is unpacked on first use. Or run with network access once.")


def load_cifar10(root: str | os.PathLike | None = None, download: bool | None = None) -> ImageSplit:
    """CIFAR-10's official split (50,000 / 10,000) as uint8 tensors (N, 3, 32, 32), through
    ``torchvision.datasets.CIFAR10`` and the ``ToImage`` transform.

    The archive is looked for in ``root`` (default ``cache_dir()/cifar10``), then in the
    ``COURSE_DATA_MIRROR`` folders (copied into ``root``), then downloaded (unless ``download`` is
    False or ``COURSE_OFFLINE`` is set); failing all, a DataError names the file and where to put it.
    """
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    root = Path(root) if root is not None else _data.cache_dir() / "cifar10"
    if download is None:
        download = os.environ.get("COURSE_OFFLINE", "") in ("", "0")
    extracted = root / "cifar-10-batches-py"
    archive = root / CIFAR10_FILE
    if not extracted.is_dir() and not archive.exists():
        for folder in _data.mirror_dirs():
            candidate = folder / CIFAR10_FILE
            if candidate.exists():
                if not check_integrity(str(candidate), CIFAR10_MD5):
                    continue
                root.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(candidate, archive)
                break
    have_archive = archive.exists()
    try:
        sets = [datasets.CIFAR10(str(root), train=t, download=download or have_archive) for t in (True, False)]
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise _data.DataError(_cifar_missing_message(root, str(e))) from None
    except Exception as e:  # network errors while downloading
        raise _data.DataError(_cifar_missing_message(root, f"{type(e).__name__}: {e}")) from None

    def as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import v2

        x = v2.ToImage()(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous())   # (N, 3, 32, 32) uint8
        return x.as_subclass(torch.Tensor), torch.tensor(ds.targets, dtype=torch.long)

    (xtr, ytr), (xte, yte) = (as_tensors(s) for s in sets)
    mean, std = _channel_stats(xtr)
    return ImageSplit("cifar10", xtr, ytr, xte, yte, CIFAR10_CLASSES, mean, std)


def load_images(name: str, **kwargs) -> ImageSplit:
    """``"digits"`` or ``"cifar10"``."""
    loaders: dict[str, Callable[..., ImageSplit]] = {"digits": load_digits, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown image dataset {name!r}; expected one of {', '.join(loaders)}")
    return loaders[name](**kwargs)


def augment(x: torch.Tensor, generator: torch.Generator, *, shift: int = 0, flip: bool = False,
            rotate: float = 0.0) -> torch.Tensor:
    """Per-image random augmentation of a (B, C, H, W) batch in [0, 1]: rotation by up to ``rotate``
    degrees, translation by up to ``shift`` pixels (zero padding, then a random crop), and a
    horizontal flip with probability 1/2 when ``flip``. Random draws come from ``generator`` (CPU)."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), received shape {tuple(x.shape)}")
    if shift < 0 or rotate < 0:
        raise ValueError(f"shift and rotate must be >= 0, received shift={shift}, rotate={rotate}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x
    B, C, H, W = x.shape
    dev = x.device
    if rotate > 0:
        angle = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(rotate)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(B)], 1),
                             torch.stack([sin, cos, torch.zeros(B)], 1)], 1).to(dev, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (B,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * shift + 1, (B,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(H, device=dev))[:, None, :, None]         # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=dev))[:, None, None, :]         # (B, 1, 1, W)
        b = torch.arange(B, device=dev)[:, None, None, None]
        c = torch.arange(C, device=dev)[None, :, None, None]
        x = padded[b, c, rows, cols]
    if flip:
        mask = (torch.rand(B, generator=generator) < 0.5).to(dev)[:, None, None, None]
        x = torch.where(mask, x.flip(-1), x)
    return x


def batches(split: ImageSplit, batch_size: int, *, seed: int = 0, shift: int = 0, flip: bool = False,
            rotate: float = 0.0) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``data(i) -> (images, labels)`` for :func:`course_lib.train.fit`: epochs of shuffled training
    images (each epoch a fresh permutation), augmented, normalised; a pure function of ``i``."""
    n = len(split.y_train)
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n} (the training set size), received {batch_size}")
    per_epoch = n // batch_size
    cache: dict[int, torch.Tensor] = {}

    def data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, j = divmod(i, per_epoch)
        if epoch not in cache:
            cache.clear()
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            cache[epoch] = torch.randperm(n, generator=g).to(split.x_train.device)
        idx = cache[epoch][j * batch_size:(j + 1) * batch_size]
        x = split.x_train[idx]
        if shift or flip or rotate:
            g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * i + 1)
            x = augment(x, g, shift=shift, flip=flip, rotate=rotate)
        return split.normalize(x), split.y_train[idx]

    return data


@torch.no_grad()
def accuracy(model: torch.nn.Module, split: ImageSplit, batch_size: int = 1000,
             device: torch.device | str | None = None, part: str = "test") -> float:
    """Top-1 accuracy on ``part`` (``"test"``, ``"val"`` or ``"train"``)."""
    _, labels = split.part(part)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in split.test_batches(batch_size, part=part):
        correct += (model(x.to(dev)).argmax(-1) == y.to(dev)).sum().item()
    model.train(was_training)
    return correct / len(labels)
