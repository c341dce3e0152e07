"""Cost of SAPHNet beside DMPHN and NAFNet at one image size: prints one JSON object.

For each model of ``--models`` (default ``nafnet,dmphn,saphnet,saphnet-a``): parameters, multiply-
accumulates of one forward pass (:func:`adeblur.engine.profile.count_macs`, batch 1) and the median
seconds of a ``torch.inference_mode`` forward pass of one random (1, 3, H, W) image at ``--size``
(default 720x1280, the GoPro frame size of the paper's timings), and each model's time over
``--reference``'s (default ``nafnet``; added to the models when missing). Weights are random, with no
parameter left identically zero (:func:`~adeblur.engine.profile.randomise_zero_parameters_`, as
``adeblur profile`` does: SAPHNet's zero-initialised PDF meta-layers would otherwise make every
pixel-dependent filter a plain conv).

All models are built once and timed in the same run, round by round (``--warmup`` untimed rounds,
then ``--repeats`` timed rounds, every model once per round), so that load from other processes spreads
over all of them. Models pad inside (any size works); the MACs are those of the padded forward pass.

A model entry is a registered name or ``name:key=value[:key=value...]`` with constructor options
(values read as YAML), e.g. ``saphnet-as:sampling=uniform`` (TPAMI Table V's uniform-sampling switch,
same K) beside ``saphnet-as``; the entry as written is its key in the JSON.

The papers' times (CVPR 2020 Table 1, Titan Xp, 720x1280): SAPHNet (a) 0.34 s, (b) 0.77 s,
Stack(4)-DMPHN 0.98 s (our ``dmphn`` is the unstacked 1-2-4 model).

    PYTHONPATH=src python benchmarks/bench_saphnet.py [--device cuda] [--size 720x1280] [--repeats 5]
        [--models nafnet,dmphn,saphnet,saphnet-a] [--json FILE]
    PYTHONPATH=src python benchmarks/bench_saphnet.py --reference saphnet-as:sampling=uniform \
        --models saphnet-as,dmphn,dmphn-as            # issue 8: sampling's cost at equal K
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from adeblur.engine.config import parse_yaml_value
from adeblur.engine.profile import count_macs, randomise_zero_parameters_, resolve_device, synchronize
from adeblur.io import write_text
from adeblur.models import build_model

DEFAULT_MODELS = "nafnet,dmphn,saphnet,saphnet-a"
#: CVPR 2020 Table 1, seconds per 720x1280 GoPro frame on a Titan Xp.
PAPER_SECONDS = {"saphnet-a": 0.34, "saphnet": 0.77, "stack4-dmphn": 0.98}


def parse_size(text: str) -> tuple[int, int]:
    """``"720x1280"`` -> (720, 1280) (height x width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 720x1280, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def parse_model_spec(text: str) -> tuple[str, dict]:
    """``"saphnet-as:sampling=uniform:budget=0.5"`` -> ("saphnet-as", {"sampling": "uniform", "budget": 0.5}).

    >>> parse_model_spec("dmphn")
    ('dmphn', {})
    >>> parse_model_spec("saphnet-as:sampling=uniform:budget=2")
    ('saphnet-as', {'sampling': 'uniform', 'budget': 2})
    """
    name, *pairs = text.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"model option must be key=value, got {pair!r} in {text!r}")
        options[key.strip()] = parse_yaml_value(value.strip())
    return name.strip(), options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(720, 1280), help="image size HxW (default 720x1280)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    parser.add_argument("--reference", default="nafnet", help="the model the time ratios are relative to")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the JSON to this file ('-': standard output only)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("need --repeats >= 1 and --warmup >= 0")
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    if not names:
        parser.error("--models is empty")
    if args.reference not in names:
        names.insert(0, args.reference)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()
    load_before = os.getloadavg()

    try:
        specs = {name: parse_model_spec(name) for name in names}
        models = {
            name: randomise_zero_parameters_(build_model(model_name, **options), seed=0).eval().to(device)
            for name, (model_name, options) in specs.items()
        }
    except ValueError as error:  # ConfigError too (unknown name or option)
        parser.error(str(error))
    image = torch.rand(1, 3, *args.size, generator=torch.Generator().manual_seed(0)).to(device)
    results: dict[str, dict] = {}
    for name, model in models.items():
        results[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model, image).total,
            "size_multiple": int(getattr(model, "size_multiple", 1)),
        }

    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for round_number in range(args.warmup + args.repeats):
            for name, model in models.items():
                synchronize(device)
                start = time.perf_counter()
                model(image)
                synchronize(device)
                if round_number >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    for name in names:
        results[name]["gmacs"] = round(results[name]["macs"] / 1e9, 2)
        results[name]["seconds"] = statistics.median(times[name])
        results[name]["seconds_all"] = times[name]
    for name in names:
        results[name][f"seconds_over_{args.reference}"] = results[name]["seconds"] / results[args.reference]["seconds"]

    report = {
        "benchmark": "forward cost per model, batch 1, random weights, inference_mode",
        "size": list(args.size),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        # the machine's load averages around the runs: other processes skew the times
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
        "reference": args.reference,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "models": results,
        "paper_seconds_titan_xp_720x1280": PAPER_SECONDS,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json and args.json != "-":
        write_text(args.json, text + "\n", what="benchmark JSON")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
