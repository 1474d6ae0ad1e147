"""The micro benchmark's edit worlds behind one interface: what the benchmark needs of a world.

- ``flat`` (:mod:`.world`): 64x64 flat-coloured scenes, VAE factor 4 (micro-ip2p, micro-ip2p-b). A scene can
  be drawn in any frame (the attacker's copy of a 3:2, 16:9 or 4:5 photo) and at any pixel size, so the
  full-size photo of the attacker view is the same scene drawn larger.
- ``textured`` (:mod:`.textures`): the same scenes at 128x128 with texture, VAE factor 8 (proxy-ip2p,
  proxy-ip2p-b). Square frame only. Its full-size photo (``4x-1:1``) is the 128x128 scene upscaled 4x with
  Pillow's Lanczos filter, not a scene drawn at 512x512 (texture has no larger drawing); the ground truth
  stays the 128x128 scene, which the attacker's Lanczos copy of the upscaled photo matches to the resampling
  error only (above 35 dB PSNR; tests/evaluation/test_micro_suite.py).

Each world gives its size, VAE factor and size variants (config.MICRO_WORLDS), its split of edits in a frame,
its success rule, the full-size photo of a scene, and the edits an owner protects one object against.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..config import MICRO_WORLDS
from . import textures, world
from .world import EditSample, Frame, Split, Wordings


class EditWorld:
    """What the benchmark needs of a world; a world's sizes are class attributes."""

    name: str
    size: int               # the editors' size: scenes, ground truth and the attacker's copy
    latent_factor: int      # the editors' VAE factor: frames are multiples of it
    rule: str               # where its success rule is defined (for reports)

    @property
    def size_variants(self) -> tuple[str, ...]:
        return MICRO_WORLDS[self.name][1]

    @property
    def square(self) -> Frame:
        return Frame(self.size, self.size, (0, 0, self.size, self.size))

    def make_split(self, split: Split, n: int, seed: int, wordings: Wordings, frame: Frame) -> list[EditSample]:
        """``n`` edits on scenes of ``split`` (world.make_split's draw) in ``wordings``, drawn in ``frame``."""
        raise NotImplementedError

    def edit_success(self, edit: np.ndarray, sample: EditSample) -> bool:
        """Whether ``edit`` (uint8, the sample's shape) does the sample's edit, by the world's rule."""
        raise NotImplementedError

    def photo(self, seed: int, shape: tuple[int, int], frame: Frame) -> np.ndarray:
        """The full-size photo (``shape`` = (h, w)) of scene ``seed`` whose attacker's copy is ``frame``."""
        raise NotImplementedError

    def edits_of_object(self, sample: EditSample, frame: Frame) -> list[str]:
        """The sample's instruction and one edit of every other kind on its object (world.edits_of_object)."""
        raise NotImplementedError


class FlatWorld(EditWorld):
    """The flat 64x64 micro world, in any frame."""

    name = "flat"
    size = world.SIZE
    latent_factor = world.LATENT_FACTOR
    rule = "micro/world.py"

    def make_split(self, split: Split, n: int, seed: int, wordings: Wordings, frame: Frame) -> list[EditSample]:
        return world.make_split(split, n, seed, wordings=wordings, frame=frame)

    def edit_success(self, edit: np.ndarray, sample: EditSample) -> bool:
        return world.edit_success(edit, sample)[0]

    def photo(self, seed: int, shape: tuple[int, int], frame: Frame) -> np.ndarray:
        """The scene drawn at the photo's size."""
        return world.render_scene(seed, size=shape, frame=frame).image

    def edits_of_object(self, sample: EditSample, frame: Frame) -> list[str]:
        return world.edits_of_object(sample, frame)


class TexturedWorld(EditWorld):
    """The textured 128x128 world: the flat world's scenes and edits with texture, square frame only."""

    name = "textured"
    size = textures.SIZE
    latent_factor = textures.LATENT_FACTOR
    rule = "micro/textures.py"

    def _check(self, frame: Frame) -> None:
        if frame != self.square:
            raise ValueError(f"the textured world is drawn in its {self.size}x{self.size} square frame only, got "
                             f"{frame}")

    def make_split(self, split: Split, n: int, seed: int, wordings: Wordings, frame: Frame) -> list[EditSample]:
        self._check(frame)
        return textures.make_split(split, n, seed, wordings=wordings)

    def edit_success(self, edit: np.ndarray, sample: EditSample) -> bool:
        return textures.edit_success(edit, sample)[0]

    def photo(self, seed: int, shape: tuple[int, int], frame: Frame) -> np.ndarray:
        """The 128x128 textured scene upscaled to ``shape`` (Pillow Lanczos)."""
        self._check(frame)
        if shape[0] != shape[1]:
            raise ValueError(f"the textured world's photos are square, got {shape[0]}x{shape[1]}")
        image = Image.fromarray(textures.render_scene(seed).image)
        return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.LANCZOS))

    def edits_of_object(self, sample: EditSample, frame: Frame) -> list[str]:
        self._check(frame)
        return world.edits_of_object(sample)    # the textured scene's objects are the flat square scene's


WORLDS: dict[str, EditWorld] = {w.name: w for w in (FlatWorld(), TexturedWorld())}


def get(name: str) -> EditWorld:
    """The world called ``name`` (one of config.MICRO_WORLDS)."""
    if name not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)}, got {name!r}")
    return WORLDS[name]
