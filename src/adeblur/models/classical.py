"""Classical (non-learned) restorers, registered like models: Wiener and Richardson-Lucy deconvolution with a
known blur kernel, and blind unsharp masking. They are the baselines ``adeblur evaluate`` compares against.

* :func:`wiener_deconvolution` / :class:`WienerDeconvolution`: one FFT division,
  ``X = conj(K) Y / (|K|^2 + nsr |R|^2)``, ``R`` the transfer function of the prior: the identity (default,
  the classic noise-to-signal form) or a 5-point Laplacian (scikit-image's ``wiener`` default).
* :func:`richardson_lucy` / :class:`RichardsonLucy`: the multiplicative maximum-likelihood iteration for
  Poisson noise, ``x <- x * K^T (y / (K x))``, from a flat 0.5 start as scikit-image, with FFT convolutions.
* :func:`unsharp_mask` / :class:`UnsharpMask`: ``x + amount (x - G_sigma * x)``, no kernel needed.

Conventions shared by the two kernel methods (choices documented in ``docs/evaluate.md``):

* The blur model is the one of :func:`adeblur.data.synth.blur_with_kernels`: a true convolution with the kernel
  anchored at its centre pixel ``(Kh // 2, Kw // 2)``, every channel with the same kernel. The kernel is
  normalised to sum 1 and, with ``recenter=True`` (default), first moved so that its centre of mass is that
  centre pixel (:func:`adeblur.data.synth.center_kernel`, an integer shift): a measured PSF is only known up
  to a translation, and this anchor keeps the restored image where the blurred one was.
* Borders: ``border="symmetric"`` (default) mirrors the image to ``2H x 2W`` (``[x, flip(x)]`` on both axes),
  whose periodic extension is continuous, deconvolves that with the FFT and crops the ``H x W`` original
  back. This avoids the ringing a circular FFT makes at the jump between opposite image edges, at four
  times the pixels. Channels are deconvolved one at a time (once for equal channels, as grey images read as
  RGB have); measured peak memory (CPU, float32 RGB): about 160 MiB per megapixel for Wiener, 230 for
  Richardson-Lucy (1.9 / 2.7 GiB at 12 megapixels).
  ``border="circular"`` treats the image as periodic, as scikit-image does for Wiener.
* ``gamma`` deconvolves ``image ** gamma`` and returns ``result ** (1 / gamma)``, for data blurred in linear
  light (``adeblur synth`` blurs with gamma 2.2, as a camera does). Defaults, from synthetic tuning: 1 (the
  stored values) for Wiener, 2.2 for Richardson-Lucy.
* The outputs are not clamped (like every model here); ``adeblur.engine.infer.restore`` clamps.

>>> import torch
>>> from adeblur.data.synth import blur_with_kernels
>>> sharp = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
>>> kernel = torch.ones(1, 1, 1, 5) / 5                       # horizontal box blur, 5 px
>>> blurred = blur_with_kernels(sharp, kernel, border="circular")
>>> restored = wiener_deconvolution(blurred, kernel, nsr=1e-6, prior="identity", border="circular")
>>> bool((restored - sharp).abs().max() < 1e-3)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.data.synth import center_kernel
from adeblur.errors import KernelError

__all__ = [
    "BORDERS",
    "PRIORS",
    "RichardsonLucy",
    "UnsharpMask",
    "WienerDeconvolution",
    "gaussian_blur",
    "richardson_lucy",
    "unsharp_mask",
    "wiener_deconvolution",
]

BORDERS = ("symmetric", "circular")
"""How the kernel methods extend the image beyond its edges (see the module docstring)."""
PRIORS = ("laplacian", "identity")
"""Regularisers of :func:`wiener_deconvolution`."""

DEFAULT_WIENER_NSR = 0.02
"""Default ``nsr`` of :func:`wiener_deconvolution` (identity prior), chosen on synthetic blur (docs/evaluate.md)."""
DEFAULT_WIENER_PRIOR = "identity"
"""Default prior of :func:`wiener_deconvolution`: the Laplacian under-regularises the low frequencies that long
motion kernels remove, and even at its best ``nsr`` stayed 2.6-3.3 dB below the identity on synthetic camera
shake (docs/evaluate.md)."""
DEFAULT_RL_ITERATIONS = 30
"""Default iteration count of :func:`richardson_lucy`, chosen on synthetic blur (docs/evaluate.md)."""
DEFAULT_RL_GAMMA = 2.2
"""Default ``gamma`` of :func:`richardson_lucy`: deconvolving linear light won 0.6 dB on synthetic blur made in
linear light (as camera blur is, and ``adeblur synth``'s), and lost 0.7 dB on blur made in stored values;
Wiener did better with ``gamma=1`` on both (docs/evaluate.md)."""
DEFAULT_UNSHARP_SIGMA = 2.0
"""Default Gaussian sigma (pixels) of :func:`unsharp_mask`, chosen on mild synthetic blur (docs/evaluate.md)."""
DEFAULT_UNSHARP_AMOUNT = 0.5
"""Default ``amount`` of :func:`unsharp_mask`, chosen with the sigma."""

_MISSING_KERNEL = "needs a blur kernel: a kernel/ folder in the paired dataset layout, or --kernel FILE"


def _check_images(image: Tensor, name: str) -> None:
    if not isinstance(image, Tensor) or image.ndim != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) image batch, got {getattr(image, 'shape', type(image))}")
    if not image.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point image batch, got {image.dtype}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in float64 for float64 input, else in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kernel_batch(kernel: Tensor, images: Tensor, dtype: torch.dtype, recenter: bool, name: str) -> Tensor:
    """Check a kernel for ``images``; return it as ``(B or 1, 1, Kh, Kw)`` in ``dtype`` on the images' device,
    each kernel normalised to sum 1 (and re-centred)."""
    if not isinstance(kernel, Tensor):
        raise TypeError(f"{name}: kernel must be a torch.Tensor, got {type(kernel).__name__}")
    kernel = kernel.to(device=images.device, dtype=dtype)
    batch = images.shape[0]
    if kernel.ndim == 2:
        kernel = kernel[None, None]
    elif kernel.ndim == 3 and kernel.shape[0] == 1:
        kernel = kernel[None]
    if kernel.ndim != 4 or kernel.shape[1] != 1 or kernel.shape[0] not in (1, batch):
        raise ValueError(
            f"{name}: kernel must be (Kh, Kw), (1, Kh, Kw), (1, 1, Kh, Kw) or ({batch}, 1, Kh, Kw), "
            f"got shape {tuple(kernel.shape)}"
        )
    if not bool(torch.isfinite(kernel).all()) or bool((kernel < 0).any()):
        raise KernelError(f"{name}: the blur kernel must be finite and non-negative")
    sums = kernel.sum(dim=(-2, -1), keepdim=True)
    if not bool((sums > 0).all()):
        raise KernelError(f"{name}: the blur kernel sums to 0")
    kernel = kernel / sums
    if not recenter:
        return kernel
    centred = [center_kernel(k[0]) for k in kernel]
    side = max(k.shape[-1] for k in centred)
    return torch.stack([center_kernel(k, side) for k in centred]).unsqueeze(1)


def _extend(image: Tensor, border: str) -> Tensor:
    """The FFT domain: the image itself (``circular``) or its ``2H x 2W`` mirror extension (``symmetric``)."""
    if border == "circular":
        return image
    image = torch.cat([image, image.flip(-1)], dim=-1)
    return torch.cat([image, image.flip(-2)], dim=-2)


def _transfer_function(kernel: Tensor, shape: tuple[int, int]) -> Tensor:
    """rfft2 of the kernel on an ``H x W`` grid, its centre pixel ``(Kh // 2, Kw // 2)`` moved to the origin."""
    kernel_h, kernel_w = kernel.shape[-2:]
    padded = F.pad(kernel, (0, shape[1] - kernel_w, 0, shape[0] - kernel_h))
    padded = padded.roll((-(kernel_h // 2), -(kernel_w // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded)


def _laplacian_power(shape: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``|L|^2`` of the 5-point Laplacian ``[[0,-1,0],[-1,4,-1],[0,-1,0]]`` on the rfft2 grid of ``shape``."""
    rows = torch.fft.fftfreq(shape[0], device=device, dtype=dtype)
    cols = torch.fft.rfftfreq(shape[1], device=device, dtype=dtype)
    response = 4 - 2 * torch.cos(2 * math.pi * rows)[:, None] - 2 * torch.cos(2 * math.pi * cols)[None, :]
    return response**2


def _prepare(
    image: Tensor, kernel: Tensor, border: str, recenter: bool, gamma: float, name: str
) -> tuple[Tensor, tuple[int, int]]:
    """Common front end: checks; returns the transfer function(s) ``(B or 1, 1, h, w // 2 + 1)`` and the FFT
    domain ``(h, w)``."""
    _check_images(image, name)
    if border not in BORDERS:
        raise ValueError(f"{name}: border must be one of {BORDERS}, got {border!r}")
    if not gamma > 0:
        raise ValueError(f"{name}: gamma must be positive, got {gamma!r}")
    height, width = image.shape[-2:]
    kernel = _kernel_batch(kernel, image, _work_dtype(image.dtype), recenter, name)
    domain = (height, width) if border == "circular" else (2 * height, 2 * width)
    if kernel.shape[-2] > domain[0] or kernel.shape[-1] > domain[1]:
        raise KernelError(
            f"{name}: a {kernel.shape[-2]}x{kernel.shape[-1]} kernel does not fit a {height}x{width} image "
            f"with border={border!r}"
        )
    return _transfer_function(kernel, domain), domain


def _channel_signal(channel: Tensor, border: str, gamma: float) -> Tensor:
    """One ``(B, 1, H, W)`` channel in the working dtype, linearised and extended to the FFT domain."""
    signal = channel.to(_work_dtype(channel.dtype))
    if gamma != 1:
        signal = signal.clamp(0, 1) ** gamma
    return _extend(signal, border)


def _per_channel(image: Tensor, restore_channel: Callable[[Tensor], Tensor]) -> Tensor:
    """``restore_channel`` on each ``(B, 1, H, W)`` channel, one at a time (a third of the temporaries of all
    at once); a channel equal to an earlier one (grey images read as RGB) reuses that result."""
    channels = image.split(1, dim=1)
    restored: list[Tensor] = []
    for index, channel in enumerate(channels):
        earlier = next((j for j in range(index) if torch.equal(channel, channels[j])), None)
        restored.append(restore_channel(channel) if earlier is None else restored[earlier])
    return torch.cat(restored, dim=1)


def _finish(restored: Tensor, size: tuple[int, int], gamma: float, dtype: torch.dtype) -> Tensor:
    restored = restored[..., : size[0], : size[1]]
    if gamma != 1:
        restored = restored.clamp_min(0) ** (1 / gamma)
    return restored.to(dtype)


def wiener_deconvolution(
    image: Tensor,
    kernel: Tensor,
    *,
    nsr: float = DEFAULT_WIENER_NSR,
    prior: str = DEFAULT_WIENER_PRIOR,
    border: str = "symmetric",
    recenter: bool = True,
    gamma: float = 1.0,
) -> Tensor:
    """Wiener(-Hunt) deconvolution with a known kernel: ``X = conj(K) Y / (|K|^2 + nsr |R|^2)``.

    With ``prior="identity"`` (default, ``R = 1``) this is the classic Wiener filter for a white signal whose
    noise-to-signal power ratio is ``nsr``; ``"laplacian"`` (``R`` the 5-point Laplacian) penalises high
    frequencies more than low ones (scikit-image's ``restoration.wiener`` with ``balance=nsr``).

    Args:
        image: ``(B, C, H, W)`` float, blurred.
        kernel: ``(Kh, Kw)``, ``(1, Kh, Kw)``, ``(1, 1, Kh, Kw)`` (shared) or ``(B, 1, Kh, Kw)`` (one per
            image); non-negative, normalised here to sum 1. Kernel size is free (even sizes anchor at
            ``Kh // 2``).
        nsr: regularisation weight (> 0).
        prior: ``"laplacian"`` or ``"identity"``.
        border, recenter, gamma: see the module docstring.

    Returns:
        ``(B, C, H, W)`` in the input's dtype, not clamped.

    Raises:
        KernelError: a negative, non-finite or all-zero kernel, or one larger than the FFT domain.

    >>> image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> wiener_deconvolution(image, torch.ones(3, 3)).shape
    torch.Size([2, 3, 16, 16])
    """
    if not nsr > 0:
        raise ValueError(f"wiener_deconvolution: nsr must be positive, got {nsr!r}")
    if prior not in PRIORS:
        raise ValueError(f"wiener_deconvolution: prior must be one of {PRIORS}, got {prior!r}")
    transfer, domain = _prepare(image, kernel, border, recenter, gamma, "wiener_deconvolution")
    penalty = 1.0 if prior == "identity" else _laplacian_power(domain, image.device, transfer.real.dtype)
    wiener_filter = transfer.conj() / (transfer.abs() ** 2 + nsr * penalty)

    def restore_channel(channel: Tensor) -> Tensor:
        spectrum = torch.fft.rfft2(_channel_signal(channel, border, gamma)).mul_(wiener_filter)
        return _finish(torch.fft.irfft2(spectrum, s=domain), image.shape[-2:], gamma, image.dtype)

    return _per_channel(image, restore_channel)


def richardson_lucy(
    image: Tensor,
    kernel: Tensor,
    *,
    iterations: int = DEFAULT_RL_ITERATIONS,
    border: str = "symmetric",
    recenter: bool = True,
    gamma: float = DEFAULT_RL_GAMMA,
) -> Tensor:
    """Richardson-Lucy deconvolution: ``x <- x * K^T (y / (K x))`` from ``x = 0.5``, ``iterations`` times.

    The maximum-likelihood (EM) iteration for Poisson noise; the iteration count is the regulariser (more
    iterations restore more detail and amplify more noise). Both convolutions are FFT products on the
    domain of ``border``; ``K x`` is kept above a tiny epsilon (1e-12 in float64, 1e-7 otherwise) so that
    dark pixels divide safely, and negative input values count as 0.

    Args:
        image: ``(B, C, H, W)`` float, blurred, non-negative.
        kernel: as :func:`wiener_deconvolution`.
        iterations: number of updates (>= 1).
        gamma: 2.2 by default (see :data:`DEFAULT_RL_GAMMA`); 1 deconvolves the stored values.
        border, recenter: see the module docstring.

    Returns:
        ``(B, C, H, W)`` in the input's dtype, non-negative, not clamped above.

    >>> image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> restored = richardson_lucy(image, torch.ones(1, 3), iterations=5)
    >>> restored.shape, bool((restored >= 0).all())
    (torch.Size([1, 1, 16, 16]), True)
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"richardson_lucy: iterations must be a positive integer, got {iterations!r}")
    transfer, domain = _prepare(image, kernel, border, recenter, gamma, "richardson_lucy")
    adjoint = transfer.conj()  # the flipped kernel: K^T
    epsilon = 1e-12 if transfer.real.dtype == torch.float64 else 1e-7

    def restore_channel(channel: Tensor) -> Tensor:
        observed = _channel_signal(channel, border, gamma).clamp_min(0)
        estimate = torch.full_like(observed, 0.5)
        for _ in range(iterations):
            reblurred = torch.fft.irfft2(torch.fft.rfft2(estimate).mul_(transfer), s=domain).clamp_min_(epsilon)
            ratio_spectrum = torch.fft.rfft2(observed / reblurred).mul_(adjoint)
            estimate.mul_(torch.fft.irfft2(ratio_spectrum, s=domain)).clamp_min_(0)
        return _finish(estimate, image.shape[-2:], gamma, image.dtype)

    return _per_channel(image, restore_channel)


def _symmetric_index(length: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices of an axis extended by half-sample symmetric reflection (``d c b a | a b c d | d c b a``)."""
    index = torch.arange(-before, length + after, device=device) % (2 * length)
    return torch.where(index < length, index, 2 * length - 1 - index)


def gaussian_blur(image: Tensor, sigma: float, *, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)``, radius ``int(truncate * sigma + 0.5)``, symmetric borders.

    The same filter as ``scipy.ndimage.gaussian_filter(mode="reflect")`` (scikit-image's ``gaussian``), any
    radius, even one larger than the image.

    >>> gaussian_blur(torch.ones(1, 1, 4, 4), 1.0).sum().item()
    16.0...
    """
    _check_images(image, "gaussian_blur")
    if not sigma > 0:
        raise ValueError(f"gaussian_blur: sigma must be positive, got {sigma!r}")
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    batch, channels, height, width = image.shape
    rows = _symmetric_index(height, radius, radius, image.device)
    cols = _symmetric_index(width, radius, radius, image.device)
    padded = image.index_select(-2, rows).index_select(-1, cols).reshape(batch * channels, 1, *rows.shape, *cols.shape)
    blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, -1, 1)), taps.view(1, 1, 1, -1))
    return blurred.view(batch, channels, height, width)


def unsharp_mask(
    image: Tensor, *, sigma: float = DEFAULT_UNSHARP_SIGMA, amount: float = DEFAULT_UNSHARP_AMOUNT
) -> Tensor:
    """Blind sharpening: ``image + amount * (image - gaussian_blur(image, sigma))``, per channel, not clamped.

    Equals scikit-image's ``filters.unsharp_mask(radius=sigma, amount=amount)`` before its clipping.

    >>> image = torch.zeros(1, 1, 5, 5); image[..., 2, 2] = 1
    >>> round(unsharp_mask(image, sigma=0.5, amount=2.0)[0, 0, 2, 2].item(), 3)
    1.763
    """
    return image + amount * (image - gaussian_blur(image, sigma))


class _KernelDeconvolution(nn.Module):
    """Shared parts of the kernel methods: registry attributes and the kernel check."""

    size_multiple = 1
    needs_kernel = True
    tileable = False  # a deconvolution is global: tiles would see the kernel's support cut off

    def _require(self, kernel: Tensor | None) -> Tensor:
        if kernel is None:
            raise KernelError(f"{type(self).__name__} {_MISSING_KERNEL}")
        return kernel


class WienerDeconvolution(_KernelDeconvolution):
    """:func:`wiener_deconvolution` as a model: ``forward(image (B, 3, H, W), kernel)``; no parameters.

    >>> model = WienerDeconvolution()
    >>> model(torch.rand(1, 3, 16, 16), torch.ones(1, 3, 3)).shape
    torch.Size([1, 3, 16, 16])
    >>> model(torch.rand(1, 3, 16, 16))
    Traceback (most recent call last):
    ...
    adeblur.errors.KernelError: WienerDeconvolution needs a blur kernel: a kernel/ folder in the paired ...
    """

    def __init__(
        self,
        nsr: float = DEFAULT_WIENER_NSR,
        prior: str = DEFAULT_WIENER_PRIOR,
        border: str = "symmetric",
        recenter: bool = True,
        gamma: float = 1.0,
    ) -> None:
        super().__init__()
        if not nsr > 0 or prior not in PRIORS or border not in BORDERS or not gamma > 0:
            raise ValueError(
                f"WienerDeconvolution: need nsr > 0, prior in {PRIORS}, border in {BORDERS}, gamma > 0; "
                f"got nsr={nsr!r}, prior={prior!r}, border={border!r}, gamma={gamma!r}"
            )
        self.nsr, self.prior, self.border, self.recenter, self.gamma = nsr, prior, border, recenter, gamma

    def forward(self, image: Tensor, kernel: Tensor | None = None) -> Tensor:
        return wiener_deconvolution(
            image, self._require(kernel), nsr=self.nsr, prior=self.prior, border=self.border,
            recenter=self.recenter, gamma=self.gamma,
        )  # fmt: skip

    def extra_repr(self) -> str:
        options = f"nsr={self.nsr}, prior={self.prior!r}, border={self.border!r}"
        return f"{options}, recenter={self.recenter}, gamma={self.gamma}"


class RichardsonLucy(_KernelDeconvolution):
    """:func:`richardson_lucy` as a model: ``forward(image (B, 3, H, W), kernel)``; no parameters.

    >>> RichardsonLucy(iterations=3)(torch.rand(1, 3, 16, 16), torch.ones(1, 3, 3)).shape
    torch.Size([1, 3, 16, 16])
    """

    def __init__(
        self,
        iterations: int = DEFAULT_RL_ITERATIONS,
        border: str = "symmetric",
        recenter: bool = True,
        gamma: float = DEFAULT_RL_GAMMA,
    ) -> None:
        super().__init__()
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"RichardsonLucy: iterations must be a positive integer, got {iterations!r}")
        if border not in BORDERS or not gamma > 0:
            raise ValueError(f"RichardsonLucy: need border in {BORDERS} and gamma > 0, got {border!r}, {gamma!r}")
        self.iterations, self.border, self.recenter, self.gamma = iterations, border, recenter, gamma

    def forward(self, image: Tensor, kernel: Tensor | None = None) -> Tensor:
        return richardson_lucy(
            image, self._require(kernel), iterations=self.iterations, border=self.border, recenter=self.recenter,
            gamma=self.gamma,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, border={self.border!r}, recenter={self.recenter}, gamma={self.gamma}"


class UnsharpMask(nn.Module):
    """:func:`unsharp_mask` as a model: blind, ``forward(image (B, 3, H, W), kernel=None)`` ignores ``kernel``.

    >>> UnsharpMask()(torch.full((1, 3, 8, 8), 0.5)).unique().tolist()
    [0.5]
    """

    size_multiple = 1
    needs_kernel = False
    tileable = True

    def __init__(self, sigma: float = DEFAULT_UNSHARP_SIGMA, amount: float = DEFAULT_UNSHARP_AMOUNT) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"UnsharpMask: sigma must be positive, got {sigma!r}")
        self.sigma, self.amount = sigma, amount

    def forward(self, image: Tensor, kernel: Tensor | None = None) -> Tensor:
        return unsharp_mask(image, sigma=self.sigma, amount=self.amount)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, amount={self.amount}"
