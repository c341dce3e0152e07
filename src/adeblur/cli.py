"""The ``adeblur`` command line: parses arguments, calls the library, renders progress and tables.

The command-line contract (commands, options, JSON keys, exit codes) is fixed by DESIGN.md; other tools
rely on it. Exit status: 0 on success, 1 on bad input (one line on standard error), 2 on a usage error,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adeblur import __version__
from adeblur.errors import AdeblurError, one_line

if TYPE_CHECKING:
    from adeblur.engine.infer import DeblurResult

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _gibibytes(text: str) -> int:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB, got {text!r}")
    return int(value * 2**30)


def _size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (or a single ``N`` for a square)."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or min(numbers) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size like 256x256, got {text!r}")
    return numbers[0], numbers[1]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def _add_restoration_options(p: argparse.ArgumentParser) -> None:
    """Device, tiling and TLC options, shared by deblur and evaluate."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--tile", type=_positive_int, metavar="N", help="tile size in pixels (default: automatic)")
    p.add_argument("--overlap", type=_non_negative_int, metavar="N", help="overlap between tiles in pixels (default 64)")
    p.add_argument("--memory-budget", type=_gibibytes, metavar="GIB",
                   help="tile when one forward pass would need more memory than this (default: 2 on the CPU, "
                        "half the free memory on CUDA)")
    p.add_argument("--tlc-window", type=_non_negative_int, metavar="PX",
                   help="local statistics window (TLC) in input pixels; 0: whole-image statistics "
                        "(default: 1.5 x the training patch size, else 384)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adeblur",
        description="Spatially-adaptive motion deblurring: SAPHNet, SAPHNet with adaptive sampling, M2AENet.",
    )
    parser.add_argument("--version", action="version", version=f"adeblur {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("deblur", help="deblur images (files, folders, globs)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file or folder (default: <stem>_deblurred.<ext> beside each input)")
    p.add_argument("--model", metavar="NAME",
                   help="registered model name (see `adeblur models`; default: the one the weights name, else m2aenet-lite)")
    p.add_argument("--weights", metavar="PATH",
                   help="weights file or training checkpoint (.safetensors; default: the shipped weights)")
    _add_restoration_options(p)
    p.add_argument("--kernel", metavar="FILE", help="blur kernel for kernel-based classical models (wiener, richardson-lucy)")
    p.add_argument("--save-mask", action="store_true", help="also write the predicted blur mask")
    p.add_argument("--save-motion", action="store_true", help="also write the predicted motion field")
    p.add_argument("--save-maps", action="store_true",
                   help="also write model-specific maps (attention, fusion, sampled pixels)")

    p = commands.add_parser("evaluate", help="score a model on a dataset (PSNR, SSIM, weighted variants)")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--layout", choices=("paired", "gopro", "hide", "realblur", "reloblur"), default="paired")
    p.add_argument("--model", metavar="NAME",
                   help="registered model name (default: the one the weights name, else m2aenet-lite)")
    p.add_argument("--weights", metavar="PATH",
                   help="weights file or training checkpoint (default: the model's shipped weights)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' for standard output)")
    p.add_argument("--csv", metavar="FILE", help="write per-image rows as CSV ('-' for standard output)")
    p.add_argument("--save", metavar="DIR", help="also write the restored images here")
    p.add_argument("--split", choices=("train", "test"),
                   help="split of the gopro, hide, realblur and reloblur layouts (default: test)")
    p.add_argument("--kernel", metavar="FILE",
                   help="one blur kernel for every image (wiener, richardson-lucy); replaces DIR/kernel/")
    _add_restoration_options(p)

    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--resume", metavar="PATH")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="key=value",
                   help="override config values (dotted keys, YAML values)")
    p.add_argument("--max-minutes", type=_positive_float, metavar="M", help="stop, with a checkpoint, after M minutes")

    p = commands.add_parser("profile", help="parameters, MACs, time and peak memory of a model")
    p.add_argument("--model", required=True, metavar="NAME")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW")
    p.add_argument("--mask-fraction", type=_fraction, metavar="F")
    p.add_argument("--compare-dense", action="store_true")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--json", metavar="FILE")

    p = commands.add_parser("synth", help="write a synthetic paired dataset (blur/, sharp/, mask/ or kernel/)")
    p.add_argument("--sharp", metavar="DIR",
                   help="folder of sharp images (default: procedurally generated dead-leaves images)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must be empty)")
    p.add_argument("--kind", required=True, choices=("local", "global"),
                   help="local object motion (writes mask/) or global camera shake (writes kernel/)")
    p.add_argument("--count", required=True, type=_positive_int, metavar="N")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--size", type=_size, metavar="HxW",
                   help="crop sharp images to this size (dead leaves: their size; default 256x256)")

    p = commands.add_parser("export", help="export a model's dense path to ONNX")
    p.add_argument("--model", required=True, metavar="NAME")
    p.add_argument("--weights", metavar="PATH", help="weights file or training checkpoint (.safetensors)")
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--random-weights", action="store_true",
                   help="export a trainable model with random weights (no --weights; for testing tools)")
    p.add_argument("--opset", type=_positive_int, default=18, metavar="N",
                   help="ONNX opset version (default 18, the oldest PyTorch's exporter writes)")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW",
                   help="size of the example image the exporter traces (default 256x256)")
    p.add_argument("--static", action="store_true",
                   help="fix batch 1 and --size in the graph (default: any batch, height and width)")
    p.add_argument("--tlc-window", type=_non_negative_int, metavar="PX",
                   help="local statistics window (TLC) in input pixels, built into the graph; "
                        "0: whole-image statistics (default: as for deblur)")

    commands.add_parser("models", help="list registered models and which have shipped weights")
    return parser


