"""Image folders as a robot finds them: JPEGs sent byte for byte, bad files answered alone, the run goes on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgeinfer.client import EdgeClient, Encoder, Frame, ImageFile
from edgeinfer.client.streaming import prepare
from edgeinfer.media.images import Fit, decode_image, jpeg_needs_shrink, kept_window, resized_shape, shrink
from edgeinfer.media.sources import SourceError
from helpers import jpeg, synthetic_frame


def damaged(data: bytes) -> bytes:
    """A JPEG with 50 bytes of its middle zeroed: libjpeg decodes it with a warning and grey blocks."""
    out = bytearray(data)
    middle = len(out) // 2
    out[middle : middle + 50] = bytes(50)
    return bytes(out)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Good and bad files among each other, in name order (small: the daemon validates; large: the client)."""
    (tmp_path / "a_good.jpg").write_bytes(jpeg(synthetic_frame(0)))
    (tmp_path / "b_truncated.jpg").write_bytes(jpeg(synthetic_frame(1))[:-200])
    (tmp_path / "c_good.png").write_bytes(cv2.imencode(".png", synthetic_frame(2))[1].tobytes())
    (tmp_path / "d_damaged.jpg").write_bytes(damaged(jpeg(synthetic_frame(3))))
    (tmp_path / "e_notes.png").write_text("these are not pixels")
    (tmp_path / "f_damaged_large.jpg").write_bytes(damaged(jpeg(synthetic_frame(5, 640, 480))))
    (tmp_path / "g_folder.jpg").mkdir()  # cannot be read as a file
    (tmp_path / "h_good_large.jpg").write_bytes(jpeg(synthetic_frame(7, 640, 480)))
    (tmp_path / "readme.txt").write_text("not an image suffix: skipped")
    return tmp_path


EXPECTED = [
    ("prediction", None),
    ("error", "could not be decoded"),  # the daemon: truncated
    ("prediction", None),
    ("error", "Corrupt JPEG data"),  # the daemon: damaged, never classified grey
    ("error", "e_notes.png is not an image"),  # the client: not decodable
    ("error", "f_damaged_large.jpg is a damaged JPEG"),  # the client: decoded (shrunk) strictly
    ("error", "cannot read"),  # the client: a folder named .jpg
    ("prediction", None),
]


def edgeclient(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("edgeclient"))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_a_folder_with_bad_files_answers_each_and_goes_on_json(target: str, folder: Path) -> None:
    out = edgeclient("--server", target, "--images", str(folder), "--drop-policy", "all", "--json")
    assert out.returncode == 3, out.stderr  # some frames failed
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["sequence"] for r in records] == list(range(len(EXPECTED)))
    for record, (kind, message) in zip(records, EXPECTED, strict=True):
        assert record["kind"] == kind, record
        if message:
            assert record["code"] == "INVALID_ARGUMENT" and message in record["message"], record
    assert "sent 8, answered 8 (predicted 3, dropped 0, errors 5)" in out.stderr
    assert "Traceback" not in out.stderr and "Corrupt JPEG" not in out.stderr  # no libjpeg/OpenCV noise


def test_a_folder_with_bad_files_text_lines(target: str, folder: Path) -> None:
    out = edgeclient("--server", target, "--images", str(folder), "--drop-policy", "all")
    assert out.returncode == 3, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(EXPECTED) + 1 and lines[-1].startswith("summary: sent 8")
    names = sorted(p for p in folder.iterdir() if p.suffix != ".txt")
    for line, (kind, message), name in zip(lines, EXPECTED, names, strict=False):
        assert line.split()[1] == str(name), line  # each answer names its file
        if kind == "error":
            assert " error    INVALID_ARGUMENT: " in line and message in line, line
        else:
            assert line.split()[3] == "ms" and "%" in line, line  # probabilities as percentages


def test_jpeg_files_go_byte_for_byte_and_others_are_decoded(folder: Path) -> None:
    good = folder / "a_good.jpg"
    frame = Frame(ImageFile(good))
    prepare(frame, Fit(256, 224), need_pixels=False)  # 320x240: smaller than the model's resize, nothing to shrink
    assert frame.image == good.read_bytes()
    png = Frame(ImageFile(folder / "c_good.png"))
    prepare(png, Fit(), need_pixels=False)
    assert isinstance(png.image, np.ndarray) and np.array_equal(png.image, synthetic_frame(2))
    raw = Frame(ImageFile(good))
    prepare(raw, Fit(), need_pixels=True)  # raw/shm encodings send pixels
    assert isinstance(raw.image, np.ndarray) and raw.image.shape == (240, 320, 3)


