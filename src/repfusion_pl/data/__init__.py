"""Data modules. None downloads anything: embedded data, or datasets already on disk."""

from repfusion_pl.data.celebamask import CelebAMaskHQDataModule
from repfusion_pl.data.cifar10 import CIFAR10DataModule
from repfusion_pl.data.digits import DigitsDataModule
from repfusion_pl.data.fashion_mnist import FashionMNISTDataModule
from repfusion_pl.data.hf_images import HFImageDataModule
from repfusion_pl.data.image_folder import ImageFolderDataModule
from repfusion_pl.data.shapes import ShapesDataModule
from repfusion_pl.data.streaming import StreamingImageDataModule
from repfusion_pl.data.tiny_imagenet import TinyImageNetDataModule
from repfusion_pl.data.wflw import WFLWDataModule

__all__ = [
    "CIFAR10DataModule",
    "CelebAMaskHQDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "HFImageDataModule",
    "ImageFolderDataModule",
    "ShapesDataModule",
    "StreamingImageDataModule",
    "TinyImageNetDataModule",
    "WFLWDataModule",
]
