"""Every seed model served fp32 on the CPU through the Python API, Inception's 299 input included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torchvision.models import get_model_weights

from edgeinfer.client import EdgeClient
from edgeinfer.server import WeightsSource, load_model
from helpers import daemons, synthetic_frame

SEED_MODELS = {"squeezenet1_0": 224, "squeezenet1_1": 224, "vgg16": 224, "inception_v3": 299, "resnet50": 224}


@pytest.fixture(scope="module")
def all_models() -> Iterator[str]:
    with daemons() as start:
        models = [load_model(name, weights=WeightsSource("random", seed=0), warmup=False) for name in SEED_MODELS]
        yield f"127.0.0.1:{start(*models).port}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SEED_MODELS))
def test_each_seed_model_streams_top_k(all_models: str, name: str) -> None:
    categories = get_model_weights(name).DEFAULT.meta["categories"]
    with EdgeClient(all_models, timeout=120) as client:
        info = client.model(name)
        assert info.input_size == (SEED_MODELS[name], SEED_MODELS[name]) and info.num_classes == 1000
        frames = [synthetic_frame(i, 640, 480) for i in range(3)]
        results = list(client.stream(frames, name, top_k=5, drop_policy="all", timeout=300))
    assert [r.sequence for r in results] == [0, 1, 2]
    for r in results:
        assert r.prediction is not None and r.prediction.model == name
        assert [c.label for c in r.prediction.classes] == [categories[c.index] for c in r.prediction.classes]
        probs = [c.probability for c in r.prediction.classes]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
