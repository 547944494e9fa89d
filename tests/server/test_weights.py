"""The real loading code, exercised offline with checkpoints the tests write."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from edgeinfer.server.errors import WeightsUnavailable
from edgeinfer.server.registry import get_spec
from edgeinfer.server.weights import WeightsSource, build_model


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_weights_are_seeded() -> None:
    spec = get_spec("squeezenet1_1")
    a = build_model(spec, WeightsSource("random", seed=1))
    b = build_model(spec, WeightsSource("random", seed=1))
    c = build_model(spec, WeightsSource("random", seed=2))
    assert _same(a, b) and not _same(a, c)
    assert not a.training


def test_state_dict_file_loads_exactly(tmp_path: Path) -> None:
    spec = get_spec("squeezenet1_1")
    original = build_model(spec, WeightsSource("random", seed=5))
    path = tmp_path / "sq.pth"
    torch.save({"model_state_dict": original.state_dict(), "epoch": 3}, path)  # a training checkpoint
    loaded = build_model(spec, WeightsSource.parse(str(path)))
    assert _same(original, loaded)


def test_wrong_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    spec = get_spec("squeezenet1_0")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        build_model(spec, WeightsSource.parse(str(tmp_path / "nope.pth")))
    other = tmp_path / "resnet.pth"
    torch.save(build_model(get_spec("squeezenet1_1"), WeightsSource("random")).state_dict(), other)
    with pytest.raises(WeightsUnavailable, match="do not fit squeezenet1_0"):
        build_model(spec, WeightsSource.parse(str(other)))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="weights_only=True"):
        build_model(spec, WeightsSource.parse(str(junk)))


def test_imagenet_weights_come_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_spec("squeezenet1_1")
    reference = build_model(spec, WeightsSource("random", seed=9))
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save(reference.state_dict(), checkpoints / Path(spec.default_weights.url).name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    loaded = build_model(spec, WeightsSource.parse("imagenet"))
    assert _same(reference, loaded)
    assert WeightsSource("imagenet").describe(spec) == "imagenet:SqueezeNet1_1_Weights.IMAGENET1K_V1"


def test_offline_without_cache_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as info:
        build_model(get_spec("squeezenet"), WeightsSource("imagenet"))
    message = info.value.details
    assert "--weights PATH" in message and "--weights random" in message
    assert str(tmp_path / "checkpoints" / "squeezenet1_0-b66bff10.pth") in message


def test_inception_drops_aux_logits_but_loads_checkpoints_with_them(tmp_path: Path) -> None:
    spec = get_spec("inception_v3")
    full = spec.build(weights=None)
    assert any(k.startswith("AuxLogits.") for k in full.state_dict())
    path = tmp_path / "inc.pth"
    torch.save(full.state_dict(), path)
    model = build_model(spec, WeightsSource.parse(str(path)))
    assert model.AuxLogits is None and not model.aux_logits
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 299, 299))
    assert out.shape == (1, 1000)
