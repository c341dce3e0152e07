"""Model registry: every restorer adeblur can build, by name.

>>> from adeblur.models import build_model, list_models
>>> [spec.name for spec in list_models()][:2]
['nafnet', 'nafnet-lite']
>>> model = build_model("nafnet-lite", width=8)
>>> model.size_multiple
16

Every model is an :class:`torch.nn.Module` mapping a (B, 3, H, W) batch in [0, 1] to a (B, 3, H, W)
batch (the input plus a learned residual; not clamped). Models pad inside, so any H and W work;
``model.size_multiple`` says which sizes need no padding (useful for tiling).

Registered models (see ``docs/m2aenet.md``, ``docs/saphnet.md`` and ``docs/saphnet-as.md``):

=====================  ======================================================================
``nafnet``             NAFNet, width 32, encoder [1, 1, 1, 28], middle 1, decoder [1, 1, 1, 1]
``nafnet-lite``        the same with width 16 and encoder [1, 1, 1, 8] (CPU work)
``m2aenet``            M2AENet: NAFNet + mask predictor, intra-motion analyser, M2AS blocks
``m2aenet-no-mask``    Table 3 variant 2): no mask predictor / mask-aware conv
``m2aenet-no-motion``  Table 3 variant 3): no intra-motion analyser / motion-aware DConv
``m2aenet-linear``     linear trajectories (Appendix B, Eq. 12) instead of quadratic (Eq. 4)
``m2aenet-lite``       ``m2aenet`` with the ``nafnet-lite`` widths and block counts
``dmphn``              DMPHN (Zhang et al. 2019), levels of 1-2-4 patches, widths 32-64-128
``dmphn-1248``         DMPHN with levels of 1-2-4-8 patches
``dmphn-lite``         ``dmphn`` with widths 16-32-64 (CPU work)
``saphnet``            SAPHNet (Suin et al. 2020) = ``saphnet-b``: 3 content-aware resblocks at 128 filters
``saphnet-a``          SAPHNet without learned PDF offsets (Table 1, Ours (a))
``saphnet-lite``       SAPHNet with widths 12-24-48, 3 content-aware blocks at the coarsest scale only
``saphnet-as``         SAPHNet with pixel-adaptive sampling (TPAMI): stages 2-3 process K chosen pixels
``saphnet-as-lite``    ``saphnet-as`` with the ``saphnet-lite`` widths and clusters (CPU work)
``dmphn-as``           DMPHN with the same pixel-adaptive sampling (TPAMI Table VI, plug-and-play)
``dmphn-as-lite``      ``dmphn-as`` with widths 16-32-64 (CPU work)
``identity``           returns its input (scores the blurred input itself); not trainable
``wiener``             Wiener deconvolution with the known blur kernel; not trainable
``richardson-lucy``    Richardson-Lucy deconvolution with the known blur kernel; not trainable
``unsharp-mask``       blind unsharp masking (no kernel); not trainable
=====================  ======================================================================

The classical restorers (``docs/evaluate.md``, :mod:`adeblur.models.classical`) take
``forward(image, kernel=None)``; the kernel methods set ``needs_kernel = True`` and ``tileable = False``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor, nn

from adeblur.errors import ConfigError
from adeblur.models.classical import RichardsonLucy, UnsharpMask, WienerDeconvolution
from adeblur.models.dmphn import DMPHN
from adeblur.models.m2aenet import M2AENet
from adeblur.models.nafnet import NAFNet
from adeblur.models.saphnet import SAPHNet
from adeblur.models.saphnet_as import DMPHNAS, SAPHNetAS

__all__ = [
    "DMPHN",
    "DMPHNAS",
    "IdentityModel",
    "M2AENet",
    "ModelSpec",
    "NAFNet",
    "RichardsonLucy",
    "SAPHNet",
    "SAPHNetAS",
    "UnsharpMask",
    "WienerDeconvolution",
    "build_model",
    "list_models",
    "register_model",
]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its name, what it is, how to build it.

    Attributes:
        name: registry key, e.g. ``"m2aenet-lite"``.
        description: one line for ``adeblur models``.
        builder: callable returning the :class:`torch.nn.Module` (usually the model class).
        defaults: keyword arguments passed to ``builder``; ``build_model`` overrides merge into them.
        trainable: whether the model has parameters to train.
    """

    name: str
    description: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    trainable: bool = True

    def options(self) -> list[str]:
        """Names of the keyword arguments ``builder`` accepts."""
        return [
            parameter.name
            for parameter in inspect.signature(self.builder).parameters.values()
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        ]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    description: str,
    *,
    trainable: bool = True,
    **defaults: Any,
) -> ModelSpec:
    """Register ``builder(**defaults)`` under ``name`` and return its :class:`ModelSpec`.

    Raises:
        ValueError: ``name`` is already registered, or a default is not an option of ``builder``.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    spec = ModelSpec(name, description, builder, MappingProxyType(dict(defaults)), trainable)
    unknown = sorted(set(defaults) - set(spec.options()))
    if unknown:
        raise ValueError(f"model {name!r}: {unknown} are not options of {builder.__name__}")
    _REGISTRY[name] = spec
    return spec


def list_models() -> list[ModelSpec]:
    """All registered models, in registration order."""
    return list(_REGISTRY.values())


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name``, its defaults updated with ``overrides``.

    Raises:
        ConfigError: unknown name (the message lists the known ones), unknown option (lists the valid
            ones), or an option value the model rejects.

    >>> build_model("nafnet-lite", depth=3)
    Traceback (most recent call last):
    ...
    adeblur.errors.ConfigError: model 'nafnet-lite' has no option 'depth'; options: width, encoder_blocks, ...
    """
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}")
    options = spec.options()
    for key in overrides:
        if key not in options:
            raise ConfigError(f"model {name!r} has no option {key!r}; options: {', '.join(options)}")
    try:
        return spec.builder(**{**spec.defaults, **overrides})
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model {name!r}: {error}") from error


