"""Data for quantization: calibration samples for static schemes and the evaluation set accuracy is measured on.

Both accept the same sources (`--calibration`, `--eval-data`):
  - a `.npz` with one array per input name, samples (or rows of a batch) along axis 0;
  - a folder of `.npy` files (single-input models; each file a sample or a batch), or of images
    (`.png`/`.jpg`/`.bmp`, single image input) read and put through the model's preprocessing;
  - a `module:attr` or `file.py:attr` callable yielding batches: dicts of input name -> array, or
    bare arrays for a single-input model, split into samples along axis 0.
The demo model ships its own calibration and held-out evaluation splits.
From Python (edgepack.api), the data may also be the batches themselves: a DataLoader or any iterable of
batches (dicts, arrays or tensors, or tuples whose first items are the inputs in order: `(x, label)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..datafiles import read_npy, read_npz
from ..errors import UsageError
from ..inputs import InputSpec
from ..load import LoadedModel, resolve_reference
from ..paths import missing_file_text
from ..user_code import at_line, items_from_callable

Samples = list[dict[str, torch.Tensor]]
# A file, folder or `module:attr` reference, or (from Python) an iterable of batches.
DataSource = str | Iterable[Any]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_MAX_IMAGE_PIXELS = 64_000_000


def load_samples(
    source: DataSource, loaded: LoadedModel, search_dir: Path | None = None, option: str = "--calibration"
) -> Samples:
    """Samples shaped like the model's inputs (one dict per sample), from any of the supported sources."""
    specs = loaded.inputs
    if not isinstance(source, str):
        return _from_batches(_user_batches(source, specs, option), specs, f"{option} ({describe(source)})")
    path = Path(source).expanduser()
    if source.endswith(".npz"):
        if not path.is_file():
            raise UsageError(f"{option} file '{source}' {missing_file_text(path)}.", f"Check the {option} path.")
        return _from_batches([read_npz(path, option)], specs, f"{option} {source}")
    if path.is_dir():
        return _from_folder(path, loaded, option)
    if ":" not in source:
        raise UsageError(
            f"{option} '{source}' is not a .npz file, a folder or a module:attr callable.",
            f"Give {option} a .npz (one array per input), a folder of .npy files or images, "
            "or a callable yielding batches.",
        )
    factory = resolve_reference(source, search_dir or Path.cwd())
    if not callable(factory):
        raise UsageError(
            f"{option} '{source}' is not callable.", "Point it at a function yielding batches (dicts of arrays)."
        )
    return _from_batches(items_from_callable(factory, source, option), specs, f"{option} {source}")


def describe(source: DataSource) -> str:
    """How reports name the data: the reference as given, or the kind of object (never its address,
    which would differ between two otherwise identical builds)."""
    return source if isinstance(source, str) else f"a {type(source).__name__} of batches"


def _user_batches(source: Iterable[Any], specs: list[InputSpec], option: str) -> list[Any]:
    """The batches of an iterable the caller passed, as dicts or bare arrays; `(x, label)` tuples keep
    their first len(specs) items (the inputs, in order). One array, tensor or dict is one batch."""
    if isinstance(source, (torch.Tensor, np.ndarray, dict)):
        source = [source]
    if isinstance(source, bytes) or not isinstance(source, Iterable):
        raise UsageError(
            f"{option} is a {type(source).__name__}, not a path, a module:attr reference or an iterable of batches.",
            f"Give {option} a DataLoader, a list of batches (dicts of input name -> array, or arrays), or a path.",
        )
    batches = []
    try:
        for batch in source:
            if isinstance(batch, (tuple, list)):
                if len(batch) < len(specs):
                    raise UsageError(
                        f"{option}: a batch holds {len(batch)} item(s), fewer than the model's {len(specs)} input(s).",
                        "Yield the inputs first, in forward's order (labels after them are ignored).",
                    )
                batch = dict(zip([s.name for s in specs], batch[: len(specs)]))
            batches.append(_as_arrays(batch))
    except UsageError:
        raise
    except Exception as exc:  # the user's dataset or loader failed while iterating
        raise UsageError(
            f"{option}: iterating over it raised {type(exc).__name__}: {exc}{at_line(exc)}",
            f"Fix the data you passed as {option}.",
        ) from exc
    return batches


