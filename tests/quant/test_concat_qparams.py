"""Inception v3's concatenations share one scale and zero point per group, so none requantizes."""

from __future__ import annotations

import pytest
import torch

from edgeinfer.quant.flows import quantize_fx
from edgeinfer.server import WeightsSource, get_spec
from edgeinfer.server.weights import build_model


@pytest.mark.slow
def test_inception_concatenations_share_qparams_and_none_requantizes() -> None:
    model = build_model(get_spec("inception_v3"), WeightsSource("random", seed=0)).eval()
    model.transform_input = False
    x = torch.randn(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    stats: dict[str, int] = {}
    int8 = quantize_fx(model, [x], engine="x86", example=x[:1], concat_stats=stats)
    # 15: Mixed_5b-5d, 6a-6e, 7a one each, 7b and 7c three each (two inner, one outer).
    # torch.ao's defaults leave 4 of them requantizing; the max-pool branches (6a, 7a) need their
    # input in the group too, or 2 still do.
    assert stats == {"concatenations": 15, "requantizing": 0}
    assert int8(x[:1]).shape == (1, 1000)
