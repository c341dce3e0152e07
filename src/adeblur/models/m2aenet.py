"""M2AENet: mask- and motion-aware efficient network for local motion deblurring (Shang et al. 2025).

NAFNet (see :mod:`adeblur.models.nafnet`) whose blocks at the chosen stages become M2AS blocks, guided
per stage by a blur mask and an intra-exposure motion field predicted from the stage input. Top-down,
as the paper's Fig. 2 and Sec. 3:

1. :class:`MaskPredictor` (Sec. 3.1, Eq. 1): per-pixel logits over {blur, sharp}; softmax gives
   ``p``. Training: hard Gumbel-softmax sample with a straight-through gradient (Eq. 2); eval:
   ``mask = p_blur > 0.5`` (Eq. 3).
2. :class:`IntraMotionAnalyser` (Sec. 3.2): one 3x3 conv -> ``displacement_start`` o(t_0) and
   ``displacement_end`` o(t_{N-1}) (pixels of that stage); Eq. 4 (quadratic, default) or Eq. 12
   (linear) gives the N1 = 9 instants; instant n drives tap n (raster order) of the motion-aware
   deformable conv, which samples z + o(t_n) (:func:`adeblur.ops.motion_aware_offsets`).
3. :class:`M2ASBlock` (Sec. 3.3, Eq. 5-6): NAFBlock whose first conv is mask-aware
   (:func:`mask_aware_gate`, ``Conv(f1) * m + Rep(f1) * (1 - m)``) and whose FFN has a depthwise
   motion-aware DConv between its 1x1 conv and SimpleGate (:class:`MotionAwareConv`).

Choices the paper leaves open (details, reasons and measurements in ``docs/m2aenet.md``):

* ``placement="last-encoder"`` (default, Appendix A: "only to the fourth stage of the encoder"): one
  mask predictor and analyser at the input of the deepest encoder stage, whose blocks are M2AS
  blocks; every other stage keeps NAFBlocks. This gives +0.326 M parameters (paper: +0.33 M, 17.44 M
  in all). ``"all-stages"`` (Sec. 3: "at each scale") puts them in every stage.
* The motion-aware DConv is mask-aware too: ``DConv(f4, d) * m + f4 * (1 - m)`` (Eq. 5's pattern),
  so at sharp pixels the FFN is exactly NAFNet's. Part of the model in training and in both inference
  paths; it lets the pruned path run the DConv at blurred pixels only.
* ``pruned_inference`` (default True): in eval mode the mask-aware conv and the DConv run only on
  blurred pixels (Fig. 2c); False runs the dense masked path (as in training). Both compute the same
  function (max difference ~1e-6, float rounding).
* The network runs channels-last inside (faster on CPU) and returns a contiguous NCHW tensor.

``forward(image, return_aux=True)`` returns ``(restored, aux)``, ``aux[stage]`` a dict per guided
stage (``"encoder4"`` by default) with ``scale`` (its downsampling factor), ``blur_logit``
(B, 1, h, w; ``log p_blur - log p_sharp``), ``blur_probability`` and ``blur_mask`` (B, 1, h, w),
``displacement_start`` and ``displacement_end`` (B, 2, h, w; the analyser's raw output, which the
reblur loss supervises) and ``trajectory`` (``"quadratic"`` or ``"linear"``) -- the keys of the parts
the variant has.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.models.blocks import (
    LayerNorm2d,
    NAFBlock,
    SimpleGate,
    SimplifiedChannelAttention,
    local_mean,
    simple_gate,
)
from adeblur.models.nafnet import check_image_batch, pad_to_multiple
from adeblur.ops import (
    DeformConv2d,
    SamplingPlan,
    build_sampling_plan,
    gather_pixels,
    linear_trajectory,
    mask_aware_conv,
    mask_to_pixel_index,
    motion_aware_offsets,
    quadratic_trajectory,
)

__all__ = [
    "BlurredPixels",
    "IntraMotionAnalyser",
    "M2AENet",
    "M2ASBlock",
    "MaskPredictor",
    "MotionAwareConv",
    "StageGuidance",
    "downsample_mask",
    "find_blurred_pixels",
    "gumbel_blur_mask",
    "mask_aware_gate",
]

#: Trajectory instants N1 of the motion-aware DConv: one per tap of its 3x3 kernel (Sec. 3.3.2).
NUM_TAPS = 9
PLACEMENTS = ("last-encoder", "all-stages")
TRAJECTORIES = {"quadratic": quadratic_trajectory, "linear": linear_trajectory}


def downsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Blur mask (B, 1, H, W) -> (B, 1, h, w) in {0, 1}: area average, then ``>= 0.5``.

    A pixel of the smaller map is blurred when at least half of the area it covers is. The same rule
    makes the ground truth of the mask loss at every scale and resizes a forced mask.

    >>> mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).view(1, 1, 2, 4)
    >>> downsample_mask(mask, (1, 2)).flatten().tolist()
    [1.0, 0.0]
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) == tuple(size):
        return (mask >= 0.5).to(mask.dtype)
    return (F.adaptive_avg_pool2d(mask, size) >= 0.5).to(mask.dtype)


def gumbel_blur_mask(logits: Tensor, *, generator: torch.Generator, tau: float = 1.0) -> Tensor:
    """Hard Gumbel-softmax sample of the blur class (Eq. 2), straight-through: (B, 2, h, w) -> (B, 1, h, w).

    The forward value is exactly 0 or 1 (1 where ``logits + Gumbel noise`` favour blur); the gradient
    is that of ``softmax((logits + noise) / tau)[:, 0]``. The uniform noise is drawn from ``generator``
    on its own device, then moved to the logits' device.

    >>> logits = torch.tensor([10.0, -10.0]).view(1, 2, 1, 1)  # certainly blurred
    >>> gumbel_blur_mask(logits, generator=torch.Generator().manual_seed(0)).item()
    1.0
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must be (B, 2, h, w), got shape {tuple(logits.shape)}")
    uniform = torch.rand(logits.shape, generator=generator, device=generator.device)
    uniform = uniform.to(device=logits.device, dtype=logits.dtype)
    tiny = torch.finfo(logits.dtype).tiny
    exponential = -torch.log(uniform.clamp_min(tiny))  # Exp(1)
    gumbel = -torch.log(exponential.clamp_min(tiny))
    soft = torch.softmax((logits + gumbel) / tau, dim=1)[:, :1]
    hard = (soft >= 0.5).to(soft.dtype)  # argmax of two classes
    return hard - soft.detach() + soft


