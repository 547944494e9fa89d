"""`edgeclient` as a user runs it: the installed console script against a live daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from torchvision.models import SqueezeNet1_0_Weights

IMAGENET = set(SqueezeNet1_0_Weights.IMAGENET1K_V1.meta["categories"])


def edgeclient(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("edgeclient") or str(Path(sys.executable).with_name("edgeclient"))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=180)


def summary_counts(text: str) -> dict[str, int]:
    m = re.search(r"sent (\d+), answered (\d+) \(predicted (\d+), dropped (\d+), errors (\d+)\)", text)
    assert m, text
    return dict(zip(["sent", "answered", "predicted", "dropped", "errors"], map(int, m.groups()), strict=True))


def test_video_all_frames_json(target: str, clip: Path) -> None:
    out = edgeclient(
        "--server",
        target,
        "--model",
        "squeezenet",
        "--video",
        str(clip),
        "--drop-policy",
        "all",
        "--json",
        "--fps",
        "0",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 30
    records = [json.loads(line) for line in lines]
    assert [r["sequence"] for r in records] == list(range(30))
    for r in records:
        assert r["kind"] == "prediction"
        assert r["model"] == "squeezenet1_0" and r["precision"] == "fp32" and r["device"] == "cpu"
        assert len(r["top_k"]) == 5
        assert {c["label"] for c in r["top_k"]} <= IMAGENET
        probs = [c["probability"] for c in r["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert r["timings"]["total_ms"] >= r["timings"]["inference_ms"] > 0
    counts = summary_counts(out.stderr)
    assert counts == {"sent": 30, "answered": 30, "predicted": 30, "dropped": 0, "errors": 0}


@pytest.mark.parametrize("encoding", ["jpeg", "shm"])
def test_latest_policy_answers_every_frame_and_counts_add_up(target: str, clip: Path, encoding: str) -> None:
    # As fast as possible: the model cannot keep up, so some frames are dropped,
    # but each one is still answered, in order. With shm, a dropped frame's answer frees its slot.
    out = edgeclient(
        "--server", target, "--video", str(clip), "--fps", "0", "--json", "--top-k", "3", "--encoding", encoding
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["sequence"] for r in records] == list(range(30))
    kinds = [r["kind"] for r in records]
    assert set(kinds) <= {"prediction", "dropped"}
    assert kinds[-1] == "prediction"  # the newest frame is never dropped
    counts = summary_counts(out.stderr)
    assert counts["sent"] == counts["answered"] == 30
    assert counts["predicted"] == kinds.count("prediction") and counts["dropped"] == kinds.count("dropped")
    assert all(len(r["top_k"]) == 3 for r in records if r["kind"] == "prediction")


def test_text_output_and_save_annotated_video(target: str, clip: Path, tmp_path: Path) -> None:
    saved = tmp_path / "annotated.mp4"
    out = edgeclient(
        "--server",
        target,
        "--video",
        str(clip),
        "--drop-policy",
        "all",
        "--fps",
        "0",
        "--max-frames",
        "8",
        "--save",
        str(saved),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[:8]] == [f"#{i}" for i in range(8)]
    assert lines[-1].startswith("summary: sent 8, answered 8 (predicted 8")
    cap = cv2.VideoCapture(str(saved))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    ok, first = cap.read()
    assert ok and first.shape == (240, 320, 3)
    # The caption box is drawn in black over the gradient's top-left corner.
    assert first[2:8, 2:40].mean() < first[200:230, 2:40].mean()


def test_images_folder_and_raw_encoding(target: str, tmp_path: Path) -> None:
    from helpers import synthetic_frame

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), synthetic_frame(i))
    out = edgeclient(
        "--server", target, "--images", str(tmp_path), "--encoding", "raw", "--drop-policy", "all", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["kind"] for line in out.stdout.splitlines()] == ["prediction"] * 3


def test_unknown_model_is_reported_with_status(target: str, clip: Path) -> None:
    out = edgeclient("--server", target, "--video", str(clip), "--model", "alexnet")
    assert out.returncode == 2  # the command line's mistake, in one line
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "NOT_FOUND" in out.stderr and "alexnet" in out.stderr and "squeezenet1_0" in out.stderr


def test_missing_video_exit_code(target: str, tmp_path: Path) -> None:
    out = edgeclient("--server", target, "--video", str(tmp_path / "missing.mp4"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    from helpers import synthetic_frame

    folder.mkdir(exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"photo{i:02d}.jpg"
        assert cv2.imwrite(str(path), synthetic_frame(i, w, h))
        paths.append(path)
    return paths


def _frames_in(video: Path) -> list[tuple[int, ...]]:
    cap = cv2.VideoCapture(str(video))
    shapes = []
    for _ in range(1000):  # bounded: the file holds a handful
        ok, frame = cap.read()
        if not ok:
            break
        shapes.append(frame.shape)
    cap.release()
    return shapes


def test_save_keeps_every_frame_of_mixed_sizes(target: str, tmp_path: Path) -> None:
    """OpenCV's writer skips frames of another size than the first: they are letterboxed instead."""
    _photos(tmp_path / "photos", [(320, 240), (640, 360), (200, 300), (320, 240)])
    saved = tmp_path / "annotated.mp4"
    out = edgeclient("--server", target, "--images", str(tmp_path / "photos"), "--save", str(saved))
    assert out.returncode == 0, out.stderr
    shapes = _frames_in(saved)
    assert shapes == [(240, 320, 3)] * 4
    assert f"wrote {len(shapes)} annotated frames to {saved}" in out.stderr


def test_a_folder_is_inferred_whole_and_each_answer_names_its_file(target: str, tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos", [(320, 240)] * 12)
    out = edgeclient("--server", target, "--images", str(tmp_path / "photos"), "--json")  # no --drop-policy
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["kind"] for r in records] == ["prediction"] * 12  # a folder is not a camera: nothing dropped
    assert [r["file"] for r in records] == [str(p) for p in paths]
    text = edgeclient("--server", target, "--images", str(paths[3]), "--top-k", "1")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith(f"#0     {paths[3]} ")


def test_ctrl_c_prints_the_summary_and_exits_130(target: str, tmp_path: Path) -> None:
    import signal

    _photos(tmp_path / "photos", [(160, 120)] * 20)
    exe = shutil.which("edgeclient") or str(Path(sys.executable).with_name("edgeclient"))
    args = [exe, "--server", target, "--images", str(tmp_path / "photos"), "--fps", "2"]  # 10 s of photos

    # As a terminal's foreground job gets it: a shell without job control (CI) starts background
    # commands with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    ) as proc:
        try:
            first = proc.stdout.readline()  # type: ignore[union-attr]
            assert first.startswith("#0"), first + proc.stderr.read()  # type: ignore[union-attr]
            proc.send_signal(signal.SIGINT)
            rest, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130, err
    counts = summary_counts(rest)
    assert 1 <= counts["answered"] <= counts["sent"] < 20
    assert "Traceback" not in err
