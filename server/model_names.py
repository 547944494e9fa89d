"""The names of the servable models and their aliases, without torchvision: what a daemon of ONNX
models (no torch on the board) and the argument checks need to resolve ``--model squeezenet``.

server/registry.py builds the same names with torchvision; tests/server/test_registry.py
checks that the two tables agree.
"""

from __future__ import annotations

from edgeinfer.server.errors import ModelNotFound

__all__ = ["MODEL_NAMES", "canonical_name", "known_model_names"]

# canonical name -> aliases (as server/registry.py registers them)
MODEL_NAMES: dict[str, tuple[str, ...]] = {
    "inception_v3": ("inception", "inceptionv3"),
    "resnet50": (),
    "squeezenet1_0": ("squeezenet",),
    "squeezenet1_1": (),
    "vgg16": (),
}
_ALIASES = {alias: name for name, aliases in MODEL_NAMES.items() for alias in aliases}


def known_model_names() -> str:
    """ "squeezenet1_0 (squeezenet), ...", as an error message lists them."""
    return ", ".join(f"{n} ({', '.join(a)})" if a else n for n, a in sorted(MODEL_NAMES.items()))


def canonical_name(name: str) -> str:
    """``squeezenet`` -> ``squeezenet1_0``; an unknown name is :class:`ModelNotFound` naming the known ones."""
    key = name.strip().lower().replace("-", "_").replace(".", "_")
    key = _ALIASES.get(key, key)
    if key not in MODEL_NAMES:
        raise ModelNotFound(f"unknown model {name!r}; known models: {known_model_names()}")
    return key
