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


_PARSER_KEY = re.compile(r'^(\s*)(?:- )?Parser key "([^"]+)":\s*(.*)$')
_TYPE_NAME = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")


def _type_names(text: str) -> list[str]:
    """``<class 'int'>, <class 'NoneType'>`` -> ``["int", "None"]``."""
    return [{"NoneType": "None"}.get(name, name) for name in _TYPE_NAME.findall(text)]


_CLASS_PROBLEM = re.compile(r"^(\s*)- Problem with given class_path '([\w.]+)':\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], at: int) -> list[str]:
    """The lines indented under ``lines[at]``."""
    block = []
    for line in lines[at + 1 :]:
        if _indent(line) <= _indent(lines[at]):
            break
        block.append(line)
    return block


def _full_key(lines: list[str], keys: list[tuple[int, int, str]], at: int, depth: int) -> list[str]:
    """The dotted key of the report at line ``at``: the parser keys above it, through ``init_args``."""
    path: list[str] = []
    for i, other_indent, other_key in reversed([k for k in keys if k[0] < at]):
        if other_indent < depth:
            through_class = "Problem with given class_path" in "\n".join(lines[i:at])
            path.insert(0, f"{other_key}.init_args" if through_class else other_key)
            at, depth = i, other_indent
    return path


def _class_problem(lines: list[str], keys: list[tuple[int, int, str]]) -> str | None:
    """A class named in a Union that failed with a message of its own (a missing argument, ...)."""
    leaf = max(keys, key=lambda k: k[1])[1] if keys else -1
    for at, line in enumerate(lines):
        match = _CLASS_PROBLEM.match(line)
        block = _block(lines, at) if match else []
        if not match or not block or any(_PARSER_KEY.match(b) for b in block) or _indent(line) < leaf:
            continue
        key = ".".join(_full_key(lines, keys, at, _indent(line)))
        message = " ".join(b.strip() for b in block)
        return f"{key} ({match.group(2)}): {message}"
    return None


def parse_error_summary(text: str) -> str | None:
    """Jsonargparse's report of one bad value as one line: the full key, the value given, what it accepts.

    jsonargparse nests a wrong value's report inside every Union and class it passes through
    ("Does not validate against any of the Union subtypes", one level per component). The deepest
    ``Parser key`` is the value at fault; the keys above it, joined through the ``init_args`` of the
    classes in between, give its full key. A class of a Union that failed with its own message (a
    required argument left out) is reported as that message. Returns ``None`` for other shapes.
    """
    lines = text.splitlines()
    keys = [
        (i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines) if (m := _PARSER_KEY.match(line))
    ]
    if not keys:
        return None
    if problem := _class_problem(lines, keys):
        return problem
    leaf, indent, key = max(keys, key=lambda k: (k[1], -k[0]))
    path = [*_full_key(lines, keys, leaf, indent), key]
    block = [lines[leaf], *_block(lines, leaf)]
    accepted = next((_type_names(line) for line in block if "Subtypes:" in line), None)
    accepted = accepted or _type_names(next((line for line in block if "Expected a" in line), ""))
    given = next((line.split("Given value:", 1)[1].strip() for line in block if "Given value:" in line), None)
    got = next((line.split("Got value:", 1)[1].strip() for line in block if "Got value:" in line), None)
    value = given if given is not None else got
    if value is None or not accepted:
        return None
    said = f"{'.'.join(path)}: given {value!r}, which is not {' or '.join(accepted)}"
    if value in ("None", "null") and "None" in accepted:
        said += (
            f". A null given on the command line inside a component arrives as the text {value!r} (a "
            f"jsonargparse limitation): write `{path[-1]}: null` in a YAML file and add it with another "
            "--config"
        )
    return said


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
