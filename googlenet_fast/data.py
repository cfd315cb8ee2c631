"""Images for the main job: scikit-image's bundled sample photos or the user's own files,
preprocessed the ImageNet way (Resize 256, CenterCrop 224, ToTensor, Normalize).

Only photos that ship inside the scikit-image wheel are used (no download, works offline):
every one is loaded lazily and any that fails to load is skipped.
"""
import os
from typing import Iterable, List, Sequence, Tuple

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# RGB photographs bundled in the scikit-image wheel (skimage/data/*.png|jpg); the gray, binary,
# synthetic and download-only images (lily, skin, kidney, eagle, cells3d, ...) are left out.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "stereo_motorcycle")


class ImageLoadError(ValueError):
    """A path given with --images is missing, empty or unreadable (the message names it)."""


def imagenet_transform(resize: int = 256, crop: int = 224):
    """torchvision's ImageNet evaluation transform: PIL image -> normalized (3, crop, crop) float."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(resize),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def sample_photos() -> List[Tuple[str, "PIL.Image.Image"]]:  # noqa: F821
    """scikit-image's bundled RGB sample photos as (name, RGB PIL image), those that load offline."""
    from PIL import Image
    try:
        import skimage.data
    except ImportError as e:
        raise ImageLoadError("the default photos come from scikit-image, which is not installed "
                             "(pip install scikit-image), or pass your own with --images PATH") from e
    photos = []
    for name in SAMPLE_PHOTOS:
        fn = getattr(skimage.data, name, None)
        if fn is None:
            continue
        try:
            arr = fn()
        except Exception:  # needs a download (pooch) or a missing data file: skip it
            continue
        if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
            arr = arr[0]
        if getattr(arr, "ndim", 0) != 3 or arr.shape[2] not in (3, 4) or str(arr.dtype) != "uint8":
            continue
        photos.append((name, Image.fromarray(arr[..., :3])))
    if not photos:
        raise ImageLoadError("none of scikit-image's sample photos could be loaded "
                             f"({', '.join(SAMPLE_PHOTOS)}); pass your own with --images PATH")
    return photos


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageLoadError(f"--images: cannot read {path!r} as an image: {e}") from e


def _expand(paths: Iterable[str]) -> List[str]:
    files = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(p, f)))
            if not found:
                raise ImageLoadError(f"--images: folder {p!r} holds no image files "
                                     f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif os.path.isfile(p):
            files.append(p)
        elif os.path.exists(p):
            raise ImageLoadError(f"--images: {p!r} is neither a file nor a folder")
        else:
            raise ImageLoadError(f"--images: {p!r} does not exist")
    if not files:
        raise ImageLoadError("--images: expected at least one image file or folder")
    return files


def load_images(paths: Sequence[str]) -> List[Tuple[str, "PIL.Image.Image"]]:  # noqa: F821
    """The user's images as (file name, RGB PIL image); ``paths`` are files or folders
    (a folder contributes its image files, sorted, not recursively).

    Raises ImageLoadError naming the path for a missing path, a folder without images, or a file
    PIL cannot read.
    """
    return [(os.path.basename(f), _open_image(f)) for f in _expand(paths)]


def preprocess(images: Sequence[Tuple[str, object]], resize: int = 256, crop: int = 224) -> Tensor:
    """Stack the images into one normalized float32 (N, 3, crop, crop) batch (NCHW, contiguous)."""
    tf = imagenet_transform(resize, crop)
    return torch.stack([tf(im) for _, im in images])


def fill_batch(x: Tensor, batch_size: int) -> Tensor:
    """The first ``batch_size`` images of ``x``, repeating ``x`` cyclically when it holds fewer."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    n = x.shape[0]
    if batch_size <= n:
        return x[:batch_size].clone()
    reps = -(-batch_size // n)
    return x.repeat(reps, 1, 1, 1)[:batch_size].clone()
