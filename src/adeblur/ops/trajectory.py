"""Intra-exposure motion trajectories (M2AENet, Eq. 4 and Eq. 12) and motion-aware DCN offsets (Fig. 3).

The intra-motion analyser predicts, per pixel, the displacement from mid-exposure to the start,
o(t_0), and to the end, o(t_{N-1}), of the exposure. The trajectory functions interpolate N instants
n = 0 .. N-1 at the normalised times ``s_n = 2n / (N - 1) - 1`` in [-1, 1] (s = 0 is mid-exposure):

* Eq. 4 (quadratic): ``o(t_n) = (o(t_0) + o(t_{N-1})) / 2 * s_n**2 + (o(t_{N-1}) - o(t_0)) / 2 * s_n``,
  the parabola through o(t_0) at s = -1, 0 at s = 0 and o(t_{N-1}) at s = 1 (constant acceleration,
  as in quadratic video interpolation, Xu et al. 2019).
* Eq. 12 (linear): ``-s_n * o(t_0)`` for s_n < 0 and ``s_n * o(t_{N-1})`` for s_n > 0, i.e. two straight
  segments meeting at 0 at mid-exposure (the paper leaves n = (N-1)/2 out of both cases; it is 0).

Displacements are (B, 2, H, W) in pixels, channel 0 = x (rightwards), channel 1 = y (downwards);
trajectories are (B, N, 2, H, W). Unbatched (2, H, W) inputs give (N, 2, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_trajectory", "motion_aware_offsets", "quadratic_trajectory", "trajectory_macs"]


def _check_displacements(displacement_start: Tensor, displacement_end: Tensor, num_instants: int) -> None:
    if displacement_start.shape != displacement_end.shape:
        raise ValueError(
            f"displacement_start {tuple(displacement_start.shape)} and displacement_end "
            f"{tuple(displacement_end.shape)} must have the same shape"
        )
    if displacement_start.dim() not in (3, 4) or displacement_start.shape[-3] != 2:
        raise ValueError(f"displacements must be (B, 2, H, W) or (2, H, W), got {tuple(displacement_start.shape)}")
    if not displacement_start.is_floating_point():
        raise TypeError(f"displacements must be floating point, got {displacement_start.dtype}")
    if not isinstance(num_instants, int) or num_instants < 2:
        raise ValueError(f"num_instants must be an int >= 2, got {num_instants!r}")


def _normalised_times(num_instants: int, like: Tensor) -> Tensor:
    """s_n = 2n / (N - 1) - 1, shaped to broadcast against (..., N, 2, H, W)."""
    n = torch.arange(num_instants, device=like.device, dtype=like.dtype)
    return (2 * n / (num_instants - 1) - 1).view(num_instants, 1, 1, 1)


def quadratic_trajectory(displacement_start: Tensor, displacement_end: Tensor, num_instants: int) -> Tensor:
    """Eq. 4: displacements at N instants on the parabola through o(t_0), 0 (mid-exposure), o(t_{N-1}).

    Args:
        displacement_start: (B, 2, H, W) o(t_0), mid-exposure -> start, pixels (x, y).
        displacement_end: (B, 2, H, W) o(t_{N-1}), mid-exposure -> end.
        num_instants: N >= 2; odd N contains mid-exposure (n = (N-1)/2, where o = 0).

    Returns:
        (B, N, 2, H, W), instant n at time s_n = 2n / (N - 1) - 1.

    >>> start, end = torch.full((1, 2, 1, 1), -2.0), torch.full((1, 2, 1, 1), 4.0)
    >>> quadratic_trajectory(start, end, 5)[0, :, 0, 0, 0]
    tensor([-2.0000, -1.2500,  0.0000,  1.7500,  4.0000])
    """
    _check_displacements(displacement_start, displacement_end, num_instants)
    s = _normalised_times(num_instants, displacement_start)
    curvature = ((displacement_start + displacement_end) / 2).unsqueeze(-4)  # Eq. 4, first term
    velocity = ((displacement_end - displacement_start) / 2).unsqueeze(-4)  # Eq. 4, second term
    return curvature * s * s + velocity * s


def linear_trajectory(displacement_start: Tensor, displacement_end: Tensor, num_instants: int) -> Tensor:
    """Eq. 12: piecewise-linear displacements, o(t_0) -> 0 (mid-exposure) -> o(t_{N-1}).

    Same arguments and output as :func:`quadratic_trajectory`.

    >>> start, end = torch.full((1, 2, 1, 1), -2.0), torch.full((1, 2, 1, 1), 4.0)
    >>> linear_trajectory(start, end, 5)[0, :, 0, 0, 0]
    tensor([-2., -1.,  0.,  2.,  4.])
    """
    _check_displacements(displacement_start, displacement_end, num_instants)
    s = _normalised_times(num_instants, displacement_start)
    before = displacement_start.unsqueeze(-4) * -s  # (1 - 2n / (N - 1)) o(t_0), n < (N - 1) / 2
    after = displacement_end.unsqueeze(-4) * s  # (2n / (N - 1) - 1) o(t_{N-1}), n > (N - 1) / 2
    return torch.where(s < 0, before, after)


def motion_aware_offsets(trajectory: Tensor, *, kernel_size: int = 3, dilation: int = 1) -> Tensor:
    """DCN offsets making tap k (raster order) of a k x k kernel sample the trajectory point z + o(t_k).

    A deformable convolution with padding ``dilation * (kernel_size - 1) // 2`` and stride 1 samples
    z + p_k + Δ_k for output pixel z, where p_k is tap k's grid position relative to the centre
    ((-1, -1), (-1, 0), ..., (1, 1) for 3 x 3). M2AENet (Sec. 3.3.2, Fig. 3) wants the taps on the
    motion trajectory, so Δ_k = o(t_k) - p_k. (The text says the grid positions are *added* to
    o(t_n); used as DCN offsets that would count the grid twice, so the intent is implemented.)

    Args:
        trajectory: (B, K, 2, H, W) displacements (x, y) in pixels with K = kernel_size**2 instants
            (M2AENet: N1 = 9), e.g. from :func:`quadratic_trajectory`.
        kernel_size: odd kernel size of the deformable convolution.
        dilation: its dilation.

    Returns:
        (B, 2 * K, H, W) offsets in torchvision's layout: (dy, dx) per tap.

    A pure translation by (dx, dy) = (2, -1) at every instant makes every tap read z + (2, -1):

    >>> trajectory = torch.tensor([2.0, -1.0]).view(1, 1, 2, 1, 1).expand(1, 9, 2, 1, 1)
    >>> motion_aware_offsets(trajectory)[0, :6, 0, 0]  # taps (-1, -1), (-1, 0), (-1, 1): (dy, dx) each
    tensor([0., 3., 0., 2., 0., 1.])
    """
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    taps = kernel_size * kernel_size
    if trajectory.dim() not in (4, 5) or trajectory.shape[-4] != taps or trajectory.shape[-3] != 2:
        raise ValueError(
            f"trajectory must be (B, {taps}, 2, H, W) (one instant per tap of a {kernel_size}x{kernel_size} "
            f"kernel), got {tuple(trajectory.shape)}"
        )
    radius = kernel_size // 2
    steps = torch.arange(-radius, radius + 1, device=trajectory.device, dtype=trajectory.dtype) * dilation
    grid_y, grid_x = torch.meshgrid(steps, steps, indexing="ij")  # p_k in raster order
    grid_yx = torch.stack((grid_y.reshape(-1), grid_x.reshape(-1)), -1).view(taps, 2, 1, 1)
    offsets = trajectory.flip(-3) - grid_yx  # (x, y) -> (dy, dx) order, then Δ_k = o(t_k) - p_k
    return offsets.flatten(-4, -3)


def trajectory_macs(num_pixels: int, num_instants: int, *, kind: str = "quadratic") -> int:
    """Multiply-accumulates of a trajectory interpolation over ``num_pixels`` (= B * H * W) pixels.

    Quadratic (Eq. 4): 2 per coordinate for the two half-sum/half-difference coefficients, then 2 per
    coordinate and instant (``a * s**2 + b * s``). Linear (Eq. 12): 1 per coordinate and instant.
    :func:`motion_aware_offsets` is a subtraction: 0 MACs.

    >>> trajectory_macs(100, 9)
    4000
    """
    if kind == "quadratic":
        return num_pixels * 2 * (2 + 2 * num_instants)
    if kind == "linear":
        return num_pixels * 2 * num_instants
    raise ValueError(f"kind must be 'quadratic' or 'linear', got {kind!r}")
