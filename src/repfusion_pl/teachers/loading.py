"""Load a resolved teacher source as its family (the one place that knows every family)."""

from __future__ import annotations

from pathlib import Path

from repfusion_pl.teachers.family import TeacherFamily
from repfusion_pl.teachers.latent import LatentDiT, LatentUNet
from repfusion_pl.teachers.pixel import PixelUNet
from repfusion_pl.teachers.sources import EXPECTED_LAYOUTS, Family


def load_family(path: Path, family: Family, prompt: str | None) -> TeacherFamily:
    """Load a resolved source as the given family (see `repfusion_pl.teachers.sources.detect_family`)."""
    if family == "pixel_unet":
        if prompt is not None:
            raise ValueError(f"teacher {path} is a pixel UNet without text conditioning; remove `prompt`")
        return PixelUNet.load(path)
    if family == "latent_unet":
        return LatentUNet.load(path, "" if prompt is None else prompt)
    if family == "dit":
        if prompt is not None:
            raise ValueError(
                f"teacher {path} is a class-conditional DiT, not text-conditioned; remove `prompt`"
            )
        return LatentDiT.load(path)
    raise ValueError(f"unknown teacher family {family!r}; {EXPECTED_LAYOUTS}")
