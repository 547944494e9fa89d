"""An artifact is code: the daemon loads its model file only from inside the repository and only with
the SHA-256 the sidecar recorded. Each refusal is one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgeinfer.quant import Artifact
from edgeinfer.server import get_spec, load_model
from edgeinfer.server.artifacts import SIDECAR, file_sha256, load_int8_runner, read_sidecar
from edgeinfer.server.errors import WeightsUnavailable


def _copy(artifact: Artifact, tmp_path: Path) -> tuple[Path, Path]:
    """A repository of its own holding a copy of the session's artifact: (repository, artifact folder)."""
    repo = tmp_path / "repo"
    folder = repo / "squeezenet1_0" / artifact.folder.name
    shutil.copytree(artifact.folder, folder)
    return repo, folder


def _edit_sidecar(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / SIDECAR).read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (folder / SIDECAR).write_text(json.dumps(meta))


def test_sidecar_records_the_model_files_sha256(squeezenet_int8: Artifact) -> None:
    meta = read_sidecar(squeezenet_int8.folder)
    assert meta["sha256"] == file_sha256(squeezenet_int8.folder / "model.pt")
    assert len(meta["sha256"]) == 64 and int(meta["sha256"], 16) >= 0


def test_a_changed_model_file_is_refused(squeezenet_int8: Artifact, tmp_path: Path) -> None:
    repo, folder = _copy(squeezenet_int8, tmp_path)
    data = bytearray((folder / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte: a tampered weight, or code
    (folder / "model.pt").write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailable) as info:
        load_model("squeezenet", precision="int8", repository=repo)
    message = info.value.details
    assert message.startswith(f"model file {folder / 'model.pt'} does not match the SHA-256 its sidecar records")
    assert "\n" not in message


def test_a_model_file_outside_the_repository_is_refused(squeezenet_int8: Artifact, tmp_path: Path) -> None:
    repo, folder = _copy(squeezenet_int8, tmp_path)
    shutil.copyfile(folder / "model.pt", tmp_path / "x.pt")  # the same, untouched bytes: the place is refused
    _edit_sidecar(folder, file="../../../x.pt")
    with pytest.raises(WeightsUnavailable, match=r"refusing model file .*x\.pt: it is .*, outside the repository"):
        load_int8_runner(get_spec("squeezenet"), repo)
    _edit_sidecar(folder, file=str(tmp_path / "x.pt"))  # an absolute path likewise
    with pytest.raises(WeightsUnavailable, match="outside the repository"):
        load_int8_runner(get_spec("squeezenet"), repo)


def test_a_symlink_out_of_the_repository_is_refused(squeezenet_int8: Artifact, tmp_path: Path) -> None:
    repo, folder = _copy(squeezenet_int8, tmp_path)
    outside = tmp_path / "elsewhere.pt"
    os.replace(folder / "model.pt", outside)
    (folder / "model.pt").symlink_to(outside)
    with pytest.raises(WeightsUnavailable) as info:
        load_int8_runner(get_spec("squeezenet"), repo)
    assert info.value.details.startswith(f"refusing model file {folder / 'model.pt'}: it is a symlink to {outside}")


def test_a_symlink_within_the_repository_loads(squeezenet_int8: Artifact, tmp_path: Path) -> None:
    repo, folder = _copy(squeezenet_int8, tmp_path)
    shared = repo / "blobs" / "squeezenet-int8.pt"
    shared.parent.mkdir()
    os.replace(folder / "model.pt", shared)
    (folder / "model.pt").symlink_to(Path("..", "..", "blobs", "squeezenet-int8.pt"))
    runner, _, meta = load_int8_runner(get_spec("squeezenet"), repo)
    assert meta["sha256"] == file_sha256(shared) and runner.module is not None


def test_a_sidecar_without_a_digest_is_refused(squeezenet_int8: Artifact, tmp_path: Path) -> None:
    repo, folder = _copy(squeezenet_int8, tmp_path)
    _edit_sidecar(folder, sha256=None)
    with pytest.raises(WeightsUnavailable, match=r"records no SHA-256 of model\.pt .*re-make the artifact"):
        load_int8_runner(get_spec("squeezenet"), repo)