def test_a_large_jpeg_is_shrunk_through_dct_scaling(folder: Path) -> None:
    data = (folder / "h_good_large.jpg").read_bytes()
    assert jpeg_needs_shrink(data, 256) and not jpeg_needs_shrink(data, 480)
    frame = Frame(ImageFile(folder / "h_good_large.jpg"))
    prepare(frame, Fit(256), need_pixels=False)
    assert isinstance(frame.image, np.ndarray) and frame.image.shape == (256, 341, 3)
    full = cv2.resize(decode_image(data), (341, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(frame.image.astype(int) - full.astype(int)).mean() < 2.0  # DCT-scaled, then area: the same picture


def test_decode_image_refuses_damage(folder: Path) -> None:
    with pytest.raises(SourceError, match="damaged JPEG"):
        decode_image((folder / "d_damaged.jpg").read_bytes(), name="d")
    with pytest.raises(SourceError, match="damaged JPEG"):
        decode_image((folder / "b_truncated.jpg").read_bytes(), name="b")
    with pytest.raises(SourceError, match="not an image"):
        decode_image(b"hello", name="x")


def test_resized_shape_is_what_torchvision_resize_gives() -> None:
    import torch
    from torchvision.transforms.v2 import functional as F

    for h, w in [(480, 640), (720, 1280), (1080, 1920), (427, 640), (640, 427), (333, 500), (257, 1000)]:
        shape = resized_shape(h, w, 256)
        assert shape is not None
        assert tuple(F.resize(torch.zeros(3, h, w, dtype=torch.uint8), [256]).shape[1:]) == shape
        # ... and the daemon's resize of a frame shrunk to it is the identity
        shrunk = torch.randint(0, 255, (3, *shape), dtype=torch.uint8)
        assert torch.equal(F.resize(shrunk, [256], antialias=True), shrunk)
    assert resized_shape(240, 320, 256) is None and resized_shape(256, 400, 256) is None


def test_shrink_is_an_area_resize_that_does_not_alias() -> None:
    """Halvings then an area step: torchvision's resize shape, and the picture without the stripes it averages out."""
    rng = np.random.default_rng(0)
    for h, w in [(720, 1280), (1080, 1920), (480, 640), (2160, 3840), (1280, 720)]:
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = 128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0)  # what a camera sees
        stripes = np.where(xx % 2 == 0, 40, -40)  # one-pixel stripes: a resize that skips pixels aliases them
        image = np.clip(smooth[..., None] + stripes[..., None] + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
        out = shrink(image, 256)
        assert out.shape[:2] == resized_shape(h, w, 256)
        size = (out.shape[1], out.shape[0])
        truth = cv2.resize(
            np.repeat(smooth[..., None], 3, axis=2).astype(np.float32), size, interpolation=cv2.INTER_AREA
        )
        skipping = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)  # what aliasing looks like here
        assert np.abs(out - truth).mean() < 3.0 < 15.0 < np.abs(skipping - truth).mean(), (h, w)
    small = np.zeros((240, 320, 3), np.uint8)
    assert shrink(small, 256) is small  # smaller than the model's resize: as it is
    assert shrink(small, 256, 224) is small


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's center_crop, rounding included."""
    top = round((image.shape[0] - size) / 2.0)
    left = round((image.shape[1] - size) / 2.0)
    return image[top : top + size, left : left + size]


def test_shrink_with_the_crop_sends_only_what_the_daemons_crop_sees() -> None:
    """The kept square, once the daemon crops it, holds the pixels its crop of the whole shrunk frame holds.

    Within a fraction of a shrunk pixel (a crop starts on a whole pixel), where the same square
    one shrunk pixel off, what a rounding slip would send, is several times further.
    """
    rng = np.random.default_rng(1)
    for h, w in [(720, 1280), (1080, 1920), (480, 640), (1280, 720), (333, 500), (257, 1000), (600, 600)]:
        yy, xx = np.mgrid[0:h, 0:w]
        scale = max(h, w) / 120  # a picture with detail at a few shrunk pixels
        texture = 128 + 60 * np.sin(xx / scale) + 60 * np.cos(yy / (0.8 * scale))
        image = np.clip(texture[..., None] + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
        whole = _center_crop(shrink(image, 256), 224).astype(int)
        kept = shrink(image, 256, 224)
        assert kept.shape == (256, 256, 3), (h, w)
        error = np.abs(_center_crop(kept, 224).astype(int) - whole).mean()
        if h == w:
            assert error == 0.0  # nothing cropped
            continue
        top, bottom, left, right = kept_window(h, w, 256, 224)  # type: ignore[misc]
        step = round(max(h, w) / max(resized_shape(h, w, 256)))  # type: ignore[arg-type]  # one shrunk pixel
        off = image[top:bottom, left - step : right - step] if w > h else image[top - step : bottom - step, left:right]
        shifted = np.abs(_center_crop(shrink(off, 256), 224).astype(int) - whole).mean()
        assert error < 3.0 and shifted > 3 * error, (h, w, error, shifted)
    assert kept_window(720, 1280, 256, 0) is None and kept_window(200, 300, 256, 224) is None


def test_model_info_says_the_resize_size(client: EdgeClient) -> None:
    info = client.model("squeezenet")
    assert info.resize_size == 256 and info.input_size == (224, 224)
    assert info.fit == Fit(256, 224)  # what a client shrinks frames to


def test_client_resize_gives_the_same_answers_with_fewer_bytes(
    client: EdgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [cv2.resize(synthetic_frame(i), (1280, 720), interpolation=cv2.INTER_CUBIC) for i in range(4)]
    sizes: dict[str, list[int]] = {"auto": [], "off": []}
    answers = {}
    original = Encoder.write
    for mode in ("auto", "off"):

        def recording(self: Encoder, frame: Frame, into: Any, mode: str = mode) -> None:
            original(self, frame, into)
            sizes[mode].append(len(into.jpeg))  # the bytes on the wire

        monkeypatch.setattr(Encoder, "write", recording)
        answers[mode] = list(client.stream(frames, "squeezenet", drop_policy="all", resize=mode))
    assert all(r.prediction for r in answers["auto"] + answers["off"])
    assert sum(sizes["off"]) > 4 * sum(sizes["auto"])
    for a, b in zip(answers["auto"], answers["off"], strict=True):
        top5_a = {c.index for c in a.prediction.classes}  # type: ignore[union-attr]
        top5_b = {c.index for c in b.prediction.classes}  # type: ignore[union-attr]
        assert len(top5_a & top5_b) >= 3