class MaskPredictor(nn.Module):
    """Per-pixel blur/sharp logits from stage features (Eq. 1), (B, C, h, w) -> (B, 2, h, w).

    Pixel-wise MLPs in the DynamicViT / LMD-ViT style the paper follows (it gives no layers; our reading,
    see docs/m2aenet.md), as 1x1 convs: embed each pixel (1x1, GELU, LayerNorm, 1x1, C channels); keep the first C/2 channels as the
    local feature and replace the other C/2 by their average over all pixels of the image (the global
    feature); classify the concatenation (1x1 C -> C/2, GELU, C/2 -> C/4, GELU, C/4 -> 2).
    Channel 0 is blur, channel 1 sharp; ``softmax(dim=1)`` gives ``p`` of Eq. 1.

    Attributes:
        pool_window: None (default: the global feature averages the whole image) or a window in pixels
            of the features: each pixel's global feature is then the mean over its window
            (:func:`~adeblur.models.blocks.local_mean`; TLC at inference, see ``docs/deblur.md``).
        pool_border: how windows meet the image border, see :func:`~adeblur.models.blocks.local_mean`.

    >>> MaskPredictor(16)(torch.rand(2, 16, 5, 7)).shape
    torch.Size([2, 2, 5, 7])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"MaskPredictor needs channels divisible by 4, got {channels}")
        self.embed = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.GELU(), LayerNorm2d(channels), nn.Conv2d(channels, channels, 1)
        )
        self.classify = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 1),
            nn.GELU(),
            nn.Conv2d(channels // 2, channels // 4, 1),
            nn.GELU(),
            nn.Conv2d(channels // 4, 2, 1),
        )
        self.pool_window: int | None = None
        self.pool_border = "shift"

    def forward(self, features: Tensor) -> Tensor:
        local_feature, global_part = self.embed(features).chunk(2, dim=1)
        if self.pool_window is None:
            global_feature = global_part.mean(dim=(2, 3), keepdim=True).expand_as(global_part)
        else:  # TLC: the mean over each pixel's window
            global_feature = local_mean(global_part, self.pool_window, self.pool_border).expand_as(global_part)
        return self.classify(torch.cat((local_feature, global_feature), dim=1))

    def extra_repr(self) -> str:
        return "" if self.pool_window is None else f"pool_window={self.pool_window}, pool_border={self.pool_border!r}"


class IntraMotionAnalyser(nn.Module):
    """One 3x3 conv: stage features (B, C, h, w) -> (displacement_start, displacement_end), each (B, 2, h, w).

    o(t_0) (mid-exposure -> start) and o(t_{N-1}) (mid-exposure -> end) in pixels of the stage's
    resolution, channel 0 = x, channel 1 = y (Sec. 3.2).

    >>> start, end = IntraMotionAnalyser(8)(torch.rand(1, 8, 4, 4))
    >>> start.shape, end.shape
    (torch.Size([1, 2, 4, 4]), torch.Size([1, 2, 4, 4]))
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        displacement_start, displacement_end = self.conv(features).chunk(2, dim=1)
        return displacement_start, displacement_end


