"""configs/paper/tinyimagenet-to-imagenet.json: the Tiny-ImageNet wnid -> ImageNet-1k class index map."""

from __future__ import annotations

import json
import re
from pathlib import Path

MAP_FILE = Path(__file__).resolve().parents[1] / "configs" / "paper" / "tinyimagenet-to-imagenet.json"

# Verified against timm's imagenet_synsets.txt and a Keras imagenet_class_index.json (see the .md file).
ANCHORS = {
    "n01443537": 1,  # goldfish
    "n01629819": 25,  # European fire salamander
    "n02085620": 151,  # Chihuahua
    "n02124075": 285,  # Egyptian cat
    "n02504458": 386,  # African elephant
    "n07920052": 967,  # espresso
    "n12267677": 988,  # acorn
}


def load_pairs() -> list[tuple[str, int]]:
    return json.loads(MAP_FILE.read_text(), object_pairs_hook=list)


def test_two_hundred_sorted_distinct_wnids() -> None:
    keys = [key for key, _ in load_pairs()]
    assert len(keys) == 200
    assert len(set(keys)) == 200
    assert keys == sorted(keys)
    assert all(re.fullmatch(r"n\d{8}", key) for key in keys)


def test_values_are_distinct_imagenet_indices() -> None:
    values = [value for _, value in load_pairs()]
    assert all(type(value) is int and 0 <= value <= 999 for value in values)
    assert len(set(values)) == 200


def test_anchor_entries() -> None:
    mapping = dict(load_pairs())
    for wnid, index in ANCHORS.items():
        assert mapping[wnid] == index, wnid
