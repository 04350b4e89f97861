"""The descriptor spec: every parameter that determines a descriptor, as one hashable JSON document.

A descriptor (D filters x B bins of per-filter response histograms) is only comparable with descriptors
computed under the same spec; ``spec_hash`` (SHA-256 of the canonical JSON) is what the index, the service and
the client compare. Every field takes part in the hash, so changing any parameter (size, bins, a wavelength,
one edge, one weight) changes it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.fileio import atomic_write
from services.weights import IMAGENET_MEAN, IMAGENET_STD

# Conv architectures (torchvision or timm names, services/backbones.py) whose stem is a plain chain of modules
# (conv -> [bn] -> activation -> [pool] -> conv), so the first two conv layers can be run exactly as in the
# network without its forward().
CONV_ARCH_PREFIXES = (
    "alexnet", "vgg", "resnet", "resnext", "wide_resnet", "efficientnet", "tf_efficientnet", "mobilenet",
    "mnasnet", "timm/resnet", "timm/efficientnet", "timm/tf_efficientnet",
)



def sigma_for_bandwidth(wavelength: float, bandwidth_octaves: float) -> float:
    """Gaussian envelope sigma (px) giving a half-magnitude frequency bandwidth of ``bandwidth_octaves``.

    sigma = lambda / pi * sqrt(ln 2 / 2) * (2^b + 1) / (2^b - 1)  (Petkov & Kruizinga); b = 1 gives 0.5622 *
    lambda.
    """
    b2 = 2.0**bandwidth_octaves
    return wavelength / math.pi * math.sqrt(math.log(2.0) / 2.0) * (b2 + 1.0) / (b2 - 1.0)


def decimation_for(wavelength: float, sigma: float, aspect_ratio: float = 1.0, max_factor: int = 8) -> int:
    """Largest power-of-two grid spacing d <= max_factor with Nyquist 1/(2d) >= f0 + 4 sigma_f (see
    ``GaborParams.decimation``); sigma_f uses the envelope's narrower axis (the wider spectrum)."""
    reach = 1.0 / wavelength + 4.0 * max(1.0, aspect_ratio) / (2.0 * math.pi * sigma)  # cycles/px
    factor = 1
    while 2 * factor <= max_factor and 1.0 / (2.0 * (2 * factor)) >= reach:
        factor *= 2
    return factor


