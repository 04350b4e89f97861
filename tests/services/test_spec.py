"""DescriptorSpec: defaults, validation, canonical JSON and a hash that moves with every parameter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from services.errors import WeightsError
from services.filters import conv_spec
from services.spec import ConvParams, DescriptorSpec, GaborParams, decimation_for, gabor_spec


def fitted(spec: DescriptorSpec) -> DescriptorSpec:
    edges = np.tile(np.linspace(-1.0, 1.0, spec.bins - 1, dtype=np.float32), (spec.dim, 1))
    return spec.with_edges(edges)


def test_gabor_defaults_are_the_documented_bank():
    spec = gabor_spec(size=64, bins=8)
    params = spec.gabor
    assert params.wavelengths == [2.5, 5.0, 10.0, 20.0]
    assert np.allclose(params.sigmas, 0.5622 * np.array(params.wavelengths), rtol=1e-3)
    assert params.kernel_sizes == [11, 19, 35, 69]
    assert params.decimation == [1, 1, 2, 4]
    assert spec.dim == 48 and spec.layer_sizes == [48]
    assert spec.weights_array().dtype == np.float32 and np.isclose(spec.weights_array().sum(), 1.0)
    assert spec.edges is None


def test_kernel_sizes_are_capped_and_odd():
    params = GaborParams(wavelengths=[4.0, 40.0], max_kernel_size=50)
    assert params.kernel_sizes == [2 * int(np.ceil(3 * params.sigmas[0])) + 1, 49]
    with pytest.raises(ValidationError):
        GaborParams(wavelengths=[4.0], kernel_sizes=[10])


def test_canonical_json_is_sorted_compact_and_round_trips(tmp_path):
    spec = fitted(gabor_spec(size=32, bins=4))
    text = spec.canonical_json()
    assert " " not in text and "\n" not in text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    spec.save(tmp_path / "spec.json")
    loaded = DescriptorSpec.load(tmp_path / "spec.json")
    assert loaded == spec and loaded.spec_hash == spec.spec_hash
    assert np.array_equal(loaded.edges_array(), spec.edges_array())


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(size=d["size"] + 1),
        lambda d: d.update(bins=5, edges=[row + [2.0] for row in d["edges"]]),
        lambda d: d["gabor"].update(wavelengths=[2.5, 5.0, 10.0, 21.0], sigmas=None, kernel_sizes=None),
        lambda d: (
            d["gabor"].update(orientations=5)
            or d.update(layer_sizes=[40], weights=[1 / 40] * 40, edges=d["edges"][:40])
        ),
        lambda d: d["edges"][7].__setitem__(
            1, float(np.nextafter(np.float32(d["edges"][7][1]), np.float32(1)))
        ),
        lambda d: d["weights"].__setitem__(0, d["weights"][0] * 2),
        lambda d: d.update(default_metric="skl"),
        lambda d: d["gabor"].update(decimation=[1, 1, 1, 1]),
    ],
    ids=[
        "size",
        "bins",
        "wavelength",
        "orientations",
        "one_edge_by_one_ulp",
        "weight",
        "metric",
        "decimation",
    ],
)
def test_spec_hash_changes_with_any_parameter(change):
    spec = fitted(gabor_spec(size=32, bins=4))
    data = json.loads(spec.canonical_json())
    change(data)
    other = DescriptorSpec.model_validate(data)
    assert other.spec_hash != spec.spec_hash


def test_edges_are_validated():
    spec = gabor_spec(size=32, bins=4)
    with pytest.raises(ValidationError, match="D x"):
        spec.with_edges(np.zeros((spec.dim, 2)))
    with pytest.raises(ValidationError, match="strictly increasing"):
        spec.with_edges(np.zeros((spec.dim, 3)))
    with pytest.raises(ValueError, match="no fitted edges"):
        spec.edges_array()


def test_bank_and_blocks_must_agree():
    with pytest.raises(ValidationError):
        DescriptorSpec(bank="conv", gabor=GaborParams(), layer_sizes=[48], weights=[1 / 48] * 48)
    with pytest.raises(ValidationError, match="weights"):
        DescriptorSpec(bank="gabor", gabor=GaborParams(), layer_sizes=[48], weights=[1.0])
    with pytest.raises(ValidationError, match="not supported"):
        ConvParams(arch="googlenet", weights_sha256="0" * 64)


def test_conv_spec_records_filter_counts_and_sha(resnet18_weights):
    import hashlib

    one = conv_spec(resnet18_weights, arch="resnet18", layers=1, size=32, bins=8)
    two = conv_spec(resnet18_weights, arch="resnet18", layers=2, size=32, bins=8)
    assert one.layer_sizes == [64] and two.layer_sizes == [64, 64]
    assert np.allclose(two.weights_array(), 1 / 128) and np.isclose(two.weights_array().sum(), 1.0)
    assert one.conv.weights_sha256 == hashlib.sha256(resnet18_weights.read_bytes()).hexdigest()
    assert one.spec_hash != two.spec_hash


def test_conv_spec_without_usable_weights_raises(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        conv_spec(tmp_path / "missing.pt", arch="resnet18")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        conv_spec(junk, arch="resnet18")
    partial = tmp_path / "partial.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(WeightsError, match="does not match"):
        conv_spec(partial, arch="resnet18")


def test_decimation_follows_the_four_sigma_rule_and_is_validated():
    params = GaborParams()
    assert params.decimation == [1, 1, 2, 4]
    for wavelength, sigma, d in zip(params.wavelengths, params.sigmas, params.decimation, strict=True):
        reach = 1 / wavelength + 4 / (2 * np.pi * sigma)  # cycles/px where the gain falls below e^-8
        assert (d == 1 or 1 / (2 * d) >= reach) and (d == 8 or 1 / (4 * d) < reach)  # largest allowed
    assert decimation_for(20.0, 0.5622 * 20.0, aspect_ratio=2.0) == 2  # narrower across: wider spectrum
    assert GaborParams(decimation=[1, 1, 1, 1]).decimation == [1, 1, 1, 1]
    with pytest.raises(ValidationError, match="one entry per wavelength"):
        GaborParams(decimation=[1, 2])
    with pytest.raises(ValidationError, match="between 1 and 16"):
        GaborParams(decimation=[1, 1, 2, 0])
