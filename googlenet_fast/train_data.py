"""Datasets for ``python -m googlenet_fast train``: scikit-learn's bundled digits, or an ImageFolder.

Both loaders return a :class:`TrainData`: a train and a validation ``Dataset`` whose items are
``(image, label)`` with ``image`` a float32 (3, S, S) tensor (normalized) and ``label`` an int in
``[0, num_classes)``, plus the class names.  Errors for bad input are :class:`DataError`
(a ValueError naming the file or folder); the command turns them into one-line messages.
"""
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageFolder's extensions (torchvision.datasets.folder.IMG_EXTENSIONS)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Bad training data (an empty, missing or unreadable folder or image, labels out of range);
    the message names the file, folder or argument."""


class ImageReadError(DataError):
    """An image file that PIL cannot open or decode; the message starts with the file's path."""


@dataclass
class TrainData:
    """A train/validation pair.

    Attributes:
        train, val: datasets of ``(image, label)``; image float32 (3, S, S), label int.
        classes: class names; labels are indices into it.
        source: a short description for the log ("scikit-learn digits", the folder, ...).
        split: how train/val were obtained ("train/ and val/ folders", "seeded 80/20 split", ...).
    """
    train: Dataset
    val: Dataset
    classes: List[str]
    source: str
    split: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ------------------------------------------------------------------------------------------------
# scikit-learn digits


def digits_tensors(image_size: int = 32) -> Tuple[Tensor, Tensor]:
    """All 1797 scikit-learn digits as images for GoogLeNet, before normalization.

    The bundled 8x8 grayscale digits (values 0..16) are scaled to [0, 1], upscaled with bilinear
    interpolation (``align_corners=False``) to ``image_size`` x ``image_size`` and replicated to 3
    channels.

    Returns:
        images: float32 (1797, 3, image_size, image_size), values in [0, 1].
        labels: int64 (1797,), values 0..9.
    """
    from sklearn.datasets import load_digits
    import torch.nn.functional as F

    if image_size < 1:
        raise ValueError(f"image_size: expected a positive integer, got {image_size}")
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
    y = torch.as_tensor(d.target, dtype=torch.int64)
    return x, y


def load_digits_data(image_size: int = 32, seed: int = 0, val_fraction: float = 0.2) -> TrainData:
    """scikit-learn's digits as a :class:`TrainData`: stratified, seeded split (``val_fraction``
    of each class for validation; 1437/360 for the default 0.2), normalized with the training
    split's mean and standard deviation (one value for the three identical channels).

    Items: image float32 (3, image_size, image_size), label int64 scalar tensor in 0..9.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction: expected a number in (0, 1), got {val_fraction}")
    x, y = digits_tensors(image_size)
    idx = torch.arange(len(y)).numpy()
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed,
                                          stratify=y.numpy(), shuffle=True)
    train_idx = torch.as_tensor(sorted(train_idx))
    val_idx = torch.as_tensor(sorted(val_idx))
    mean = x[train_idx].mean()
    std = x[train_idx].std()
    x = (x - mean) / std
    n_val = len(val_idx)
    return TrainData(
        train=TensorDataset(x[train_idx], y[train_idx]),
        val=TensorDataset(x[val_idx], y[val_idx]),
        classes=[str(i) for i in range(10)],
        source=f"scikit-learn digits (1797 images 8x8 -> {image_size}x{image_size} bilinear, 3 channels)",
        split=f"stratified seeded split, {len(train_idx)} train / {n_val} val",
    )


# ------------------------------------------------------------------------------------------------
# ImageFolder


def _read_image(path: str):
    """ImageFolder's loader, with an error that names the file."""
    from PIL import Image
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), PermissionError, ...
        raise ImageReadError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None


