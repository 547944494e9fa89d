"""The package graph runs one way (DESIGN.md): proto <- client; proto <- server <- quant; media (frame
sources) is a leaf that client and quant share. Read from every import statement, lazy ones inside
functions included, so an edge cannot come back unnoticed."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

# package folder -> modules it must never import (a name or anything under it)
BANNED = {
    # tritonclient is a test tool ([dev]): the KServe v2 service runs on our own proto/kserve_v2.proto.
    "proto": ("edgeinfer.server", "edgeinfer.client", "edgeinfer.quant", "edgeinfer.media", "torch", "tritonclient"),
    "media": ("edgeinfer.server", "edgeinfer.client", "edgeinfer.quant", "edgeinfer.proto", "grpc", "torch"),
    "client": ("edgeinfer.server", "edgeinfer.quant", "torch", "torchvision", "tritonclient"),
    "server": ("edgeinfer.quant", "edgeinfer.client", "tritonclient"),
    "quant": ("edgeinfer.client",),
}


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``; a relative import counts as its absolute name."""
    package = f"edgeinfer.{path.parent.relative_to(ROOT).as_posix().replace('/', '.')}"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module))
    return sorted(out)


def violations(folder: str) -> list[str]:
    banned = BANNED[folder]
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name in imported_names(path)
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]


@pytest.mark.parametrize("folder", sorted(BANNED))
def test_package_imports_run_one_way(folder: str) -> None:
    assert violations(folder) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "bad.py").write_text(
        "def f():\n    from edgeinfer.quant import quantize\n    import edgeinfer.client.api\nfrom ..quant import x\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("server") == [
        "server/bad.py:2 imports edgeinfer.quant",
        "server/bad.py:3 imports edgeinfer.client.api",
        "server/bad.py:4 imports edgeinfer.quant",
    ]
