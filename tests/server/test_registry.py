from __future__ import annotations

import pytest
from torchvision.models import Inception_V3_Weights

from edgeinfer.server.errors import ModelNotFound
from edgeinfer.server.registry import get_spec, list_models, register_model


def test_seed_models_and_aliases() -> None:
    assert list_models() == ["inception_v3", "resnet50", "squeezenet1_0", "squeezenet1_1", "vgg16"]
    assert get_spec("squeezenet").name == "squeezenet1_0"
    assert get_spec("SqueezeNet1.1").name == "squeezenet1_1"
    assert get_spec("inception").name == "inception_v3"


def test_metadata_comes_from_torchvision() -> None:
    spec = get_spec("inception_v3")
    assert spec.preprocessing.crop_size == 299 and spec.preprocessing.resize_size == 342
    assert spec.categories == Inception_V3_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(spec.categories) == 1000 and spec.categories[1] == "goldfish"
    sq = get_spec("squeezenet").preprocessing
    assert (sq.resize_size, sq.crop_size, sq.mean, sq.std) == (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ModelNotFound, match="known models: inception_v3 \\(inception, inceptionv3\\), resnet50"):
        get_spec("alexnet")


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet50", weights=Inception_V3_Weights)(lambda **_: None)
    with pytest.raises(ValueError, match="already registered"):
        register_model("brand_new", weights=Inception_V3_Weights, aliases=("squeezenet",))(lambda **_: None)
    assert "brand_new" not in list_models()
