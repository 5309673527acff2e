"""Dataset labels -> a class-conditional teacher's class ids: the ``class_label_map`` of a teacher."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from repfusion_pl.teachers.family import TeacherFamily


class MissingClassLabelMapError(ValueError):
    """A class-conditional teacher without a null class was given no ``class_label_map``."""


def read_class_label_map(
    value: dict[int, int] | str | None, class_names: Sequence[str] | str | None = None
) -> dict[int, int] | None:
    """A ``class_label_map`` as a dict of dataset label -> teacher class id.

    Args:
        value: The map inline, or the path of a JSON object whose keys are dataset labels
            (integers) or class names (such as WordNet ids, as in
            ``configs/paper/tinyimagenet-to-imagenet.json``).
        class_names: For a map keyed by names: the dataset's class names in label order, as a list
            or the path of a text file with one name per line (e.g. Tiny-ImageNet's ``wnids.txt``).
    """
    if value is None or isinstance(value, dict):
        mapping = {int(k): int(v) for k, v in value.items()} if value else None
        if mapping and min(mapping) < 0:
            raise ValueError(
                f"class_label_map has negative dataset labels {sorted(k for k in mapping if k < 0)}"
            )
        return mapping
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class_label_map file {value!r} does not exist")
    entries = json.loads(path.read_text())
    if not isinstance(entries, dict) or not all(isinstance(v, int) for v in entries.values()):
        raise ValueError(f"class_label_map file {path} must hold one JSON object of label -> class id")
    if all(key.lstrip("-").isdigit() for key in entries):
        return read_class_label_map(entries)
    if class_names is None:
        raise ValueError(
            f"class_label_map file {path} is keyed by class names; set `class_names` to the dataset's "
            "class names in label order (a list, or a file with one per line such as Tiny-ImageNet's "
            "wnids.txt)"
        )
    names = read_class_names(class_names)
    if unknown := [name for name in names if name not in entries]:
        raise ValueError(f"class_label_map file {path} has no entry for the classes {unknown[:5]}")
    return {label: entries[name] for label, name in enumerate(names)}


def read_class_names(class_names: Sequence[str] | str) -> list[str]:
    """Class names in label order: a list as given, or read from a file with one name per line."""
    if not isinstance(class_names, str):
        return list(class_names)
    path = Path(class_names).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class_names file {class_names!r} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def check_class_conditioning(source: str, family: TeacherFamily, label_map: dict[int, int] | None) -> None:
    """Refuse a map for an unconditional teacher, a missing map where one is needed, unknown classes."""
    num_classes = family.num_classes
    if num_classes is None:
        if label_map:
            raise ValueError(f"teacher {source!r} is not class-conditional; remove `class_label_map`")
        return
    if not label_map and family.null_class is None:
        raise MissingClassLabelMapError(
            f"teacher {source!r} is class-conditional ({num_classes} classes); set "
            "`class_label_map` to map each dataset label to the teacher's class id. Feeding "
            "dataset labels unmapped silently conditions on the wrong classes."
        )
    if bad := sorted({c for c in (label_map or {}).values() if not 0 <= c < num_classes}):
        raise ValueError(
            f"class_label_map maps onto teacher classes {bad[:5]}, outside the teacher's 0..{num_classes - 1}"
        )


def label_table(label_map: dict[int, int] | None) -> Tensor:
    """The map as a lookup table indexed by dataset label (-1 where a label has no entry)."""
    table = torch.full((max(label_map or {0: 0}) + 1,), -1, dtype=torch.long)
    for label, teacher_class in (label_map or {}).items():
        table[label] = teacher_class
    return table


def map_labels(
    table: Tensor, has_map: bool, labels: Tensor | None, family: TeacherFamily, batch_size: int
) -> Tensor:
    """Teacher class ids for a batch: mapped through ``table``, or the null class when there is no map."""
    if not has_map:
        return torch.full((batch_size,), int(family.null_class), device=table.device)  # type: ignore[arg-type]
    if labels is None:
        raise ValueError("this teacher is class-conditional: the batch must carry labels")
    known = (labels >= 0) & (labels < table.numel())
    mapped = torch.where(known, table[labels.clamp(0, table.numel() - 1)], -1)
    if (mapped < 0).any():
        missing = sorted(set(labels[mapped < 0].tolist()))
        null = " (or, for a DiT, leave the map out to condition on its null class)" * (
            family.null_class is not None
        )
        raise ValueError(
            f"dataset labels {missing} have no entry in class_label_map; map every label of the "
            f"dataset to a teacher class{null}"
        )
    return mapped