@dataclass(frozen=True)
class BlurredPixels:
    """The pixels a stage's pruned path computes, found once and shared by all its blocks.

    Attributes:
        index: (Q,) flat indices ``b * h * w + y * w + x`` of the blurred pixels, increasing.
        dilated_index: (Q',) the blurred pixels and their 8 neighbours (what the 3x3 depthwise taps
            of Eq. 5 read, so where its 1x1 conv must run), increasing.
        tap_rows: (Q, 9) for each blurred pixel and tap (raster order), the position of the tapped
            pixel in ``dilated_index``, or Q' for taps outside the image (they read a zero row: the
            dense conv's zero padding of the 1x1 output).
    """

    index: Tensor
    dilated_index: Tensor
    tap_rows: Tensor


def find_blurred_pixels(blur_mask: Tensor) -> BlurredPixels:
    """Index the blurred pixels of a (B, 1, h, w) mask in {0, 1} for the pruned path.

    >>> mask = torch.zeros(1, 1, 3, 4); mask[0, 0, 0, 0] = 1
    >>> pixels = find_blurred_pixels(mask)
    >>> pixels.index.tolist(), pixels.dilated_index.tolist(), pixels.tap_rows.tolist()
    ([0], [0, 1, 4, 5], [[4, 4, 4, 4, 0, 1, 4, 2, 3]])
    """
    if blur_mask.ndim != 4 or blur_mask.shape[1] != 1:
        raise ValueError(f"blur_mask must be (B, 1, h, w), got shape {tuple(blur_mask.shape)}")
    blurred = (blur_mask > 0.5).to(torch.float32)
    index = mask_to_pixel_index(blurred)
    dilated_index = mask_to_pixel_index(F.max_pool2d(blurred, 3, stride=1, padding=1))
    batch, _, height, width = blur_mask.shape
    outside_row = dilated_index.numel()
    row_of_pixel = torch.full((batch * height * width,), outside_row, dtype=torch.long, device=blur_mask.device)
    row_of_pixel[dilated_index] = torch.arange(outside_row, device=blur_mask.device)
    steps = torch.arange(-1, 2, device=blur_mask.device)
    plane = height * width
    y = (index % plane // width)[:, None] + steps.repeat_interleave(3)
    x = (index % width)[:, None] + steps.repeat(3)
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    tapped = (index // plane * plane)[:, None] + y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
    return BlurredPixels(index, dilated_index, torch.where(inside, row_of_pixel[tapped], outside_row))


def _pixel_rows(x: Tensor) -> Tensor:
    """(B, C, h, w) channels_last -> its (B * h * w, C) view of pixel rows (writes go through)."""
    return x.permute(0, 2, 3, 1).view(-1, x.shape[1])


def _depthwise_taps(taps: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise conv at gathered pixels: (Q, K, C) tap values, weight (C, 1, kh, kw) -> (Q, C).

    Fig. 2c's reshaped-weight form, run as a (1 x K) depthwise convolution over a (1, C, Q, K) view
    (no copy), so its multiply-accumulates count as an ordinary convolution's.
    """
    channels = taps.shape[-1]
    convolved = F.conv2d(taps.unsqueeze(0).permute(0, 3, 1, 2), weight.view(channels, 1, 1, -1), bias, groups=channels)
    return convolved[0, :, :, 0].t()


#: Bound on the gathered taps (pixels x 9 x channels) a pruned conv holds at once. Cache-sized chunks
#: run faster on an idle CPU, but every chunk adds a few small multi-threaded ops, and on a loaded
#: CPU each of those waits for a time slice; one chunk covers ~3600 blurred pixels at 512 channels.
_TAP_CHUNK_BYTES = 64 * 2**20


def _pixel_chunks(num_pixels: int, channels: int, element_size: int) -> Iterator[slice]:
    step = max(1, _TAP_CHUNK_BYTES // (NUM_TAPS * channels * element_size))
    return (slice(start, start + step) for start in range(0, num_pixels, step))


def mask_aware_gate(
    f1: Tensor,
    blur_mask: Tensor,
    pointwise_weight: Tensor,
    pointwise_bias: Tensor | None,
    depthwise_weight: Tensor,
    depthwise_bias: Tensor | None,
    blurred_pixels: BlurredPixels | None = None,
) -> Tensor:
    """Eq. 5's mask-aware Conv followed by SimpleGate: ``SG(Conv(f1) * m + Rep(f1) * (1 - m))``.

    Conv = 1x1 (``pointwise``, C -> 2C) then 3x3 depthwise (zero padding), NAFNet's conv1/conv2; Rep
    tiles the channels (:func:`adeblur.ops.repeat_channels`), so at sharp pixels the result is
    ``f1 * f1``. Dense as written (training, dense inference; :func:`adeblur.ops.mask_aware_conv`), or
    pruned (Fig. 2c) when given the stage's :class:`BlurredPixels`: the 1x1 on the dilated blurred
    pixels and the depthwise at the blurred pixels, as convolutions over gathered pixels (their MACs
    are counted as such). Both give the same values.

    Args:
        f1: (B, C, h, w) normalised block input (any memory layout).
        blur_mask: (B, 1, h, w) in {0, 1}.
        pointwise_weight, pointwise_bias: (2C, C, 1, 1), (2C,).
        depthwise_weight, depthwise_bias: (2C, 1, 3, 3), (2C,).
        blurred_pixels: :func:`find_blurred_pixels` of ``blur_mask`` for the pruned path.

    Returns:
        (B, C, h, w).

    >>> f1, mask = torch.rand(1, 4, 5, 5), (torch.rand(1, 1, 5, 5) > 0.5).float()
    >>> weights = (torch.rand(8, 4, 1, 1), torch.rand(8), torch.rand(8, 1, 3, 3), torch.rand(8))
    >>> f1_last = f1.contiguous(memory_format=torch.channels_last)
    >>> pruned = mask_aware_gate(f1_last, mask, *weights, find_blurred_pixels(mask))
    >>> torch.allclose(pruned, mask_aware_gate(f1, mask, *weights), atol=1e-5)
    True
    """
    if blurred_pixels is None:
        return simple_gate(
            mask_aware_conv(f1, blur_mask, pointwise_weight, pointwise_bias, depthwise_weight, depthwise_bias)
        )
    gated = (f1 * f1).contiguous(memory_format=torch.channels_last)  # SG(Rep(f1)) at sharp pixels
    pointwise = F.linear(  # the 1x1 conv on the dilated blurred pixels
        gather_pixels(f1, blurred_pixels.dilated_index), pointwise_weight.flatten(1), pointwise_bias
    )
    table = torch.cat((pointwise, pointwise.new_zeros(1, pointwise.shape[1])))  # + the zero row
    rows = _pixel_rows(gated)
    for chunk in _pixel_chunks(blurred_pixels.index.numel(), table.shape[1], table.element_size()):
        taps = table[blurred_pixels.tap_rows[chunk]]  # (q, 9, 2C): the unfolded neighbourhoods
        rows[blurred_pixels.index[chunk]] = simple_gate(_depthwise_taps(taps, depthwise_weight, depthwise_bias))
    return gated


class MotionAwareConv(DeformConv2d):
    """Eq. 6's ``f5 = SG(DConv(f4, d))`` where the blur mask is set, ``SG(f4)`` elsewhere.

    A depthwise 3x3 :class:`adeblur.ops.DeformConv2d` on 2C channels whose taps sample the motion
    trajectory (the stage's sampling plan). ``forward(f4, *, plan, blur_mask)``: with a plan over all
    pixels, ``SG(DConv(f4) * m + f4 * (1 - m))`` (dense; ``blur_mask`` None means all ones); with a
    plan over the blurred pixels only (``plan.pixel_index``), the DConv runs there and every other
    pixel is ``SG(f4)``: the same values. The profiler's built-in DeformConv2d counter counts its
    MACs per plan pixel.

    >>> conv = MotionAwareConv(8)
    >>> f4 = torch.rand(1, 8, 4, 4)
    >>> plan = build_sampling_plan(torch.rand(1, 18, 4, 4), (4, 4), 3, padding=1)
    >>> torch.equal(conv(f4, plan=plan, blur_mask=torch.zeros(1, 1, 4, 4)), simple_gate(f4))  # no blur
    True
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, groups=channels)

    def forward(self, f4: Tensor, *, plan: SamplingPlan, blur_mask: Tensor | None) -> Tensor:  # type: ignore[override]
        if plan.pixel_index is None:
            convolved = super().forward(f4, plan=plan)
            if blur_mask is not None:
                convolved = convolved * blur_mask + f4 * (1 - blur_mask)
            return simple_gate(convolved)
        table = _pixel_rows(f4.contiguous(memory_format=torch.channels_last))
        gated = simple_gate(f4).contiguous(memory_format=torch.channels_last)
        rows = _pixel_rows(gated)
        corners, corner_weights = plan.index[0], plan.weight[0].to(table.dtype)  # (Q, 9, 4) bilinear corners
        for chunk in _pixel_chunks(plan.num_pixels, table.shape[1], table.element_size()):
            count = corners[chunk].shape[0]
            taps = F.embedding_bag(  # per tap: its bilinear sample, the weighted sum of 4 pixel rows
                corners[chunk].reshape(count * NUM_TAPS, 4), table,
                per_sample_weights=corner_weights[chunk].reshape(count * NUM_TAPS, 4), mode="sum",
            ).view(count, NUM_TAPS, -1)  # fmt: skip
            rows[plan.pixel_index[chunk]] = simple_gate(_depthwise_taps(taps, self.weight, self.bias))
        return gated


@dataclass(frozen=True)
class StageGuidance:
    """What the mask predictor and the analyser of a stage hand to its M2AS blocks.

    Attributes:
        blur_mask: (B, 1, h, w) in {0, 1} (straight-through gradient in training), or None without
            a mask predictor (every pixel is processed).
        motion_plan: the DConv's sampling positions (shared by all blocks of the stage), or None
            without an analyser; covers only the blurred pixels on the pruned path.
        blurred_pixels: the pruned path's pixels, or None on the dense path.
    """

    blur_mask: Tensor | None
    motion_plan: SamplingPlan | None = None
    blurred_pixels: BlurredPixels | None = None


class M2ASBlock(nn.Module):
    """Mask- and motion-aware simple block (Eq. 5-6), (B, C, h, w) -> (B, C, h, w).

    ``f1 = LN(x)``; ``f3 = SCA(SG(Conv(f1) * m + Rep(f1) * (1 - m)))`` (:func:`mask_aware_gate`);
    ``f_mid = x + beta * Conv1x1(f3)``; ``f4 = Conv1x1(LN(f_mid))`` (C -> 2C);
    ``f5 = SG(DConv(f4, d))`` where blurred, ``SG(f4)`` elsewhere (:class:`MotionAwareConv`);
    ``out = f_mid + gamma * Conv1x1(f5)``. ``beta``/``gamma`` are NAFNet's residual scales (zero at
    initialisation), kept from the backbone. Without the mask (``use_mask=False``) ``f3 =
    SCA(SG(Conv(f1)))``; without motion (``use_motion=False``) ``f5 = SG(f4)``, as in NAFNet. The
    parameters shared with NAFBlock keep its names (``conv1`` ... ``conv5``, ``norm1``, ``beta``...).

    >>> block = M2ASBlock(8)
    >>> plan = build_sampling_plan(torch.zeros(1, 18, 4, 4), (4, 4), 3, padding=1)
    >>> block(torch.rand(1, 8, 4, 4), StageGuidance(torch.ones(1, 1, 4, 4), plan)).shape
    torch.Size([1, 8, 4, 4])
    """

    def __init__(self, channels: int, *, use_mask: bool = True, use_motion: bool = True) -> None:
        super().__init__()
        hidden = 2 * channels
        self.use_mask = use_mask
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, hidden, 1)  # Eq. 5's Conv: 1x1 ...
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)  # ... then 3x3 depthwise
        self.sg = SimpleGate()
        self.sca = SimplifiedChannelAttention(channels)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, hidden, 1)
        self.motion_conv = MotionAwareConv(hidden) if use_motion else None
        self.conv5 = nn.Conv2d(channels, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor, guidance: StageGuidance) -> Tensor:
        f1 = self.norm1(x)
        if not self.use_mask:
            gated = self.sg(self.conv2(self.conv1(f1)))
        elif guidance.blur_mask is None:
            raise ValueError("this M2AS block has a mask-aware conv and needs guidance.blur_mask")
        else:  # Eq. 5
            gated = mask_aware_gate(
                f1, guidance.blur_mask, self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias,
                guidance.blurred_pixels,
            )  # fmt: skip
        f_mid = torch.addcmul(x, self.conv3(self.sca(gated)), self.beta)  # Eq. 5: x + beta * Conv1x1(f3)
        f4 = self.conv4(self.norm2(f_mid))  # Eq. 6
        if self.motion_conv is None:
            f5 = self.sg(f4)
        elif guidance.motion_plan is None:
            raise ValueError("this M2AS block has a motion-aware DConv and needs guidance.motion_plan")
        else:
            f5 = self.motion_conv(f4, plan=guidance.motion_plan, blur_mask=guidance.blur_mask)  # Eq. 6
        return torch.addcmul(f_mid, self.conv5(f5), self.gamma)  # Eq. 6: f_mid + gamma * Conv1x1(f5)


