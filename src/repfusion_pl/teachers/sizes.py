"""The image sizes a teacher takes: sides its levels can halve, the size it was set up for, its training size.

A size the architecture cannot take is an error. A size it can take but was not trained at (the
digits teacher of 16 px fed 12 px images) runs, but its features there are off the distribution it
learnt: that is said once per teacher, on rank zero, naming both sizes.
"""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn

from repfusion_pl.teachers.family import TeacherFamily


def check_batch_size(source: str, family: TeacherFamily, sample_size: int, size: tuple[int, int]) -> None:
    """Refuse a batch whose sides the teacher cannot take (a latent teacher: only its ``image_size``)."""
    multiple = family.size_multiple
    latent = family.name != "pixel_unet"
    # Latent teachers' features and projectors are sized for image_size; pixel UNets take any multiple.
    if any(side % multiple for side in size) or (latent and size != (sample_size,) * 2):
        raise ValueError(
            f"teacher {source!r} ({family.name}) was set up for {sample_size} px images "
            f"(sides a multiple of {multiple}) but the batch is {size[0]}x{size[1]}; set the teacher's "
            "image_size and the data module's image size to the same value"
        )


class OffSizeWarning(UserWarning):
    """A teacher fed images of another size than it was trained at."""


def warn_if_off_size(source: str, family: TeacherFamily, size: tuple[int, int]) -> bool:
    """Warn (on rank zero) when ``size`` is not the teacher's training size; return whether it is not."""
    native = family.native_image_size
    if size == (native, native):
        return False
    rank_zero_warn(
        f"teacher {source!r} was trained on {native}x{native} images but is fed {size[0]}x{size[1]}: its "
        f"features there are off the distribution it learnt. Give the data {native} px images (e.g. "
        f"data.init_args.image_size: {native}; for a latent teacher also its image_size), or use a teacher "
        "trained at this size.",
        category=OffSizeWarning,
    )
    return True