def _as_arrays(batch: Any) -> Any:
    """Tensors (on any device) become arrays; everything else is left for _from_batches to judge."""
    if isinstance(batch, dict):
        return {name: _as_arrays(value) for name, value in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.detach().cpu().numpy()
    return batch


def demo_split(loaded: LoadedModel, split: str) -> Samples | None:
    """The demo model's shipped split ('calib' or 'eval'), one sample per image; None for other models."""
    if loaded.source.get("kind") != "builtin-demo":
        return None
    from .. import demo

    images, _ = demo.load_split(split)
    return [{demo.INPUT_NAME: images[i : i + 1]} for i in range(len(images))]


def _from_batches(batches: Iterable[Any], specs: list[InputSpec], where: str) -> Samples:
    samples: Samples = []
    for index, batch in enumerate(batches):
        if not isinstance(batch, dict):
            if len(specs) != 1:
                raise UsageError(
                    f"{where}: batch {index} is a {type(batch).__name__}, not a dict of input name -> array.",
                    f"Yield dicts with keys {', '.join(s.name for s in specs)}.",
                )
            batch = {specs[0].name: batch}
        samples += _split_batch(batch, specs, f"{where} batch {index}")
    if not samples:
        raise UsageError(f"{where} holds no samples.", "Give at least one sample per input.")
    return samples


def _split_batch(batch: dict, specs: list[InputSpec], where: str) -> Samples:
    """A batch dict -> samples with each spec's shape. An array has one more axis than the spec
    (samples of the full shape) or the spec's rank with a batch of rows where the spec's batch is 1."""
    missing = [s.name for s in specs if s.name not in batch]
    if missing:
        raise UsageError(
            f"{where} has no array for input(s) {', '.join(missing)} (it has {', '.join(map(str, batch))}).",
            "Give one array per input name, samples along axis 0.",
        )
    per_input = {s.name: _as_samples(np.asarray(batch[s.name]), s, where) for s in specs}
    counts = {len(v) for v in per_input.values()}
    if len(counts) != 1:
        raise UsageError(
            f"{where}: inputs have different sample counts {sorted(counts)}.",
            "Give every input the same number of samples.",
        )
    return [{name: tensors[i] for name, tensors in per_input.items()} for i in range(counts.pop())]


def _as_samples(array: np.ndarray, spec: InputSpec, where: str) -> list[torch.Tensor]:
    rank = len(spec.shape)
    if array.ndim == rank + 1:
        parts = [array[i] for i in range(len(array))]
    elif array.ndim == rank and spec.shape[0] == 1:
        parts = [array[i : i + 1] for i in range(len(array))]
    else:
        raise UsageError(
            f"{where}: input '{spec.name}' has shape {list(array.shape)}; expected samples of {list(spec.shape)} "
            "stacked along a new axis 0, or a batch of rows along axis 0.",
            "Fix the array's shape.",
        )
    for part in parts[:1]:
        if not spec.accepts_shape(part.shape):
            raise UsageError(
                f"{where}: input '{spec.name}' sample shape {list(part.shape)} differs from {list(spec.shape)} "
                "(only dimensions declared dynamic may differ).",
                "Fix the array's shape.",
            )
    samples = [torch.as_tensor(np.ascontiguousarray(p)).to(spec.torch_dtype) for p in parts]
    for sample in samples:
        spec.check_finite(sample, where)
    return samples


def _from_folder(folder: Path, loaded: LoadedModel, option: str) -> Samples:
    specs = loaded.inputs
    if len(specs) != 1:
        raise UsageError(
            f"{option} folder '{folder}' can only feed a single-input model (this one has {len(specs)}).",
            "Use a .npz with one array per input name, or a callable yielding dicts.",
        )
    arrays = sorted(folder.glob("*.npy"))
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if arrays:
        return _from_batches((read_npy(p, option) for p in arrays), specs, f"{option} {folder}")
    if images:
        spec = specs[0]
        batch = torch.cat([_image_sample(p, spec, loaded.preprocessing or {}) for p in images])
        return _from_batches([batch.numpy()], specs, f"{option} {folder}")
    raise UsageError(
        f"{option} folder '{folder}' has no .npy files or images.",
        f"Put .npy files or {'/'.join(IMAGE_SUFFIXES)} images in it.",
    )


def _image_sample(path: Path, spec: InputSpec, preprocessing: dict) -> torch.Tensor:
    """One image -> a (1, C, H, W) float tensor: the model's preprocessing (scale, resize, mean, std)
    when it declares one, else pixel values / 255 resized to the input's size."""
    try:
        from PIL import Image
    except ImportError as exc:  # pillow is a dependency; this is a broken installation
        raise UsageError("Reading images needs Pillow.", "pip install pillow") from exc
    if len(spec.shape) != 4 or spec.is_integer:
        raise UsageError(
            f"Images can only feed a float (N, C, H, W) input; '{spec.name}' is {spec}.", "Use .npy files instead."
        )
    channels, height, width = spec.shape[1:]
    try:
        with Image.open(path) as image:
            if image.size[0] * image.size[1] > _MAX_IMAGE_PIXELS:  # checked before decoding: no decompression bomb
                raise UsageError(
                    f"Image {path} is {image.size[0]}x{image.size[1]} pixels, over edgepack's limit of "
                    f"{_MAX_IMAGE_PIXELS:,}.",
                    "Resize the calibration images to about the model's input size.",
                )
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # what Pillow raises on junk
        raise UsageError(
            f"Image {path} cannot be read: {type(exc).__name__}: {str(exc)[:200]}",
            "Give image files Pillow can open (PNG, JPEG, BMP), or .npy arrays.",
        ) from exc
    x = torch.from_numpy(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)).permute(2, 0, 1).unsqueeze(0)
    x = x * float(preprocessing.get("scale", 1.0 / 255.0))
    x = F.interpolate(
        x,
        size=(height, width),
        mode=preprocessing.get("resize_mode", "bilinear"),
        align_corners=preprocessing.get("align_corners", False),
    )
    return (x - float(preprocessing.get("mean", 0.0))) / float(preprocessing.get("std", 1.0))
