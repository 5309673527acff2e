"""Feature taps: read named intermediate outputs of any ``nn.Module`` and stop its forward early.

Teacher and student both use this. Forward hooks capture the outputs of the tapped modules; once
every tap has fired, the hook raises a private exception that unwinds the rest of the forward, so
nothing after the deepest tapped layer (a UNet's whole decoder, a ResNet's pooling and head) is run.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import Tensor, nn


class _AllTapsFired(Exception):
    """Raised inside a forward hook once every tapped module has produced its output."""


def resolve_module(model: nn.Module, path: str, *, owner: str = "model") -> nn.Module:
    """Return the submodule at a dotted path, or fail with the nearest valid paths.

    Args:
        model: The module to search.
        path: Dotted module path as printed by ``model.named_modules()``.
        owner: What the model is, for the error message (``"teacher"``, ``"student"``).

    Raises:
        ValueError: If no submodule has that path; the message lists the closest names.
    """
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    names = [name for name in modules if name]
    near = difflib.get_close_matches(path, names, n=6, cutoff=0.5)
    hint = ", ".join(repr(n) for n in near) if near else "(none close; print model.named_modules() to browse)"
    raise ValueError(f"{owner} has no layer {path!r}. Nearest valid layer paths: {hint}")


class FeatureTaps:
    """Capture the outputs of named submodules during a forward pass.

    Args:
        model: The module to tap.
        paths: Dotted module paths; each must name a module that runs once per forward.
        owner: What the model is, for error messages.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], *, owner: str = "model") -> None:
        if not paths:
            raise ValueError(f"{owner}: give at least one layer path to tap")
        if len(set(paths)) != len(paths):
            raise ValueError(f"{owner}: tapped layer paths must be distinct, got {list(paths)}")
        self.paths = list(paths)
        self._captured: dict[str, Tensor] | None = None
        self._stop_early = False
        for path in self.paths:
            resolve_module(model, path, owner=owner).register_forward_hook(self._make_hook(path))

    def _make_hook(self, path: str):
        def hook(module: nn.Module, args: object, output: Tensor) -> None:
            captured = self._captured
            if captured is None:  # a forward outside `run`: behave like an untapped model
                return
            captured[path] = output
            if self._stop_early and len(captured) == len(self.paths):
                raise _AllTapsFired

        return hook

    def run(self, forward, *args: object, stop_early: bool = True, **kwargs: object) -> dict[str, Tensor]:
        """Call ``forward(*args, **kwargs)`` and return the tapped outputs by path.

        Args:
            forward (Callable): The callable to run, usually the tapped model itself.
            *args: Positional arguments for ``forward``.
            stop_early: Abort the forward as soon as every tap has fired.
            **kwargs: Keyword arguments for ``forward``.

        Returns:
            A dict from layer path to output tensor, in the order of ``paths``.
        """
        self._captured = {}
        self._stop_early = stop_early
        try:
            forward(*args, **kwargs)
        except _AllTapsFired:
            pass
        finally:
            captured, self._captured = self._captured, None
        missing = [p for p in self.paths if p not in captured]
        if missing:
            raise RuntimeError(
                f"tapped layers {missing} never ran during the forward pass; tap modules that are on the "
                "forward path (containers such as ModuleList are not called themselves)"
            )
        return {p: captured[p] for p in self.paths}


def compile_untapped(model: nn.Module, paths: Sequence[str]) -> list[str]:
    """``torch.compile`` every largest submodule that neither is, contains nor wraps a tap.

    A compiled region would swallow the taps' hooks (and the early exit they raise), so tapped
    modules and their ancestors stay eager while everything around them is compiled.

    Returns:
        The paths of the compiled submodules.
    """
    keep_eager = {""}
    for path in paths:
        parts = path.split(".")
        keep_eager.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    compiled = []
    for name, module in model.named_modules():
        parent = name.rpartition(".")[0]
        has_weights = next(module.parameters(), None) is not None
        if name not in keep_eager and parent in keep_eager and has_weights:
            module.compile()
            compiled.append(name)
    return compiled
