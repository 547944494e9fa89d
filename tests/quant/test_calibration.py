"""Calibration sampling: evenly spread over a video, with bounded memory."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.media import sources
from edgeinfer.quant.calibration import _video


def test_long_video_is_sampled_evenly_without_keeping_every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    refs: list[weakref.ref[np.ndarray]] = []
    peak = [0]

    def frames(path: object, fps: float | None = None) -> Iterator[np.ndarray]:
        for i in range(1000):
            frame = np.zeros((2, 2, 3), np.uint8)
            frame[0, 0, :2] = divmod(i, 256)  # the frame's index, readable from the raw bytes
            refs.append(weakref.ref(frame))
            peak[0] = max(peak[0], sum(r() is not None for r in refs))
            yield frame

    monkeypatch.setattr(sources, "capture_frames", frames)
    picked = _video(Path("long.mp4"), 8)
    indices = [img.data[0] * 256 + img.data[1] for img in picked]  # type: ignore[union-attr]
    assert len(indices) == 8 and indices[0] == 0
    assert indices[-1] >= 800  # spread over the whole clip, not its start
    assert min(b - a for a, b in itertools.pairwise(indices)) >= 64
    assert peak[0] <= 2 * 8 + 1  # never more than 2 x count frames held (plus the one being read)


def test_short_clip_picks_like_before(calib_clip: Path) -> None:
    picked = _video(calib_clip, 32)  # 40 frames: fewer than 2 x 32, so nothing is decimated
    assert len(picked) == 32


def _folder(tmp_path: Path, good: int) -> Path:
    import cv2

    from helpers import jpeg, synthetic_frame

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(good):
        assert cv2.imwrite(str(folder / f"good{i}.png"), synthetic_frame(i, 96, 64))
    (folder / "notes.jpg").write_text("a text file named .jpg\n")  # torchvision's decoder refuses it
    (folder / "truncated.jpg").write_bytes(jpeg(synthetic_frame(9, 96, 64))[:-300])  # the daemon's decoder does
    (folder / "unreadable.png").mkdir()  # a folder named like an image: cannot be read
    return folder


def _preprocessor() -> object:
    from edgeinfer.quant.calibration import offline_preprocessor
    from edgeinfer.server.registry import get_spec

    return offline_preprocessor(get_spec("squeezenet").preprocessing)


def test_a_calibration_folder_skips_bad_files_naming_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edgeinfer.quant.calibration import load_frames

    folder = _folder(tmp_path, good=6)
    with caplog.at_level("WARNING", logger="edgeinfer.quant.calibration"):
        frames = load_frames(folder, _preprocessor(), count=64)  # type: ignore[arg-type]
    assert len(frames.calibration) + len(frames.held_out) == 6
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == sorted(
        [
            f"skipped {folder / 'notes.jpg'}: not an image torchvision can decode",
            f"skipped {folder / 'unreadable.png'}: cannot be read (Is a directory)",
            f"skipped 3 of 9 files under {folder}",
            *[line for line in lines if line.startswith(f"skipped {folder / 'truncated.jpg'}: could not be decoded")],
        ]
    )
    assert any(line.startswith(f"skipped {folder / 'truncated.jpg'}: could not be decoded") for line in lines)


def test_a_calibration_folder_fails_only_when_too_few_frames_remain(tmp_path: Path) -> None:
    from edgeinfer.quant.calibration import load_frames

    with pytest.raises(ValueError, match="gave 3 usable frames; calibration needs at least 4"):
        load_frames(_folder(tmp_path, good=3), _preprocessor(), count=64)  # type: ignore[arg-type]


def _edgequant(*args: str) -> tuple[int, str]:
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("edgequant"))
    out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    return out.returncode, out.stderr


@pytest.mark.parametrize(
    ("calib", "message"),
    [
        ("nope.mp4", "argument --calib: calibration source nope.mp4 does not exist"),
        (
            "pyproject.toml",
            "argument --calib: calibration source pyproject.toml is neither an image folder nor a video "
            "(.mp4, .avi, .mkv, .mov, .webm)",
        ),
    ],
)
def test_edgequant_refuses_a_wrong_calib_in_one_line(calib: str, message: str) -> None:
    code, err = _edgequant("--model", "squeezenet", "--calib", calib)
    assert code == 2 and err.splitlines() == [f"edgequant: error: {message} (see edgequant --help)"]


def test_edgequant_refuses_an_unknown_model_in_one_line() -> None:
    code, err = _edgequant("--model", "squeezenet", "--model", "mobilenet", "--calib", "synthetic")
    assert code == 2
    assert err.splitlines() == [
        "edgequant: error: argument --model: unknown model 'mobilenet'; known models: inception_v3 (inception, "
        "inceptionv3), resnet50, squeezenet1_0 (squeezenet), squeezenet1_1, vgg16 (see edgequant --help)"
    ]


def test_edgequant_checks_its_arguments_before_importing_torch() -> None:
    """Asserted as what was imported, not as a time: the check comes before torch's seconds of imports."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edgeinfer.quant.cli import main\n"
        "for argv in (['--model', 'squeezenet', '--calib', 'nope.mp4'], ['--model', 'mobilenet', '--calib', '.']):\n"
        "    try:\n        main(argv)\n"
        "    except SystemExit as exc:\n        print(exc.code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False", "2", "False"], out.stderr
