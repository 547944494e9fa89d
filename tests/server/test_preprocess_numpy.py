"""The torch-free preprocessing (numpy, simplejpeg) against torchvision's, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_images

from edgeinfer.server.errors import InvalidFrame, LimitExceeded
from edgeinfer.server.frames import JpegImage, Preprocessing, RawImage
from edgeinfer.server.limits import FrameLimits, resized_size
from edgeinfer.server.preprocess import Preprocessor
from edgeinfer.server.preprocess_numpy import NumpyPreprocessor, resize_crop
from edgeinfer.server.registry import get_spec
from helpers import jpeg


def photos() -> list[np.ndarray]:
    """scikit-learn's two photos (427x640), whole, cropped, portrait and scaled: 12 frames."""
    out = []
    for img in load_sample_images().images:
        out += [img, img[:300, :500], img[:, :300], img[50:150, :], img[::2, ::2], np.repeat(img, 2, axis=0)[:720]]
    return [np.ascontiguousarray(x) for x in out]


def grey_levels(a: np.ndarray, b: np.ndarray, config: Preprocessing) -> np.ndarray:
    """|a - b| of two normalized inputs, back in grey levels of the 0-255 image."""
    return np.abs(a - b) * (np.asarray(config.std)[:, None, None] * 255)


@pytest.mark.parametrize("model", ["squeezenet", "inception_v3"])
def test_matches_torchvision_within_a_hundredth_of_a_grey_level(model: str) -> None:
    config = get_spec(model).preprocessing
    ours, theirs = NumpyPreprocessor(config), Preprocessor(config, device=torch.device("cpu"))
    means, worst = [], 0.0
    for frame in photos():
        raw = RawImage(frame.shape[0], frame.shape[1], frame.tobytes())
        a, b = ours(raw).tensor, theirs(raw).tensor.numpy()
        assert a.shape == b.shape == (3, config.crop_size, config.crop_size) and a.dtype == np.float32
        diff = grey_levels(a, b, config)
        means.append(float(diff.mean()))
        worst = max(worst, float(diff.max()))
    # measured with Pillow: mean 0.0016 (SqueezeNet, 256 -> 224) and 0.0089 (Inception, 342 -> 299) grey levels;
    # the worst pixel is at most two rounding steps apart (the uint8 image between the passes, and the last)
    assert np.mean(means) < 0.02
    assert worst <= 2.01


def test_jpeg_decodes_like_torchvision() -> None:
    config = get_spec("squeezenet").preprocessing
    data = jpeg(photos()[0][..., ::-1], quality=85)  # helpers.jpeg takes BGR
    a = NumpyPreprocessor(config)(JpegImage(data)).tensor
    b = Preprocessor(config, device=torch.device("cpu"))(JpegImage(data)).tensor.numpy()
    assert grey_levels(a, b, config).mean() < 0.02


def test_bgr_frames_are_swapped() -> None:
    pre = NumpyPreprocessor(get_spec("squeezenet").preprocessing)
    rgb = photos()[1]
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    a = pre(RawImage(*rgb.shape[:2], rgb.tobytes())).tensor
    b = pre(RawImage(*bgr.shape[:2], bgr.tobytes(), bgr=True)).tensor
    np.testing.assert_array_equal(a, b)


def test_resize_arithmetic_is_torchvisions() -> None:
    assert resized_size(427, 640, 256) == (256, 383)  # int(256 * 640 / 427) = 383
    assert resized_size(640, 427, 256) == (383, 256)


def test_the_crop_is_the_whole_resize_cropped() -> None:
    """Resizing only the crop's source box gives the pixels of the whole image's resize, cropped."""
    from PIL import Image

    photo = np.ascontiguousarray(load_sample_images().images[0])  # 427 x 640
    whole = np.asarray(Image.fromarray(photo).resize((383, 256), Image.Resampling.BILINEAR))
    part = resize_crop(photo, 256, 383, 16, 80, 224)
    assert part.shape == (224, 224, 3)
    diff = np.abs(part.astype(int) - whole[16:240, 80:304].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # at most Pillow's rounding of a box edge


def test_bad_frames_are_refused_before_the_work() -> None:
    pre = NumpyPreprocessor(get_spec("squeezenet").preprocessing, limits=FrameLimits(max_frame_bytes=1 << 20))
    with pytest.raises(InvalidFrame, match="needs 30000 bytes"):
        pre(RawImage(100, 100, b"\0" * 10))
    with pytest.raises(InvalidFrame, match="damaged or truncated"):
        pre(JpegImage(jpeg(np.zeros((64, 64, 3), np.uint8))[:-200]))
    with pytest.raises(InvalidFrame, match="SOI"):
        pre(JpegImage(b"GIF89a" + b"\0" * 100))
    with pytest.raises(LimitExceeded):
        pre(RawImage(1000, 1000, b"\0" * 3_000_000))  # over the 1 MiB frame limit
