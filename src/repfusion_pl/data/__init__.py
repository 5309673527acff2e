"""Data modules. Embedded defaults need no download."""

from repfusion_pl.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
