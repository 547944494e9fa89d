"""int8 keeps accuracy on a real labelled set (scikit-learn's digits): within 1 point of fp32.

SqueezeNet 1.0 uses the small checkpoint in tests/data (made by
``python -m edgeinfer.quant.digits train --arch squeezenet1_0 --out tests/data/digits_squeezenet1_0.pt``);
(ResNet50 used to be trained here, 197 s of the suite: its proof moved to bench/quant_trust.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.quant import digits

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.slow
def test_squeezenet_int8_within_one_point_of_fp32() -> None:
    model = digits.load("squeezenet1_0", DATA / "digits_squeezenet1_0.pt")
    result = digits.check(model, "squeezenet1_0", calibration_images=64)
    print(result.line())
    assert result.test_images == 540
    assert result.fp32_accuracy > 0.85  # the checkpoint learned the task (88.9% when made)
    assert abs(result.drop_points) <= 1.0
    loss = result.loss()
    assert loss.frames == 540 and loss.low <= loss.points <= loss.high
    assert loss.high - loss.low < 3.0  # paired: only the digits that changed answer widen it
