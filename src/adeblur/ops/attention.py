"""SAPHNet's efficient attention (CVPR 2020, Sec. 3.1, Eq. 2-10) and attentive fusion (Eq. 12-13).

Efficient attention of a feature map x (B, C, H, W), with C2 clusters:

* spatial gate ``M1 = sigmoid(f_m1(x))`` (B, 1, H, W) and gated features ``x_m1 = x * M1`` (Eq. 2-3);
* cluster maps ``Q = softmax_HW(f_q(x_m1))`` (B, C2, H, W), each a spatial softmax (Eq. 4);
* global descriptors ``G[:, k] = sum_i Q[k, i] * x_m1[:, i]`` (B, C, C2): the global-sum-pooling of
  Eq. 5, one attention-weighted average of the gated features per cluster;
* channel gate ``M2`` (B, C, 1, 1) (Eq. 6-7 / Eq. 10), see ``gate_input`` below;
* per-pixel weights ``P = softmax_C2(f_p(x_m1))`` (B, C2, H, W), a softmax over the clusters (Eq. 8);
* output ``y[:, j] = sum_k P[k, j] * M2 * G[:, k]`` (Eq. 8-10): every pixel takes a convex combination
  of the gated descriptors.

It is computed as two (C x HW) by (HW x C2) products, O(B * HW * C * C2), and never forms the
HW x HW matrix ``Q^T P`` that it equals as a quadratic form (``y = M2 * x_m1 (Q^T P)``).

Choices where the paper is open (see docs/ops.md, "SAPHNet ops"):

* f_m1: one 3x3 conv C -> 1 (``gate_kernel_size``); f_q and f_p: one 1x1 conv C -> C2 each
  (``map_kernel_size``); all with bias, the papers only say "convolution".
* C2 = ``clusters`` = 16 by default (not given in the papers).
* Eq. 9 says global-*average*-pooling over C2, Eq. 10 (and the TPAMI paper's Eq. 14, "global-sum-
  pooling") a plain product: we take the plain product (a sum over C2). As P sums to 1 over C2, y is
  then a convex combination of descriptors, on the scale of x; the average would divide it by C2.
* Channel gate, ``gate_input``: ``"pooled"`` (default; Eq. 10 and Sec. 3.1.1: ``M2 =
  sigmoid(f_M2(GAP(x_m1)))``, f_M2 a 1x1 conv C -> C on the pooled vector) or ``"descriptors"``
  (Eq. 7: ``M2 = sigmoid(f_m2(G))``, f_m2 one conv over the C x C2 descriptors with a kernel spanning
  all C2 clusters, i.e. ``Conv1d(C, C, C2)``: C * C * C2 weights).
* Cross-attention (Sec. 3.1.2): the tensor ``x`` (the decoder, or the higher level) makes *every* map
  (M1, Q, P and M2, the latter from x's own gated features or descriptors); ``source`` (the encoder,
  or the lower level) supplies the attended features, gated by x's spatial gate: descriptors are
  ``G = (source * M1) Q^T``. ``source = x`` is self-attention.

The aten-level MAC counter of :mod:`adeblur.engine.profile` counts this module exactly (convs and
products; no ``macs_of_last_call`` needed): per image ``HW * (k_m1^2 * C + 2 * k_map^2 * C * C2)``
for the maps, ``2 * HW * C * C2`` for the two products (``3 *`` for cross-attention with the
descriptor gate, which also needs x's own descriptors), ``C * C`` (pooled) or ``C * C * C2``
(descriptors) for the channel gate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "AttentiveFusion",
    "EfficientAttention",
    "attentive_fusion",
    "cluster_descriptors",
    "distribute_descriptors",
    "efficient_attention",
]

GATE_INPUTS = ("pooled", "descriptors")


def _check_maps(features: Tensor, maps: Tensor, name: str) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    if maps.dim() != 4 or maps.shape[0] != features.shape[0] or maps.shape[2:] != features.shape[2:]:
        raise ValueError(
            f"{name} must be (B, C2, H, W) with B, H, W of the features {tuple(features.shape)}, "
            f"got shape {tuple(maps.shape)}"
        )


def cluster_descriptors(features: Tensor, cluster_maps: Tensor) -> Tensor:
    """Global descriptors of Eq. 4-5: one attention-weighted sum of ``features`` per cluster map.

    Args:
        features: (B, C, H, W), the (gated) features to pool.
        cluster_maps: (B, C2, H, W), spatial attention maps (a softmax over H * W each, Eq. 4).

    Returns:
        (B, C, C2): ``G[b, c, k] = sum_{y,x} cluster_maps[b, k, y, x] * features[b, c, y, x]``.

    >>> features = torch.arange(4.0).view(1, 1, 2, 2)
    >>> cluster_descriptors(features, torch.full((1, 1, 2, 2), 0.25))  # a uniform map: the mean
    tensor([[[1.5000]]])
    """
    _check_maps(features, cluster_maps, "cluster_maps")
    return torch.bmm(features.flatten(2), cluster_maps.flatten(2).transpose(1, 2))


def distribute_descriptors(descriptors: Tensor, pixel_weights: Tensor) -> Tensor:
    """Eq. 8-9 (as a plain product, Eq. 10): every pixel's weighted sum of the C2 descriptors.

    Args:
        descriptors: (B, C, C2), e.g. from :func:`cluster_descriptors`, channel-gated.
        pixel_weights: (B, C2, H, W), per-pixel weights over the clusters (a softmax over C2, Eq. 8).

    Returns:
        (B, C, H, W): ``y[b, :, y, x] = sum_k pixel_weights[b, k, y, x] * descriptors[b, :, k]``.

    >>> distribute_descriptors(torch.tensor([[[1.0, 3.0]]]), torch.full((1, 2, 1, 2), 0.5))
    tensor([[[[2., 2.]]]])
    """
    if descriptors.dim() != 3:
        raise ValueError(f"descriptors must be (B, C, C2), got shape {tuple(descriptors.shape)}")
    if pixel_weights.dim() != 4 or pixel_weights.shape[:2] != (descriptors.shape[0], descriptors.shape[2]):
        raise ValueError(
            f"pixel_weights must be (B, C2, H, W) = ({descriptors.shape[0]}, {descriptors.shape[2]}, H, W), "
            f"got shape {tuple(pixel_weights.shape)}"
        )
    batch, clusters, height, width = pixel_weights.shape
    return torch.bmm(descriptors, pixel_weights.reshape(batch, clusters, height * width)).view(
        batch, descriptors.shape[1], height, width
    )


def efficient_attention(
    features: Tensor,
    cluster_maps: Tensor,
    pixel_weights: Tensor,
    *,
    spatial_gate: Tensor | None = None,
    channel_gate: Tensor | None = None,
) -> Tensor:
    """Eq. 10 given its maps: ``y = M2 * [(features * M1) softmax(B)^T] softmax(D)``.

    The maps are normalised already (see :class:`EfficientAttention`, which makes them from a
    feature map). For cross-attention, ``features`` is the attended tensor and the maps come from the
    other one. Cost O(B * H * W * C * C2); no H*W x H*W matrix is formed.

    Args:
        features: (B, C, H, W) attended features.
        cluster_maps: (B, C2, H, W), each map a softmax over H * W (Q of Eq. 4).
        pixel_weights: (B, C2, H, W), a softmax over C2 at every pixel (P of Eq. 8).
        spatial_gate: optional (B, 1, H, W) M1 (Eq. 3), multiplies ``features`` first.
        channel_gate: optional (B, C, 1, 1) M2 (Eq. 6), multiplies the descriptors.

    Returns:
        (B, C, H, W).

    With one cluster every pixel gets the cluster-weighted mean of the features:

    >>> features = torch.arange(4.0).view(1, 1, 2, 2)
    >>> efficient_attention(features, torch.full((1, 1, 2, 2), 0.25), torch.ones(1, 1, 2, 2))
    tensor([[[[1.5000, 1.5000],
              [1.5000, 1.5000]]]])
    """
    _check_maps(features, pixel_weights, "pixel_weights")
    if cluster_maps.shape != pixel_weights.shape:
        raise ValueError(
            f"cluster_maps {tuple(cluster_maps.shape)} and pixel_weights {tuple(pixel_weights.shape)} must match"
        )
    batch, channels = features.shape[:2]
    if spatial_gate is not None:
        if spatial_gate.shape != (batch, 1, *features.shape[2:]):
            raise ValueError(f"spatial_gate must be (B, 1, H, W), got shape {tuple(spatial_gate.shape)}")
        features = features * spatial_gate  # Eq. 3
    descriptors = cluster_descriptors(features, cluster_maps)  # Eq. 4-5
    if channel_gate is not None:
        if channel_gate.shape != (batch, channels, 1, 1):
            raise ValueError(
                f"channel_gate must be (B, C, 1, 1) = {(batch, channels, 1, 1)}, got shape {tuple(channel_gate.shape)}"
            )
        descriptors = descriptors * channel_gate.view(batch, channels, 1)  # Eq. 6
    return distribute_descriptors(descriptors, pixel_weights)  # Eq. 8-10


class EfficientAttention(nn.Module):
    """SAPHNet's efficient self-/cross-attention (Eq. 2-10); module docstring has the choices.

    Args:
        channels: C, of the input and the output.
        clusters: C2, the number of cluster maps (16; not given in the paper).
        gate_input: the channel gate's input, ``"pooled"`` (Eq. 10: global average of the gated
            features) or ``"descriptors"`` (Eq. 7: the C x C2 global descriptors).
        gate_kernel_size: kernel of f_m1, the spatial gate's conv C -> 1 (3).
        map_kernel_size: kernel of f_q and f_p, the convs C -> C2 (1).

    ``forward(x, source=None, *, valid=None, return_maps=False)``: x (B, C, H, W) makes every map;
    ``source`` (same shape; default x) supplies the attended features; ``valid`` (B, 1, H, W), bool or
    {0, 1}, optionally marks the pixels that take part in the global pooling (an image's own pixels,
    not the padding added to reach a size multiple): the cluster maps are 0 elsewhere (their logits
    are set to the dtype's minimum before the spatial softmax) and the pooled channel gate averages
    over those pixels only, so what lies outside changes no output pixel through the pooling; every
    pixel, valid or not, still gets an output. Returns y (B, C, H, W), or ``(y, maps)`` with maps
    ``{"spatial_gate": (B, 1, H, W), "cluster_maps": (B, C2, H, W) (each a spatial softmax),
    "pixel_weights": (B, C2, H, W) (softmax over C2), "channel_gate": (B, C, 1, 1)}``.

    >>> attention = EfficientAttention(8, clusters=4)
    >>> x = torch.rand(2, 8, 6, 5)
    >>> y, maps = attention(x, return_maps=True)
    >>> y.shape, maps["cluster_maps"].shape, maps["channel_gate"].shape
    (torch.Size([2, 8, 6, 5]), torch.Size([2, 4, 6, 5]), torch.Size([2, 8, 1, 1]))
    >>> attention(x, torch.rand(2, 8, 6, 5)).shape  # cross-attention
    torch.Size([2, 8, 6, 5])
    """

    def __init__(
        self,
        channels: int,
        clusters: int = 16,
        *,
        gate_input: str = "pooled",
        gate_kernel_size: int = 3,
        map_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {gate_input!r}")
        if channels < 1 or clusters < 1:
            raise ValueError(f"channels and clusters must be positive, got {channels} and {clusters}")
        self.channels, self.clusters, self.gate_input = channels, clusters, gate_input
        self.spatial_gate = nn.Conv2d(channels, 1, gate_kernel_size, padding=gate_kernel_size // 2)  # f_m1
        self.cluster_logits = nn.Conv2d(channels, clusters, map_kernel_size, padding=map_kernel_size // 2)  # f_q
        self.pixel_logits = nn.Conv2d(channels, clusters, map_kernel_size, padding=map_kernel_size // 2)  # f_p
        if gate_input == "pooled":
            self.channel_gate = nn.Conv2d(channels, channels, 1)  # f_M2 on GAP(x_m1) (Eq. 10)
        else:
            self.channel_gate = nn.Conv1d(channels, channels, clusters)  # f_m2 on the C x C2 descriptors (Eq. 7)

    def forward(
        self, x: Tensor, source: Tensor | None = None, *, valid: Tensor | None = None, return_maps: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        if source is not None and source.shape != x.shape:
            raise ValueError(f"source must have x's shape {tuple(x.shape)}, got {tuple(source.shape)}")
        batch, channels, height, width = x.shape
        if valid is not None and valid.shape != (batch, 1, height, width):
            raise ValueError(f"valid must be (B, 1, H, W) = {(batch, 1, height, width)}, got {tuple(valid.shape)}")
        spatial_gate = torch.sigmoid(self.spatial_gate(x))  # M1, Eq. 2
        gated = x * spatial_gate  # x_m1, Eq. 3
        cluster_logits = self.cluster_logits(gated)
        if valid is not None:  # Q = 0 outside the valid region (a finite minimum: an all-invalid map is uniform)
            cluster_logits = cluster_logits.masked_fill(~valid.bool(), torch.finfo(cluster_logits.dtype).min)
        cluster_maps = torch.softmax(cluster_logits.flatten(2), dim=2).view(batch, -1, height, width)  # Q, Eq. 4
        pixel_weights = torch.softmax(self.pixel_logits(gated), dim=1)  # P, Eq. 8
        attended = gated if source is None else source * spatial_gate
        descriptors = cluster_descriptors(attended, cluster_maps)  # Eq. 4-5
        if self.gate_input == "pooled":
            if valid is None:
                pooled = gated.mean((2, 3), keepdim=True)
            else:  # the mean over the valid pixels
                weights = valid.to(gated.dtype)
                pooled = (gated * weights).sum((2, 3), keepdim=True) / weights.sum((2, 3), keepdim=True).clamp(min=1)
            channel_gate = torch.sigmoid(self.channel_gate(pooled))  # Eq. 10
        else:  # Eq. 7, from x's own descriptors (x makes every map, also in cross-attention)
            own = descriptors if source is None else cluster_descriptors(gated, cluster_maps)
            channel_gate = torch.sigmoid(self.channel_gate(own)).view(batch, channels, 1, 1)
        y = distribute_descriptors(descriptors * channel_gate.view(batch, channels, 1), pixel_weights)  # Eq. 6-10
        if not return_maps:
            return y
        maps = {
            "spatial_gate": spatial_gate,
            "cluster_maps": cluster_maps,
            "pixel_weights": pixel_weights,
            "channel_gate": channel_gate,
        }
        return y, maps

    def extra_repr(self) -> str:
        return f"{self.channels}, clusters={self.clusters}, gate_input={self.gate_input!r}"


def attentive_fusion(global_features: Tensor, local_features: Tensor, fusion_logits: Tensor) -> Tensor:
    """Eq. 12-13: ``M * global + (1 - M) * local`` with ``M = sigmoid(fusion_logits)``.

    Args:
        global_features: (B, C, H, W), the attention branch's output (y_att).
        local_features: (B, C, H, W), the PDF branch's output (y_dyn).
        fusion_logits: (B, 1, H, W), f_fus of the module input, before the sigmoid.

    Returns:
        (B, C, H, W), y_GL.

    >>> a, b = torch.ones(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    >>> attentive_fusion(a, b, torch.tensor([[[[0.0, 100.0]]]]))[0, 0]
    tensor([[0.5000, 1.0000]])
    """
    if global_features.dim() != 4 or local_features.shape != global_features.shape:
        raise ValueError(
            f"global_features and local_features must be the same (B, C, H, W), got shapes "
            f"{tuple(global_features.shape)} and {tuple(local_features.shape)}"
        )
    batch, _, height, width = global_features.shape
    if fusion_logits.shape != (batch, 1, height, width):
        raise ValueError(
            f"fusion_logits must be (B, 1, H, W) = {(batch, 1, height, width)}, got {tuple(fusion_logits.shape)}"
        )
    fusion_mask = torch.sigmoid(fusion_logits)  # Eq. 12
    return local_features + fusion_mask * (global_features - local_features)  # Eq. 13


class AttentiveFusion(nn.Module):
    """Attentive fusion of the content-aware module (Eq. 12-13).

    Args:
        channels: C of the module input.
        kernel_size: of f_fus, the single conv C -> 1 on the module input (3; the paper: "a single
            convolution layer generating single channel output").

    ``forward(module_input, attended, filtered, *, return_mask=False)`` -> ``M * attended + (1 - M) *
    filtered`` (B, C', H, W), or with ``return_mask`` also M (B, 1, H, W), M = sigmoid(f_fus(input)).

    >>> fusion = AttentiveFusion(8)
    >>> x = torch.rand(1, 8, 5, 5)
    >>> y, mask = fusion(x, torch.ones(1, 8, 5, 5), torch.zeros(1, 8, 5, 5), return_mask=True)
    >>> torch.allclose(y, mask.expand_as(y))
    True
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.fusion_logits = nn.Conv2d(channels, 1, kernel_size, padding=kernel_size // 2)  # f_fus

    def forward(
        self, module_input: Tensor, attended: Tensor, filtered: Tensor, *, return_mask: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        logits = self.fusion_logits(module_input)
        fused = attentive_fusion(attended, filtered, logits)
        return (fused, torch.sigmoid(logits)) if return_mask else fused
