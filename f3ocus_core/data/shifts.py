"""Per-client image shifts: a fixed transform of every image a client holds, standing for its scanner
or modality (``data.shift``, one value per partition or one for all).

The paper's clients differ by modality (CT, MRI, X-ray, ...), which is where different clients can
need different layers. These transforms make easy-vqa clients (or any task's clients) differ in the
same way from offline data: the client's train and test images both pass through its transform, the
base model and the other clients never see it. Each is deterministic: the same value, data seed,
partition id and image give the same pixels on every node and in every run.

A value is ``name`` or ``name:parameter``:

- ``none``: the image as it is;
- ``invert``: colour inversion, ``255 - x`` per channel;
- ``grey``: grey-scale (ITU-R 601 luma), copied to the three channels;
- ``channels[:order]``: a channel permutation, the new R, G, B named from the old ones (default ``gbr``);
- ``rotate[:degrees]``: rotation counter-clockwise by ``90`` (default), ``180`` or ``270`` degrees (lossless);
- ``blur[:radius]``: Gaussian blur, radius in pixels (default ``2``);
- ``noise[:std]``: additive Gaussian noise, std as a share of 255 (default ``0.1``), clipped to 0..255.

``gray`` is accepted for ``grey``. The noise of an image is drawn from a generator seeded by the
data seed, the partition id and the image's pixels, so it is fixed per client and image, whatever
the order or the caps of the rows. Images come out as RGB (the collate functions convert to RGB
anyway; grey medical images are first copied to three channels).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from itertools import permutations

import datasets
import numpy as np
from PIL import Image, ImageFilter

from f3ocus_core.data import ClientData
from f3ocus_core.errors import ConfigError

#: The shift names (``data.shift`` values before an optional ``:parameter``).
SHIFTS: tuple[str, ...] = ("none", "invert", "grey", "channels", "rotate", "blur", "noise")
_ALIASES = {"gray": "grey"}
_DEFAULTS = {"channels": "gbr", "rotate": "90", "blur": "2", "noise": "0.1"}
_PERMUTATIONS = tuple("".join(p) for p in permutations("rgb"))


@dataclass(frozen=True)
class Shift:
    """One parsed ``data.shift`` value: the transform's name and its parameter (as text, checked)."""

    name: str
    parameter: str = ""

    def __str__(self) -> str:
        return f"{self.name}:{self.parameter}" if self.parameter else self.name


def parse_shift(value: str, key: str = "data.shift") -> Shift:
    """``"rotate:180"`` -> ``Shift("rotate", "180")``; a ``ConfigError`` naming ``key`` if it cannot work."""
    name, _, parameter = value.strip().lower().partition(":")
    name = _ALIASES.get(name, name)
    if name not in SHIFTS:
        raise ConfigError(f"{key}: unknown shift {value!r}; choose from {list(SHIFTS)} (e.g. 'none,invert,grey').")
    if name in ("none", "invert", "grey"):
        if parameter:
            raise ConfigError(f"{key}: {name!r} takes no parameter, got {value!r}.")
        return Shift(name)
    parameter = parameter or _DEFAULTS[name]
    if name == "channels" and (parameter not in _PERMUTATIONS or parameter == "rgb"):
        raise ConfigError(
            f"{key}: {value!r}: the channel order must be a permutation of 'rgb' other than 'rgb', "
            f"e.g. {[p for p in _PERMUTATIONS if p != 'rgb']}."
        )
    if name == "rotate" and parameter not in ("90", "180", "270"):
        raise ConfigError(f"{key}: {value!r}: rotate takes 90, 180 or 270 (degrees counter-clockwise).")
    if name in ("blur", "noise"):
        try:
            amount = float(parameter)
        except ValueError:
            amount = float("nan")
        if not amount > 0:
            raise ConfigError(
                f"{key}: {value!r}: the {name} {'radius' if name == 'blur' else 'std'} must be a number > 0."
            )
    return Shift(name, parameter)


def shift_image(image: Image.Image, shift: Shift, seed: int = 0) -> Image.Image:
    """``image`` through ``shift`` (an RGB image); ``seed`` seeds the noise together with the pixels."""
    rgb = image.convert("RGB")
    if shift.name == "none":
        return rgb
    if shift.name == "invert":
        return Image.fromarray(255 - np.asarray(rgb))
    if shift.name == "grey":
        return rgb.convert("L").convert("RGB")
    if shift.name == "channels":
        order = ["rgb".index(channel) for channel in shift.parameter]
        return Image.fromarray(np.ascontiguousarray(np.asarray(rgb)[:, :, order]))
    if shift.name == "rotate":
        turn = {"90": Image.Transpose.ROTATE_90, "180": Image.Transpose.ROTATE_180, "270": Image.Transpose.ROTATE_270}[
            shift.parameter
        ]
        return rgb.transpose(turn)
    if shift.name == "blur":
        return rgb.filter(ImageFilter.GaussianBlur(float(shift.parameter)))
    pixels = np.asarray(rgb)
    rng = np.random.default_rng([int(seed) % 2**32, zlib.crc32(pixels.tobytes())])
    noisy = pixels + rng.normal(0.0, float(shift.parameter) * 255.0, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def shift_dataset(dataset: datasets.Dataset, shift: Shift, seed: int = 0) -> datasets.Dataset:
    """Every ``image`` of ``dataset`` through ``shift`` (kept in memory; the other columns unchanged)."""
    if shift.name == "none":
        return dataset

    def apply(row: dict) -> dict:
        return {"image": shift_image(row["image"], shift, seed)}

    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return dataset.map(apply, keep_in_memory=True)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def shift_client(data: ClientData, shift: Shift, seed: int, partition_id: int) -> ClientData:
    """``data`` with the train and test images of this client through ``shift`` (noise seeded by
    ``seed`` and ``partition_id``)."""
    if shift.name == "none":
        return data
    client_seed = (int(seed) * 1_000_003 + int(partition_id)) % 2**32
    return replace(
        data, train=shift_dataset(data.train, shift, client_seed), test=shift_dataset(data.test, shift, client_seed)
    )
