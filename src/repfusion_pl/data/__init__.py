"""Data modules. None downloads anything: embedded data, or datasets already on disk."""

from repfusion_pl.data.classification import CIFAR10DataModule, ImageFolderDataModule, TinyImageNetDataModule
from repfusion_pl.data.digits import DigitsDataModule

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "ImageFolderDataModule", "TinyImageNetDataModule"]