class IdentityModel(nn.Module):
    """Returns its input unchanged: scores the blurred input with the same tools as a real model.

    >>> import torch
    >>> IdentityModel()(torch.ones(1, 3, 2, 2)).sum().item()
    12.0
    """

    size_multiple = 1

    def forward(self, image: Tensor) -> Tensor:
        return image


_NAFNET = {"width": 32, "encoder_blocks": (1, 1, 1, 28), "middle_blocks": 1, "decoder_blocks": (1, 1, 1, 1)}
_LITE = {"width": 16, "encoder_blocks": (1, 1, 1, 8), "middle_blocks": 1, "decoder_blocks": (1, 1, 1, 1)}

register_model("nafnet", NAFNet, "NAFNet (Chen et al. 2022), width 32, GoPro configuration, 17.11 M params", **_NAFNET)
register_model("nafnet-lite", NAFNet, "NAFNet, width 16, encoder [1, 1, 1, 8], for CPU work, 1.97 M params", **_LITE)
register_model("m2aenet", M2AENet, "M2AENet: NAFNet + blur-mask predictor, motion analyser, pixel pruning", **_NAFNET)
register_model(
    "m2aenet-no-mask", M2AENet, "M2AENet ablation: no mask predictor / mask-aware conv (Table 3, 2))",
    use_mask=False, **_NAFNET,
)  # fmt: skip
register_model(
    "m2aenet-no-motion", M2AENet, "M2AENet ablation: no intra-motion analyser / motion-aware DConv (Table 3, 3))",
    use_motion=False, **_NAFNET,
)  # fmt: skip
register_model(
    "m2aenet-linear", M2AENet, "M2AENet with linear intra-exposure trajectories (Appendix B, Eq. 12)",
    trajectory="linear", **_NAFNET,
)  # fmt: skip
register_model("m2aenet-lite", M2AENet, "M2AENet with the nafnet-lite widths and block counts, for CPU work", **_LITE)
register_model("dmphn", DMPHN, "DMPHN (Zhang et al. 2019), 1-2-4 patch levels, widths 32-64-128, 5.42 M params")
register_model("dmphn-1248", DMPHN, "DMPHN with 1-2-4-8 patch levels, 7.23 M params", levels=(1, 2, 4, 8))
register_model("dmphn-lite", DMPHN, "DMPHN 1-2-4 with widths 16-32-64, for CPU work, 1.36 M params", widths=(16, 32, 64))
register_model(
    "saphnet", SAPHNet, "SAPHNet (Suin et al. 2020) = saphnet-b: 3 content-aware resblocks per encoder/decoder at 128 filters, 15.67 M params",
)  # fmt: skip
register_model("saphnet-a", SAPHNet, "SAPHNet (a): no learned PDF offsets (Table 1), 14.63 M params", learn_offsets=False)
register_model(
    "saphnet-lite", SAPHNet, "SAPHNet, widths 12-24-48, 3 content-aware blocks at 1/4 scale, clusters 8, for CPU work, 2.59 M params",
    widths=(12, 24, 48), blocks=(0, 0, 3), clusters=8,
)  # fmt: skip
register_model(
    "saphnet-as", SAPHNetAS, "SAPHNet with pixel-adaptive sampling (TPAMI): stages 2-3 refine K = HW/16 chosen pixels, 8.96 M params",
)  # fmt: skip
register_model(
    "saphnet-as-lite", SAPHNetAS, "saphnet-as with widths 12-24-48, clusters 8, for CPU work, 1.44 M params",
    widths=(12, 24, 48), blocks=(0, 0, 3), clusters=8,
)  # fmt: skip
register_model(
    "dmphn-as", DMPHNAS, "DMPHN 1-2-4 with pixel-adaptive sampling in stages 2-3 (TPAMI Table VI), 3.18 M params",
)  # fmt: skip
register_model(
    "dmphn-as-lite", DMPHNAS, "dmphn-as with widths 16-32-64, for CPU work, 0.81 M params", widths=(16, 32, 64),
)  # fmt: skip
register_model("identity", IdentityModel, "returns the input unchanged (scores the blurred input)", trainable=False)
register_model("wiener", WienerDeconvolution, "Wiener deconvolution with the known kernel", trainable=False)
register_model("richardson-lucy", RichardsonLucy, "Richardson-Lucy deconvolution, known kernel", trainable=False)
register_model("unsharp-mask", UnsharpMask, "blind unsharp masking (no kernel)", trainable=False)