class GaborParams(BaseModel):
    """A classic texture Gabor bank on the luminance channel.

    Choices (all hashed):
    - ``wavelengths`` (px) 2.5, 5, 10, 20: centre frequencies 0.4, 0.2, 0.1, 0.05 cycles/px, one octave apart,
      so four 1-octave-bandwidth scales tile 0.05..0.4 cycles/px (DESIGN.md).
    - ``orientations`` = 6: 0, 30, ..., 150 degrees. With an isotropic envelope (``aspect_ratio`` = 1) and
      1-octave bandwidth the angular half-magnitude bandwidth is about +-18 degrees, so 30-degree steps tile
      the half-plane with small overlap. theta is the direction of the wave vector (the stripes run
      perpendicular).
    - ``sigmas``: per wavelength, from the bandwidth (``sigma_for_bandwidth``: 0.5622 * lambda for 1 octave).
    - ``kernel_sizes``: 2 * ceil(3 sigma) + 1 (odd, > 99.7 % of the envelope), capped at ``max_kernel_size``:
      11, 19, 35, 69 px by default. Responses are computed by FFT, so large kernels cost nothing extra.
    - Each orientation has a real (even, cosine) and an imaginary (odd, sine) kernel: 4 x 6 x 2 = 48 filters.
      The real kernel has its mean removed (zero DC: flat regions respond 0, brightness does not leak into the
      texture channels); both are divided by the envelope's sum, so a full-contrast matched grating gives
      about +-0.5.
    - ``luma``: ITU-R BT.601 weights; luminance in [0, 1].
    - ``padding`` = "reflect": 'same'-size responses for every pixel, the image mirrored about its edge pixels
      (torch ``reflect`` = scipy ``mirror``); responses are true convolutions (kernel flipped).
    - ``zero_below`` = 1e-5: responses with |v| <= zero_below are set to exactly 0. Flat regions respond 0 in
      exact arithmetic but +-1e-7 in float32 FFT; as the middle edges of these symmetric distributions sit
      near 0, such round-off would scatter every flat pixel across two bins differently on CPU, CUDA or a
      direct convolution. One grey level (1/255) gives responses ~1e-3, so real texture is never touched.
    - Filter order: scale-major, then orientation, then (real, imag): index = (s * O + o) * 2 + part.
    - ``decimation``: per scale, the spacing d (px) of the grid on which that scale's responses are
      HISTOGRAMMED (``responses`` are always per pixel). A Gabor of centre frequency f0 = 1/lambda has
      frequency-domain sigma sigma_f = 1/(2 pi sigma) (times the aspect ratio across the stripes); beyond
      f0 + 4 sigma_f per axis its gain is < e^-8 = 3e-4 of the peak, so the response is band-limited and its
      samples on a d-px grid (Nyquist 1/(2d) >= f0 + 4 sigma_f) carry the same distribution as every pixel.
      The bank then computes those samples directly, by an inverse FFT d^2 times smaller of the central
      band of the spectrum. Derived when omitted (``decimation_for``): the largest power of two allowed,
      capped at 8 -> [1, 1, 2, 4] by default (grids of 224^2, 224^2, 112^2 and 56^2 samples at 224 px).
      [1] * scales gives exact per-pixel histograms. The grid is centred in the image (offset
      ``(S - 1 - d * (ceil(S / d) - 1)) // 2``).
    """

    model_config = ConfigDict(extra="forbid")

    wavelengths: list[float] = Field(default_factory=lambda: [2.5, 5.0, 10.0, 20.0], min_length=1)
    orientations: int = Field(6, ge=1, le=64)
    bandwidth_octaves: float = Field(1.0, gt=0.0, le=4.0)
    aspect_ratio: float = Field(1.0, gt=0.0, le=4.0, description="Envelope sigma across / along the stripes.")
    sigmas: list[float] | None = Field(
        None, description="Per wavelength; derived from the bandwidth when omitted."
    )
    kernel_sizes: list[int] | None = Field(None, description="Per wavelength, odd; derived when omitted.")
    max_kernel_size: int = Field(101, ge=3)
    luma: tuple[float, float, float] = (0.299, 0.587, 0.114)
    padding: Literal["reflect"] = "reflect"
    zero_mean: bool = True
    zero_below: float = Field(1e-5, ge=0.0, description="|response| <= this is set to exactly 0.")
    decimation: list[int] | None = Field(
        None,
        description="Per wavelength, histogram grid spacing in px (1 = every pixel); derived when omitted.",
    )

    @model_validator(mode="after")
    def _derive(self) -> GaborParams:
        if any(w < 2.0 for w in self.wavelengths):
            raise ValueError("wavelengths must be >= 2 px (the Nyquist limit)")
        if self.sigmas is None:
            self.sigmas = [sigma_for_bandwidth(w, self.bandwidth_octaves) for w in self.wavelengths]
        if self.kernel_sizes is None:
            cap = self.max_kernel_size if self.max_kernel_size % 2 else self.max_kernel_size - 1
            # The envelope's longest sigma (along the stripes) decides the support.
            longest = [s / min(self.aspect_ratio, 1.0) for s in self.sigmas]
            self.kernel_sizes = [min(2 * math.ceil(3.0 * s) + 1, cap) for s in longest]
        if self.decimation is None:
            self.decimation = [
                decimation_for(w, s, self.aspect_ratio)
                for w, s in zip(self.wavelengths, self.sigmas, strict=False)
            ]
        if (
            len(self.sigmas) != len(self.wavelengths)
            or len(self.kernel_sizes) != len(self.wavelengths)
            or len(self.decimation) != len(self.wavelengths)
        ):
            raise ValueError("sigmas, kernel_sizes and decimation need one entry per wavelength")
        if any(not 1 <= d <= 16 for d in self.decimation):
            raise ValueError("decimation factors must be between 1 and 16")
        if any(s <= 0 for s in self.sigmas):
            raise ValueError("sigmas must be positive")
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError("kernel_sizes must be positive odd integers")
        return self

    @property
    def n_filters(self) -> int:
        return len(self.wavelengths) * self.orientations * 2


class ConvParams(BaseModel):
    """First (and optionally second) conv layer of a torchvision CNN with local weights, pre-activation
    responses."""

    model_config = ConfigDict(extra="forbid")

    arch: str = "alexnet"
    layers: Literal[1, 2] = 1
    weights_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    pre_activation: Literal[True] = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _known_arch(self) -> ConvParams:
        if not self.arch.startswith(CONV_ARCH_PREFIXES):
            raise ValueError(
                f"conv arch {self.arch!r} not supported; use one of {', '.join(CONV_ARCH_PREFIXES)}*"
            )
        return self


