"""What ``repfusion`` prints when a run cannot start or stops: one message with the fix, no traceback.

jsonargparse reports a class that fails to build inside a "Does not validate against any of the
Union subtypes" dump, with the component's own message buried inside; a data-loader worker's error
arrives wrapped in "Caught ... in DataLoader worker process" with the worker's traceback. Both are
turned back into the message the component raised, and a configuration key to look at.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any


class ConfigBuildError(ValueError):
    """A class named in the configuration raised while being built; the message is its own."""


def _error_blocks(text: str) -> list[str]:
    """The entries of jsonargparse's ``Errors:`` list, each de-indented, in order."""
    if "\nErrors:\n" not in text:
        return []
    body = text.split("\nErrors:\n", 1)[1].split("\nGiven value type:", 1)[0]
    blocks: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith("  - "):
            blocks.append([line[4:]])
        elif blocks and line.startswith("    "):
            blocks[-1].append(line[4:])
    return ["\n".join(block) for block in blocks]


def _key_of(config: Any, class_path: str, prefix: str = "") -> str | None:
    """The dotted config key whose block names ``class_path`` (``model``, ``trainer.callbacks[1]``, ...)."""
    if isinstance(config, dict):
        if config.get("class_path") == class_path:
            return prefix or "(top level)"
        for key, value in config.items():
            found = _key_of(value, class_path, f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
    if isinstance(config, list):
        for index, value in enumerate(config):
            found = _key_of(value, class_path, f"{prefix}[{index}]")
            if found:
                return found
    return None


def build_error(err: BaseException, config: dict) -> ConfigBuildError:
    """The error for a class of the configuration that failed to build: its own message and its key."""
    text = str(err)
    reasons = [
        block for block in _error_blocks(text) if not block.startswith("Expected a <class 'NoneType'>")
    ]
    match = re.search(r"class_path='([\w.]+)'", text)
    where = ""
    if match:
        key = _key_of(config, match.group(1))
        where = f" {key} ({match.group(1)})" if key else f" {match.group(1)}"
    message = "\n".join(reasons) if reasons else text.splitlines()[0] if text else type(err).__name__
    return ConfigBuildError(f"cannot build{where} from the configuration:\n{message}")


def unwrap_worker_error(err: BaseException) -> BaseException:
    """A data-loader worker's exception as the worker raised it (the same message as with no workers)."""
    text = str(err)
    if "in DataLoader worker process" not in text or "Original Traceback" not in text:
        return err
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    prefix = f"{type(err).__name__}: "
    message = last.split(prefix, 1)[1] if prefix in last else last
    try:
        return type(err)(message)
    except TypeError:  # an exception type whose constructor wants more than a message
        return RuntimeError(message)


#: Modules whose classes a config usually names; near matches for a mistyped class_path come from them.
CLASS_PATH_MODULES = (
    "repfusion_pl",
    "repfusion_pl.data",
    "repfusion_pl.tasks",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
)


def _known_class_paths() -> list[str]:
    paths = []
    for name in CLASS_PATH_MODULES:
        module = importlib.import_module(name)
        paths += [f"{name}.{attr}" for attr, value in vars(module).items() if inspect.isclass(value)]
    return paths


def config_error_hint(message: str) -> str:
    """How to fix a config error: near matches for an unknown class_path, else where to see the schema."""
    hints = []
    known = _known_class_paths()
    for path in dict.fromkeys(re.findall(r"class_path '([\w.]+)'", message)):
        if path in known:
            continue
        close = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
        close = close or difflib.get_close_matches(
            path.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in known], n=3, cutoff=0.6
        )
        if close:
            hints.append(f"unknown class_path {path!r}: did you mean {' or '.join(map(repr, close))}?")
        else:
            hints.append(
                f"unknown class_path {path!r}: give an importable class, e.g. repfusion_pl.FixedTimestep"
            )
    hints.append(
        "Every accepted key, its type and default: repfusion fit --config <your.yaml> --print_config "
        "(or --help)."
    )
    return "How to fix:\n" + "\n".join(f"  - {hint}" for hint in hints)