def folder_transform(image_size: int) -> Callable:
    """Resize (shorter side) to ``image_size``, center crop ``image_size`` x ``image_size``, to a
    float32 (3, S, S) tensor in [0, 1], ImageNet normalization.  No random augmentation, so a
    resumed run sees exactly the inputs an uninterrupted one does."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _image_folder(root: str, transform, classes: Optional[Sequence[str]] = None):
    """torchvision ImageFolder over ``root``; with ``classes``, use that class -> index mapping
    (for a val/ folder: the train/ folder's), allowing classes without images."""
    from torchvision.datasets import ImageFolder

    if classes is None:
        try:
            return ImageFolder(root, transform=transform, loader=_read_image)
        except FileNotFoundError as e:
            raise DataError(f"--data {root}: {e}") from None
        except OSError as e:
            raise DataError(f"--data {root}: cannot read the folder ({type(e).__name__}: {e})") from None

    fixed = list(classes)

    class _Fixed(ImageFolder):
        def find_classes(self, directory):
            own = sorted(e.name for e in os.scandir(directory) if e.is_dir())
            extra = [c for c in own if c not in fixed]
            if extra:
                raise DataError(f"--data {directory}: class folder(s) {extra} are not in the training "
                                f"folder's classes {fixed}")
            return fixed, {c: i for i, c in enumerate(fixed)}

    try:
        ds = _Fixed(root, transform=transform, loader=_read_image, allow_empty=True)
    except FileNotFoundError as e:
        raise DataError(f"--data {root}: {e}") from None
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"--data {root}: cannot read the folder ({type(e).__name__}: {e})") from None
    if len(ds) == 0:
        raise DataError(f"--data {root}: no images found (extensions: {', '.join(IMG_EXTENSIONS)})")
    return ds


def load_folder_data(root: str, image_size: int = 32, seed: int = 0, val_fraction: float = 0.2) -> TrainData:
    """An image folder as a :class:`TrainData` (torchvision ``ImageFolder``, one subfolder per class).

    With ``root/train`` and ``root/val`` (both folders), they are the two splits (val uses the
    train folder's class indices).  Otherwise ``root`` itself is split at random with a
    ``torch.Generator`` seeded by ``seed``: ``round(val_fraction * n)`` images (at least 1) for
    validation.  Images are converted to RGB and transformed by :func:`folder_transform`.

    Items: image float32 (3, image_size, image_size), label int.

    Raises:
        DataError: ``root`` missing, not a folder, unreadable, without class folders or images,
            or too few images to split.  Unreadable image files raise :class:`ImageReadError`
            when they are loaded (during training).
    """
    from torch.utils.data import random_split

    if not os.path.exists(root):
        raise DataError(f"--data {root}: no such folder")
    if not os.path.isdir(root):
        raise DataError(f"--data {root}: not a folder (expected an ImageFolder directory)")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"--data {root}: the folder is not readable (permission denied)")
    transform = folder_transform(image_size)
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        train = _image_folder(train_dir, transform)
        val = _image_folder(val_dir, transform, classes=train.classes)
        return TrainData(train, val, list(train.classes), source=f"ImageFolder {root}",
                         split=f"train/ and val/ folders, {len(train)} train / {len(val)} val")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction: expected a number in (0, 1), got {val_fraction}")
    full = _image_folder(root, transform)
    n = len(full)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 1:
        raise DataError(f"--data {root}: {n} image(s) are too few to split off {n_val} for validation "
                        f"(--val-fraction {val_fraction})")
    train, val = random_split(full, [n - n_val, n_val], generator=torch.Generator().manual_seed(seed))
    return TrainData(train, val, list(full.classes), source=f"ImageFolder {root}",
                     split=f"seeded random split (--val-fraction {val_fraction}), {n - n_val} train / {n_val} val")


def dataset_labels(ds: Dataset) -> Optional[Tensor]:
    """The labels of a dataset from this module without loading images (int64 1-D), or None when
    they are not known up front."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    if isinstance(ds, Subset):
        inner = dataset_labels(ds.dataset)
        return None if inner is None else inner[torch.as_tensor(list(ds.indices), dtype=torch.long)]
    targets = getattr(ds, "targets", None)
    if targets is not None:
        return torch.as_tensor(list(targets), dtype=torch.int64)
    return None