class DescriptorSpec(BaseModel):
    """Bank parameters, image size, bins, fitted edges and filter weights of a descriptor (see module
    docstring)."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    bank: Literal["gabor", "conv"]
    size: int = Field(224, ge=8, le=4096)
    bins: int = Field(16, ge=2, le=1024)
    gabor: GaborParams | None = None
    conv: ConvParams | None = None
    layer_sizes: list[int] = Field(
        ..., min_length=1, description="Filters per layer, e.g. [48] or [64, 192]."
    )
    edges: list[list[float]] | None = Field(
        None, description="D x (bins - 1) inner edges; None until fitted."
    )
    weights: list[float] = Field(..., description="D filter weights, w_h = 1 / (L * filters in h's layer).")
    default_metric: str = "js"

    @model_validator(mode="after")
    def _consistent(self) -> DescriptorSpec:
        if (self.bank == "gabor") != (self.gabor is not None) or (self.bank == "conv") != (
            self.conv is not None
        ):
            raise ValueError(f"bank {self.bank!r} needs exactly its own parameter block ({self.bank}: ...)")
        if self.gabor is not None and self.layer_sizes != [self.gabor.n_filters]:
            raise ValueError(
                f"gabor bank has {self.gabor.n_filters} filters, layer_sizes says {self.layer_sizes}"
            )
        if self.conv is not None and len(self.layer_sizes) != self.conv.layers:
            raise ValueError(f"conv bank with {self.conv.layers} layer(s) needs as many layer_sizes")
        if any(n < 1 for n in self.layer_sizes):
            raise ValueError("layer_sizes must be positive")
        dim = sum(self.layer_sizes)
        if len(self.weights) != dim:
            raise ValueError(f"weights has {len(self.weights)} entries, expected D = {dim}")
        if self.edges is not None:
            edges = np.asarray(self.edges, dtype=np.float64)
            if edges.shape != (dim, self.bins - 1):
                raise ValueError(f"edges must be D x (bins - 1) = {dim} x {self.bins - 1}, got {edges.shape}")
            if not np.isfinite(edges).all() or (self.bins > 2 and not (np.diff(edges, axis=1) > 0).all()):
                raise ValueError("edges must be finite and strictly increasing along each row")
            # Stored exactly as the float32 values that are used, so save/load/hash round-trips bit for bit.
            self.edges = edges.astype(np.float32).astype(np.float64).tolist()
        return self

    @property
    def dim(self) -> int:
        """D, the number of filters (descriptor rows)."""
        return sum(self.layer_sizes)

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace; floats as Python's shortest round-trip repr (stable on save/load)."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False
        )

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def weights_array(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=np.float32)  # (D,)

    def edges_array(self) -> np.ndarray:
        if self.edges is None:
            raise ValueError("this spec has no fitted edges yet (fit_edges first)")
        return np.asarray(self.edges, dtype=np.float32).reshape(self.dim, self.bins - 1)  # (D, B-1)

    def with_edges(self, edges: np.ndarray | list[list[float]]) -> DescriptorSpec:
        """A new, validated spec with these (D, B-1) edges."""
        data = self.model_dump(mode="json")
        data["edges"] = np.asarray(edges, dtype=np.float32).tolist()
        return DescriptorSpec.model_validate(data)

    def save(self, path: str | Path) -> None:
        """Write the canonical JSON (atomically: temp file + rename)."""
        atomic_write(path, self.canonical_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DescriptorSpec:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def layer_weights(layer_sizes: list[int]) -> list[float]:
    """w_h = 1 / (L * n_l) for every filter h of layer l (each layer carries total weight 1/L)."""
    n_layers = len(layer_sizes)
    return [1.0 / (n_layers * n) for n in layer_sizes for _ in range(n)]


def gabor_spec(size: int = 224, bins: int = 16, params: GaborParams | None = None) -> DescriptorSpec:
    """The default Gabor spec (no edges yet)."""
    params = params or GaborParams()
    sizes = [params.n_filters]
    return DescriptorSpec(
        bank="gabor", size=size, bins=bins, gabor=params, layer_sizes=sizes, weights=layer_weights(sizes)
    )