def _run_synth(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from adeblur.data.generate import write_synthetic_dataset

    steps = write_synthetic_dataset(
        Path(args.out),
        kind=args.kind,
        count=args.count,
        seed=args.seed,
        sharp_dir=Path(args.sharp) if args.sharp else None,
        size=args.size,
    )
    with Progress(transient=False) as progress:
        task = progress.add_task(f"synth {args.kind}", total=args.count)
        for _name in steps:
            progress.advance(task)
    print(f"wrote {args.count} {args.kind}-blur pairs to {args.out}")
    return EXIT_OK


def _write_json(data: object, target: str) -> None:
    """Write ``data`` as JSON to standard output (``-``) or to the file ``target``, atomically."""
    import json

    from adeblur.io import write_text

    text = json.dumps(data, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    write_text(target, text, what="JSON")


def _run_profile(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from adeblur.engine.profile import profile_model

    report = profile_model(
        args.model, size=args.size, mask_fraction=args.mask_fraction, compare_dense=args.compare_dense,
        device=args.device,
    )  # fmt: skip
    if args.json:
        _write_json(report, args.json)
    if args.json == "-":  # standard output carries the JSON only
        return EXIT_OK
    table = Table(title=f"adeblur profile: {report['model']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    size = "x".join(map(str, report["size"]))
    if report["input_size"] != report["size"]:
        size += f" (padded to {'x'.join(map(str, report['input_size']))})"
    table.add_row("size", size)
    if report["mask_fraction"] is not None:
        table.add_row("forced blur mask", f"{report['mask_fraction']:.1%} of the pixels")
    table.add_row("device", f"{report['device']}, {report['threads']} CPU threads")
    table.add_row("parameters", f"{report['params'] / 1e6:.3f} M")
    table.add_row("MACs", f"{report['macs'] / 1e9:.3f} G")
    timing = f"median of {report['repeats']} after {report['warmup']} warm-up"
    table.add_row("time", f"{report['seconds']:.4f} s ({timing})")
    peak = report["peak_mem_bytes"]
    table.add_row("peak memory", "n/a" if peak is None else f"{peak / 2**20:.1f} MiB ({report['peak_mem_method']})")
    if "seconds_dense" in report:
        macs = f"{report['macs_dense'] / 1e9:.3f} G / {report['macs_pruned'] / 1e9:.3f} G"
        table.add_row("MACs dense / pruned", macs)
        table.add_row("time dense / pruned", f"{report['seconds_dense']:.4f} s / {report['seconds_pruned']:.4f} s")
        table.add_row("max |pruned - dense|", f"{report['max_abs_diff']:.3g}")
    Console().print(table)
    return EXIT_OK


def _run_train(args: argparse.Namespace) -> int:
    import signal

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from adeblur.engine.config import load_config
    from adeblur.engine.train import TrainEvent, train

    config = load_config(args.config, args.set)
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console,
    )  # fmt: skip
    task = None
    stop_requests = []

    def on_signal(signum: int, frame: object) -> None:
        if stop_requests:  # a second Ctrl-C: stop now, without the final checkpoint
            raise KeyboardInterrupt
        stop_requests.append(signum)
        progress.console.print("stopping after this step (checkpoint first); press Ctrl-C again to abort")

    def on_event(event: TrainEvent) -> None:
        nonlocal task
        data = event.data
        if event.kind == "start":
            processes = f" x {data['world']} processes" if data["world"] > 1 else ""
            progress.console.print(
                f"training {config.model.name} ({data['params'] / 1e6:.2f} M params) on {data['device']}"
                f"{processes}, batch "
                f"{data['batch_per_process']} per process, patch {data['patch_size']}, amp {data['amp']} "
                f"-> {data['run_dir']}"
            )
            task = progress.add_task(config.name, total=data["steps"], completed=data["start_step"], status="")
        elif event.kind == "step" and task is not None:
            status = (
                f"loss {data['loss']:.4f}  lr {data['lr']:.2e}  {data['patches_per_second']:.1f} patches/s  "
                f"data {data['data_fraction']:.0%}"
            )
            progress.update(task, completed=event.step, status=status)
        elif event.kind == "validation":
            shown = "  ".join(
                f"{key} {data[key]:.4f}" for key in ("input_psnr", "input_psnr_w", "psnr", "ssim", "psnr_w", "ssim_w")
                if data.get(key) is not None
            )
            progress.console.print(f"step {event.step}: validation {shown}" + ("  (best)" if data.get("improved") else ""))
        elif event.kind == "note":
            progress.console.print(f"note: {data['message']}")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with progress:
            result = train(
                config, resume=args.resume, max_minutes=args.max_minutes, callback=on_event,
                should_stop=lambda: bool(stop_requests),
            )  # fmt: skip
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary
        timing = result.timing
        how = {"done": "finished", "time": "stopped at --max-minutes", "interrupted": "interrupted"}[result.stopped]
        best = f"; best {result.best['metric']} {result.best['value']:.4f} at step {result.best['step']}" if result.best else ""
        console.print(
            f"{how} at step {result.step}: {timing['patches_per_second']:.1f} patches/s, "
            f"{timing['data_fraction']:.1%} of step time on data{best}; checkpoint {result.last_checkpoint}"
        )
    return EXIT_OK if result.stopped != "interrupted" else 130


def _failure(result: DeblurResult) -> str:
    """One line on a failed input, naming it."""
    message = one_line(result.error)
    return message if str(result.input) in message else f"{result.input}: {message}"


def _run_deblur(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from adeblur.engine.infer import deblur_files, load_model

    model = load_model(args.model, args.weights, args.device,
                       pool_window="auto" if args.tlc_window is None else args.tlc_window or None)  # fmt: skip
    kernel = None
    if args.kernel:
        from adeblur.data.synth import load_kernel

        kernel = load_kernel(args.kernel).unsqueeze(0)
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )  # fmt: skip
    images = progress.add_task("images", total=None)
    tiles = progress.add_task("tiles", total=None)

    def on_progress(index: int, count: int, done: int, total: int) -> None:
        progress.update(images, total=count, completed=index)
        progress.update(tiles, total=total, completed=done)

    results = []
    with progress:
        for result in deblur_files(
            args.inputs, args.output, model=model, tile=args.tile, overlap=args.overlap,
            memory_budget=args.memory_budget, kernel=kernel, save_mask=args.save_mask,
            save_motion=args.save_motion, save_maps=args.save_maps, progress=on_progress,
        ):  # fmt: skip
            results.append(result)
            if result.ok:
                progress.advance(images)
            else:
                progress.console.print(f"skipped: {_failure(result)}")
    failed = [result for result in results if not result.ok]
    written = len(results) - len(failed)
    where = f" into {args.output}" if args.output else ""
    print(f"deblurred {written} image{'s' if written != 1 else ''}{where}")
    if failed:
        print(f"adeblur deblur: error: {len(failed)} of {len(results)} inputs failed:", file=sys.stderr)
        for result in failed:
            print(f"  {_failure(result)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _run_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from adeblur.engine.evaluate import evaluate_folder, write_csv
    from adeblur.errors import ConfigError

    if args.json == "-" and args.csv == "-":
        raise ConfigError("--json and --csv cannot both write to standard output ('-'); give one a file")
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip
    task = progress.add_task("evaluate", total=None, status="")

    def on_image(done: int, total: int, row: dict) -> None:
        status = f"{row['name']}: PSNR {row['psnr']:.2f} dB (input {row['input_psnr']:.2f})"
        progress.update(task, total=total, completed=done, status=status)

    with progress:
        results = evaluate_folder(
            args.data, args.layout, model=args.model, weights=args.weights, device=args.device,
            kernel=args.kernel, split=args.split, save_dir=args.save, progress=on_image, tile=args.tile,
            overlap=args.overlap, memory_budget=args.memory_budget,
            pool_window="auto" if args.tlc_window is None else args.tlc_window or None,
        )  # fmt: skip
    if args.json:
        _write_json(results, args.json)
    if args.csv:
        write_csv(results["images"], args.csv)
    if "-" in (args.json, args.csv):  # standard output carries the data only
        return EXIT_OK
    summary = results["summary"]

    def shown(value: float | None, digits: int) -> str:
        return "n/a (no masks)" if value is None else f"{value:.{digits}f}"

    table = Table(title=f"adeblur evaluate: {args.data} ({summary['count']} images)")
    table.add_column("metric", style="bold")
    table.add_column("restored", justify="right")
    table.add_column("input", justify="right")
    for key, label, digits in (("psnr", "PSNR (dB)", 3), ("ssim", "SSIM", 4),
                               ("psnr_w", "PSNR_w (dB)", 3), ("ssim_w", "SSIM_w", 4)):  # fmt: skip
        table.add_row(label, shown(summary[key], digits), shown(summary[f"input_{key}"], digits))
    table.add_row("seconds per image", f"{summary['seconds_per_image']:.4f}", "")
    table.add_row("seconds per image with I/O", f"{summary['seconds_per_image_io']:.4f}", "")
    Console().print(table)
    if args.save:
        print(f"wrote {summary['count']} restored image{'s' if summary['count'] != 1 else ''} to {args.save}")
    return EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from adeblur.engine.export import export_onnx
    from adeblur.engine.infer import DEFAULT_POOL_WINDOW, load_model, set_pool_window, shipped_weights
    from adeblur.errors import ConfigError
    from adeblur.models import build_model

    pool_window = "auto" if args.tlc_window is None else args.tlc_window or None
    if args.random_weights:
        if args.weights:
            raise ConfigError("pass either --weights or --random-weights, not both")
        model = build_model(args.model).eval()
        set_pool_window(model, DEFAULT_POOL_WINDOW if pool_window == "auto" else pool_window)  # no patch size known
        weights = "random"
    else:  # without --weights: the shipped weights, or load_model's message saying to pass --weights
        model = load_model(args.model, args.weights, device="cpu", pool_window=pool_window)
        shipped = shipped_weights(args.model)
        weights = Path(args.weights).name if args.weights else shipped.name if shipped else "none"
    with Console(stderr=True).status(f"exporting {args.model} to ONNX (this takes a minute)"):
        path = export_onnx(
            model, args.out, opset=args.opset, example_size=args.size, dynamic=not args.static,
            metadata={"model": args.model, "weights": weights},
        )  # fmt: skip
    shape = "1 x 3 x {} x {}".format(*args.size) if args.static else "any batch x 3 x any height x any width"
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, opset {args.opset}): input 'image' ({shape}, RGB in "
        "[0, 1]) -> output 'restored' (same shape; clamp to [0, 1])"
    )
    return EXIT_OK


def _run_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from adeblur.engine.infer import shipped_weights
    from adeblur.models import list_models

    table = Table(title="adeblur models")
    for column in ("name", "description", "trainable", "shipped weights"):
        table.add_column(column)
    for spec in list_models():
        if not spec.trainable:
            weights = "not needed"
        else:
            path = shipped_weights(spec.name)
            weights = path.name if path is not None else "none (pass --weights)"
        table.add_row(spec.name, spec.description, "yes" if spec.trainable else "no", weights)
    Console(width=max(100, Console().width)).print(table)
    return EXIT_OK


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "deblur": _run_deblur,
    "synth": _run_synth,
    "profile": _run_profile,
    "train": _run_train,
    "evaluate": _run_evaluate,
    "export": _run_export,
    "models": _run_models,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch  # after parsing: --help and usage errors stay fast

    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _HANDLERS[args.command](args)
    except AdeblurError as error:
        print(f"adeblur {args.command}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, torch.OutOfMemoryError) as error:  # CPU allocations, CUDA
        hint = "try --tile / --memory-budget, or a smaller data.batch_size / data.patch_size for training"
        print(f"adeblur {args.command}: error: out of memory ({one_line(error)[:200]}); {hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"adeblur {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
