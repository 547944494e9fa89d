"""The names ``--model`` accepts and the precisions each may ask for, without importing torch.

``edgeserver`` checks its arguments against this table before the model code (torch, torchvision)
loads, so that a typo is one line at once instead of one line after seconds of imports (issue 25).
The registry (:mod:`edgeinfer.server.registry`) builds the same models; a test keeps the two tables equal.
"""

from __future__ import annotations

from edgeinfer.server.options import Precision, choices

__all__ = ["MODEL_ALIASES", "UnknownModel", "canonical_name", "known_models", "served_name", "split_model_arg"]

# canonical name -> aliases, as the registry registers them
MODEL_ALIASES: dict[str, tuple[str, ...]] = {
    "inception_v3": ("inception", "inceptionv3"),
    "resnet50": (),
    "squeezenet1_0": ("squeezenet",),
    "squeezenet1_1": (),
    "vgg16": (),
}


class UnknownModel(ValueError):
    """A ``--model`` value that names no served model or no precision; the message is the one line to print."""


def known_models() -> str:
    """The models and their aliases, as the registry's error lists them: "squeezenet1_0 (squeezenet), ..."."""
    return ", ".join(
        f"{name} ({', '.join(aliases)})" if aliases else name for name, aliases in sorted(MODEL_ALIASES.items())
    )


def canonical_name(name: str) -> str:
    """The canonical model name for ``name`` or an alias, spelled as the registry accepts it."""
    key = name.strip().lower().replace("-", "_").replace(".", "_")
    for canonical, aliases in MODEL_ALIASES.items():
        if key == canonical or key in aliases:
            return canonical
    raise UnknownModel(f"unknown model {name!r}; known models: {known_models()}")


def served_name(name: str) -> str:
    """:func:`canonical_name` for a request or a load: an unknown name is the daemon's ModelNotFound (NOT_FOUND)."""
    from edgeinfer.server.errors import ModelNotFound

    try:
        return canonical_name(name)
    except UnknownModel as exc:
        raise ModelNotFound(str(exc)) from None


def split_model_arg(value: str, default_precision: str) -> tuple[str, str]:
    """``NAME[:PRECISION]`` as (canonical name, precision); UnknownModel names the mistake."""
    name, _, precision = value.partition(":")
    canonical = canonical_name(name)
    precision = precision or default_precision
    if precision not in choices(Precision):
        raise UnknownModel(
            f"unknown precision {precision!r} in {value}; use {'/'.join(choices(Precision))} (e.g. --model {name}:int8)"
        )
    return canonical, precision