class M2AENet(nn.Module):
    """M2AENet image restorer: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) [, aux].

    Args:
        width, encoder_blocks, middle_blocks, decoder_blocks, image_channels: the NAFNet U-Net
            (see :class:`adeblur.models.NAFNet`).
        placement: ``"last-encoder"`` (mask predictor, analyser and M2AS blocks only in the deepest
            encoder stage; default) or ``"all-stages"`` (every encoder, middle and decoder stage).
        use_mask: mask predictor and mask-aware conv (False: Table 3 variant 2).
        use_motion: intra-motion analyser and motion-aware DConv (False: Table 3 variant 3).
        trajectory: ``"quadratic"`` (Eq. 4) or ``"linear"`` (Eq. 12).
        mask_threshold: ``epsilon`` of Eq. 3 (test-time mask ``p_blur > epsilon``).
        gumbel_tau: temperature of the training-time Gumbel-softmax.
        seed: seeds the model's own generator of Gumbel noise (training mode, when ``forward`` gets
            no ``generator``).

    Attributes:
        pruned_inference: eval-mode path, pixel-pruned (True, default) or dense masked (False).
        forced_blur_mask: None, or a (B or 1, 1, H, W) mask at input resolution that replaces every
            predicted mask (resized with :func:`downsample_mask`); used by the profiler.
        size_multiple: input sizes that need no padding.

    >>> model = M2AENet(width=8, encoder_blocks=(1, 2), middle_blocks=1, decoder_blocks=(1, 1)).eval()
    >>> restored, aux = model(torch.rand(1, 3, 12, 10), return_aux=True)
    >>> restored.shape, sorted(aux), aux["encoder2"]["blur_mask"].shape
    (torch.Size([1, 3, 12, 10]), ['encoder2'], torch.Size([1, 1, 6, 6]))
    """

    def __init__(
        self,
        width: int = 32,
        encoder_blocks: Sequence[int] = (1, 1, 1, 28),
        middle_blocks: int = 1,
        decoder_blocks: Sequence[int] = (1, 1, 1, 1),
        image_channels: int = 3,
        *,
        placement: str = "last-encoder",
        use_mask: bool = True,
        use_motion: bool = True,
        trajectory: str = "quadratic",
        mask_threshold: float = 0.5,
        gumbel_tau: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(encoder_blocks) != len(decoder_blocks):
            raise ValueError(
                f"encoder_blocks {tuple(encoder_blocks)} and decoder_blocks {tuple(decoder_blocks)} "
                "must have the same length"
            )
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if trajectory not in TRAJECTORIES:
            raise ValueError(f"trajectory must be one of {tuple(TRAJECTORIES)}, got {trajectory!r}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        if gumbel_tau <= 0:
            raise ValueError(f"gumbel_tau must be positive, got {gumbel_tau}")
        self.image_channels = image_channels
        self.size_multiple = 2 ** len(encoder_blocks)
        self.placement = placement
        self.trajectory = trajectory
        self.mask_threshold = mask_threshold
        self.gumbel_tau = gumbel_tau
        self.seed = seed
        self.pruned_inference = True
        if use_mask:  # only a model with a blur mask has one to replace (the profiler checks for this)
            self.forced_blur_mask: Tensor | None = None
        self._gumbel_generator: torch.Generator | None = None
        # Stages by name -> (channels, blocks, downsampling factor), coarse stages in the middle.
        levels = len(encoder_blocks)
        stages: list[tuple[str, int, int, int]] = []
        for level, count in enumerate(encoder_blocks):
            stages.append((f"encoder{level + 1}", width * 2**level, count, 2**level))
        stages.append(("middle", width * 2**levels, middle_blocks, 2**levels))
        for level, count in zip(range(levels - 1, -1, -1), decoder_blocks):
            stages.append((f"decoder{level + 1}", width * 2**level, count, 2**level))
        guided = {f"encoder{levels}"} if placement == "last-encoder" else {name for name, *_ in stages}
        if not (use_mask or use_motion):  # Table 3 variant 1): plain NAFNet
            guided = set()
        self.stage_scales = {name: scale for name, _, _, scale in stages if name in guided}
        self.mask_predictors = nn.ModuleDict()
        self.motion_analysers = nn.ModuleDict()
        blocks = {}
        for name, channels, count, _ in stages:
            if name in guided:
                if use_mask:
                    self.mask_predictors[name] = MaskPredictor(channels)
                if use_motion:
                    self.motion_analysers[name] = IntraMotionAnalyser(channels)
                blocks[name] = [M2ASBlock(channels, use_mask=use_mask, use_motion=use_motion) for _ in range(count)]
            else:
                blocks[name] = [NAFBlock(channels) for _ in range(count)]

        # The NAFNet U-Net with NAFNet's parameter names: a NAFNet state dict loads with strict=False,
        # leaving only the mask predictors, analysers and motion-aware DConvs at their initialisation.
        self.intro = nn.Conv2d(image_channels, width, 3, padding=1)
        self.encoders = nn.ModuleList(nn.Sequential(*blocks[f"encoder{level + 1}"]) for level in range(levels))
        self.downs = nn.ModuleList(nn.Conv2d(width * 2**i, width * 2 ** (i + 1), 2, stride=2) for i in range(levels))
        self.middle_blks = nn.Sequential(*blocks["middle"])
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width * 2**i, width * 2 ** (i + 1), 1, bias=False), nn.PixelShuffle(2))
            for i in range(levels, 0, -1)
        )
        self.decoders = nn.ModuleList(nn.Sequential(*blocks[f"decoder{i}"]) for i in range(levels, 0, -1))
        self.ending = nn.Conv2d(width, image_channels, 3, padding=1)

    def forward(
        self, image: Tensor, *, return_aux: bool = False, generator: torch.Generator | None = None
    ) -> Tensor | tuple[Tensor, dict[str, dict[str, Any]]]:
        """Restore ``image`` (B, 3, H, W), any H and W (padded inside to ``size_multiple``).

        Args:
            image: (B, 3, H, W) blurred images in [0, 1].
            return_aux: also return the per-stage masks and displacements (see the module docstring).
            generator: source of the training-mode Gumbel noise (default: the model's own, seeded
                with ``seed``).

        Returns:
            The restored (B, 3, H, W) batch, or ``(restored, aux)``.
        """
        check_image_batch(image, self.image_channels)
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, self.size_multiple).contiguous(memory_format=torch.channels_last)
        forced_mask = self._padded_forced_mask(padded)
        aux: dict[str, dict[str, Any]] = {}

        def run(name: str, stage: nn.Sequential, x: Tensor) -> Tensor:
            if name not in self.stage_scales:
                return stage(x)
            guidance, aux[name] = self._guide_stage(name, x, forced_mask, generator)
            for block in stage:
                x = block(x, guidance)
            return x

        x = self.intro(padded)
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            x = run(f"encoder{level + 1}", encoder, x)
            skips.append(x)
            x = down(x)
        x = run("middle", self.middle_blks, x)
        for level, decoder, up, skip in zip(range(len(skips), 0, -1), self.decoders, self.ups, reversed(skips)):
            x = run(f"decoder{level}", decoder, up(x) + skip)
        restored = (self.ending(x) + padded)[..., :height, :width].contiguous()
        return (restored, aux) if return_aux else restored

    def _padded_forced_mask(self, padded: Tensor) -> Tensor | None:
        mask = getattr(self, "forced_blur_mask", None)
        if mask is None:
            return None
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, padded.shape[0]):
            raise ValueError(f"forced_blur_mask must be (B or 1, 1, H, W), got shape {tuple(mask.shape)}")
        if mask.shape[-2] > padded.shape[-2] or mask.shape[-1] > padded.shape[-1]:
            raise ValueError(
                f"forced_blur_mask of size {tuple(mask.shape[-2:])} is larger than the (padded) input "
                f"{tuple(padded.shape[-2:])}"
            )
        mask = F.pad(mask, (0, padded.shape[-1] - mask.shape[-1], 0, padded.shape[-2] - mask.shape[-2]))
        return mask.to(device=padded.device, dtype=padded.dtype).expand(padded.shape[0], -1, -1, -1)

    def _guide_stage(
        self, name: str, features: Tensor, forced_mask: Tensor | None, generator: torch.Generator | None
    ) -> tuple[StageGuidance, dict[str, Any]]:
        """Run the stage's mask predictor and analyser; build what its blocks share."""
        aux: dict[str, Any] = {"scale": self.stage_scales[name]}
        size = (features.shape[-2], features.shape[-1])
        blur_mask = None
        if name in self.mask_predictors:
            logits = self.mask_predictors[name](features)  # Eq. 1 (before the softmax)
            aux["blur_logit"] = logits[:, :1] - logits[:, 1:]
            aux["blur_probability"] = torch.sigmoid(aux["blur_logit"])  # = softmax(logits)[:, 0]
            if forced_mask is not None:
                blur_mask = downsample_mask(forced_mask, size)
            elif self.training:
                blur_mask = gumbel_blur_mask(logits, generator=self._noise(generator), tau=self.gumbel_tau)  # Eq. 2
            else:
                blur_mask = (aux["blur_probability"] > self.mask_threshold).to(features.dtype)  # Eq. 3
            aux["blur_mask"] = blur_mask
        pruned = blur_mask is not None and self.pruned_inference and not self.training
        blurred_pixels = find_blurred_pixels(blur_mask) if pruned else None
        motion_plan = None
        if name in self.motion_analysers:
            displacement_start, displacement_end = self.motion_analysers[name](features)
            aux["displacement_start"], aux["displacement_end"] = displacement_start, displacement_end
            aux["trajectory"] = self.trajectory
            trajectory = TRAJECTORIES[self.trajectory](displacement_start, displacement_end, NUM_TAPS)  # Eq. 4 / 12
            offsets = motion_aware_offsets(trajectory)  # Fig. 3: tap n samples z + o(t_n)
            pixel_index = None if blurred_pixels is None else blurred_pixels.index
            motion_plan = build_sampling_plan(offsets, size, 3, padding=1, pixel_index=pixel_index)
        return StageGuidance(blur_mask, motion_plan, blurred_pixels), aux

    def _noise(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return generator
        if self._gumbel_generator is None:
            self._gumbel_generator = torch.Generator().manual_seed(self.seed)
        return self._gumbel_generator

    def extra_repr(self) -> str:
        return (
            f"placement={self.placement!r}, trajectory={self.trajectory!r}, mask_threshold={self.mask_threshold}, "
            f"gumbel_tau={self.gumbel_tau}, pruned_inference={self.pruned_inference}"
        )
