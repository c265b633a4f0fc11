"""`brainmri` command line: one thin function per subcommand; the work lives in the modules."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from brainmri.cli_parts import (
    EXIT_USER_ERROR,
    ClassName,
    Command,
    CropMode,
    DuplicatePolicy,
    ExplainMethod,
    Group,
    Runtime,
    choices,
)
from brainmri.errors import BrainMRIError

app = typer.Typer(
    name="brainmri",
    cls=Group,
    help=(
        "Train, evaluate and ship a 4-class brain MRI tumor classifier "
        "(glioma, meningioma, notumor, pituitary).\n\n"
        "Pipeline: clean (raw folder -> cleaned copy + report) -> train (recipe -> run dir) "
        "-> evaluate (checkpoint + test split -> metrics JSON and plots).\n\n"
        "Use a model: predict (classes behind an input guard), explain (Grad-CAM or occlusion "
        "maps), export (ONNX), serve (HTTP API and page), adapt (fine-tune to a new site)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: paragraphs rewrapped to the terminal and each option's help in one
    # wide column (rich's boxed table left it ~20 characters wide on an 80-column terminal)
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from brainmri import __version__

        typer.echo(f"brainmri {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Train, evaluate and ship a 4-class brain MRI tumor classifier."""


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user error as one line on stderr and exit EXIT_USER_ERROR; bugs keep their
    traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrainMRIError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt as exc:  # a command may say how to continue (train)
            typer.echo(f"interrupted; {exc}" if str(exc) else "interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        metavar="DIR",
        help="Kaggle-layout folder (Training/<class>/, Testing/<class>/). Default: env "
        "BRAINMRI_DATA, then ../shared/data/brain-tumor-mri.",
    ),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="Model file. Default: the model shipped in the package.",
    ),
]
DeviceOpt = Annotated[str | None, typer.Option(metavar="DEVICE", help="cpu, cuda or cuda:N.")]


@app.command(cls=Command)
@user_errors
def clean(
    data: DataOpt = None,
    out: Annotated[
        Path,
        typer.Option("--out", metavar="DIR", help="Output folder for the cleaned copy and report."),
    ] = Path("cleaned"),
    size: Annotated[
        int, typer.Option(metavar="PIXELS", help="Output image size (square, pixels).")
    ] = 224,
    near_threshold: Annotated[
        float,
        typer.Option(
            metavar="CORR",
            help="Near-duplicate threshold: normalized correlation of 24x24 grayscale "
            "thumbnails above which two images count as near copies.",
        ),
    ] = 0.995,
    policy: Annotated[
        DuplicatePolicy,
        typer.Option(
            metavar=choices(DuplicatePolicy),
            help="Duplicate policy. 'keep-one': keep one file of each exact/near duplicate "
            "group within a split and drop the training copies of cross-split leaks. "
            "'drop-from-train': only drop training copies of test images. 'report': drop nothing.",
        ),
    ] = DuplicatePolicy.keep_one,
    crop: Annotated[bool, typer.Option(help="Crop to the brain before resizing.")] = True,
    margin: Annotated[
        float, typer.Option(metavar="FRACTION", help="Crop margin as a fraction of the box.")
    ] = 0.02,
    max_pixels: Annotated[
        int, typer.Option(metavar="N", help="Quarantine images with more pixels than this.")
    ] = 40_000_000,
    val_fraction: Annotated[
        float,
        typer.Option(
            metavar="FRACTION",
            help="Validation share of Training written to splits/, in (0, 0.5]: whole groups of "
            "exact/near copies (corr > 0.98) are dealt to one side, stratified by class.",
        ),
    ] = 0.15,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the validation split.")] = 42,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Decode processes (default: all cores).")
    ] = None,
) -> None:
    """Validate, quarantine, dedupe, crop and resize a raw dataset into a cleaned copy.

    Never writes into --data. Writes OUT/Training|Testing/<class>/*.jpg, OUT/clean_report.json,
    OUT/leak_free_test.txt, OUT/splits/{train,val}.txt and prints a summary table.
    """
    from brainmri.data.clean import CleanOptions, format_summary, run_clean
    from brainmri.data.folders import resolve_data_dir

    options = CleanOptions(
        size=size,
        near_threshold=near_threshold,
        policy=policy.value,
        crop=crop,
        margin=margin,
        max_pixels=max_pixels,
        val_fraction=val_fraction,
        seed=seed,
        workers=workers,
    )
    report = run_clean(resolve_data_dir(data), out, options)
    typer.echo(format_summary(report))


@app.command(cls=Command)
@user_errors
def train(
    data: DataOpt = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            metavar="RECIPE",
            help="Recipe: a YAML file or a built-in name (cpu, seed, quick, smoke, cam). "
            "Default: cpu (the recipe the shipped model was first trained with; says its "
            "measured time first).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="DIR", help="Run directory (default runs/<recipe>-<time>)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a recipe value, e.g. --set train.batch_size=16 "
            "--set train.stages.0.epochs=3 (repeatable).",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            metavar="FILE",
            help="Local backbone weights file (sets model.weights_file).",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="DIR",
            help="Continue the run in this run directory from last.pt (a finished run is left "
            "as it is).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available)."),
    ] = None,
) -> None:
    """Train the classifier with a recipe's three stages; writes a run directory.

    The run directory holds recipe.yaml, environment.json, splits/, metrics.csv, tensorboard/,
    models/{stage1_best,best,final}.safetensors, models/class_labels.json, training_curves.png
    and last.pt (for --resume). Multi-GPU/CPU: launch with `torchrun --nproc_per_node N`.
    """
    import time as _time

    from brainmri.config import load_recipe
    from brainmri.data.folders import resolve_data_dir
    from brainmri.train.loop import (
        DEFAULT_RECIPE,
        DEFAULT_RECIPE_NOTE,
        complete_note,
        completed_run,
        refuse_with_resume,
        resume_hint,
    )
    from brainmri.train.loop import train as run_train

    if resume is not None:
        given = {"--config": config, "--set": overrides, "--data": data, "--out": out}
        refuse_with_resume([k for k, v in (given | {"--weights": weights}).items() if v])
        done = completed_run(resume)
        if done is not None:
            if os.environ.get("RANK", "0") == "0":
                typer.echo(complete_note(done))
            return
        recipe, data_dir, run_dir = None, None, resume
    else:
        extra = list(overrides or [])
        if weights is not None:
            extra.append(f"model.weights_file={weights}")
        if config is None and os.environ.get("RANK", "0") == "0":
            typer.echo(DEFAULT_RECIPE_NOTE, err=True)
        recipe = load_recipe(config or DEFAULT_RECIPE, extra)
        run_dir = out or Path("runs") / f"{recipe.name}-{_time.strftime('%Y%m%d-%H%M%S')}"
        data_dir = resolve_data_dir(data)
    try:
        result = run_train(recipe, data_dir, run_dir, resume=resume is not None, device=device)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(resume_hint(run_dir)) from None
    if os.environ.get("RANK", "0") != "0":  # torchrun: the summary comes from rank 0 only
        return
    typer.echo(
        f"done in {result.wall_seconds / 60:.1f} min, {result.epochs_run} epochs; "
        f"best val_loss {result.best_val_loss:.4f} (val_acc {result.best_val_acc:.4f}); "
        f"best model {result.best_path}"
    )


@app.command(cls=Command)
@user_errors
def ensemble(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUNS",
            help="Finished training run directories (two or more; single runs, not ensembles).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Run directory for the ensemble.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="DIR",
            help="Data folder (default: the one the first run trained on).",
        ),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Combine trained runs into one model that averages their logits.

    The runs must share image size, model shape and validation files (train them with one
    data.split_seed). Writes OUT/models/{best,final}.safetensors with a temperature fitted on
    that validation split, and prints each member's and the ensemble's validation figures.
    A recipe with `ensemble: N` does this itself at the end of `brainmri train`.
    """
    from brainmri.train.ensemble import assemble

    if out.exists() and any(out.iterdir()):
        raise BrainMRIError(f"{out} is not empty: choose another --out")
    summary = assemble(runs, out, data, device)
    typer.echo(
        f"ensemble of {len(runs)}: val_loss {summary['best_val_loss']:.4f} "
        f"val_acc {summary['val_acc']:.4f}; model {out / 'models' / 'best.safetensors'}"
    )


@app.command(cls=Command)
@user_errors
def evaluate(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="Model file (.safetensors from train). Default: the model shipped in the package.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="DIR",
            help="Labelled images: a Kaggle-layout folder (its Testing/ is scored), a Testing/ "
            "folder, or a plain <class>/ folder (some classes may be missing). Default: env "
            "BRAINMRI_DATA, then ../shared/data/brain-tumor-mri.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Results folder. Default: results/ in the model's run folder when the model is "
            "a train run's models/*.safetensors, else ./results (e.g. for the shipped model).",
        ),
    ] = None,
    tta: Annotated[
        int,
        typer.Option(
            min=1, max=5, metavar="N", help="Test-time augmentation views (1 = plain only)."
        ),
    ] = 5,
    leak_free: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="leak_free_test.txt from clean (default: DATA/leak_free_test.txt, "
            "else computed on the fly against DATA/Training).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward pass.")] = 64,
    device: DeviceOpt = None,
    gallery: Annotated[
        bool, typer.Option(help="Write misclassified.png: every misclassified image.")
    ] = True,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite results already in --out.")
    ] = False,
    site_check: Annotated[
        bool,
        typer.Option(
            help="Also read the files as predict does: how many its input guard would refuse, "
            "and whether the folder as a whole looks unlike the images the model was checked on "
            "(one more plain pass; needs a model file with a guard reference)."
        ),
    ] = True,
) -> None:
    """Score a model on labelled images, plain and with TTA, all images and leak-free subset.

    Writes test_results_final.json (accuracy, per-class precision/recall/F1/AUC, macro AUC,
    tumour sensitivity/specificity, each headline figure with a 95 % bootstrap interval,
    log-loss, ECE, confusion matrix, misclassified files, timings), confusion-matrix, ROC and
    reliability plots (also for the leak-free subset) and misclassified.png; prints a report.
    Refuses to overwrite earlier results unless --force.
    """
    from brainmri.data.folders import resolve_data_dir
    from brainmri.evaluate.run import evaluate as run_evaluate
    from brainmri.model.checkpoint import shipped_model_path

    model = model or shipped_model_path()
    if out is None:
        run_dir = model.resolve().parent.parent
        out = run_dir / "results" if (run_dir / "recipe.yaml").exists() else Path("results")
    run_evaluate(
        model, resolve_data_dir(data), out, tta, batch_size, device, leak_free,
        force=force, gallery=gallery, site_check=site_check,
    )  # fmt: skip


@app.command(cls=Command)
@user_errors
def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILES", help="Image/DICOM files and/or folders (searched recursively)."
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="Model file (.safetensors, or an .onnx from export). Default: the shipped model.",
        ),
    ] = None,
    tta: Annotated[
        int,
        typer.Option(
            min=1, max=5, metavar="N", help="Test-time augmentation views averaged (1 = plain)."
        ),
    ] = 1,
    crop: Annotated[
        CropMode,
        typer.Option(
            metavar=choices(CropMode),
            help="auto: crop scans with a wide black frame to the brain; on: always crop as "
            "`clean` does; off: take inputs as they are.",
        ),
    ] = CropMode.auto,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Also write the records to this JSON file."),
    ] = None,
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", metavar="FILE", help="Also write the records to this CSV file."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing --json/--csv files.")] = False,
    runtime: Annotated[
        Runtime,
        typer.Option(
            metavar=choices(Runtime),
            help="auto: PyTorch on a GPU, else ONNX Runtime; onnx; torch.",
        ),
    ] = Runtime.auto,
    device: DeviceOpt = None,
    batch_size: Annotated[
        int, typer.Option(min=1, metavar="N", help="Images per forward pass.")
    ] = 32,
    workers: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Decode threads (default: cores, at most 4)."),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(help="Progress bar on stderr (default: only on a terminal)."),
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence",
            metavar="P",
            help="Mark files whose top calibrated probability is under P as 'rejected: "
            "uncertain', no label, probabilities kept (0: off; default: the model file's own "
            "threshold if it has one, else off). What it buys off the benchmark: "
            "docs/RESULTS.md section 13.",
        ),
    ] = None,
) -> None:
    """Classify images: one line per file with the class and its calibrated probability.

    Files are streamed (decoded a bounded number ahead), so any number of files fits in memory.
    Each file gets a status: ok, rejected (the input guard refused it, with the reason) or
    error (unreadable); the others are still classified and the exit code is 1 if any file was
    not ok (2: the command could not run, one error line). Records in --json/--csv carry the
    model sha256, runtime, TTA and crop mode.
    When 20 or more files were scored and most of them (75 %) score above the median of the
    model's validation images, one warning line says the batch does not look like what the model
    was checked on (docs/RESULTS.md section 24). Not for clinical use.
    """
    from brainmri.infer.core import Classifier
    from brainmri.infer.predict import check_outputs, expand_inputs, run_predict

    paths = expand_inputs(inputs)
    check_outputs([json_out, csv_out], force, paths)
    if not paths:
        raise BrainMRIError("no image files found in the given inputs")
    classifier = Classifier(
        model, runtime.value, device, batch_size=batch_size, min_confidence=min_confidence,
        notice=lambda line: typer.echo(line, err=True),
    )  # fmt: skip
    counts = run_predict(classifier, paths, tta, crop.value, json_out, csv_out, workers, progress)
    if counts["ok"] != sum(counts.values()):
        raise typer.Exit(1)


@app.command(cls=Command)
@user_errors
def adapt(
    site: Annotated[
        Path,
        typer.Option(
            "--data",
            metavar="DIR",
            help="Labelled images of the new site: a folder of <class>/ sub-folders (glioma/, "
            "meningioma/, notumor/, pituitary/; any subset), never a benchmark split "
            "(a folder with Training/ or Testing/ is refused).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", metavar="DIR", help="Folder for model.safetensors + adapt.json."),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", metavar="MODEL", help="Model to adapt. Default: the shipped model."
        ),
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(
            "--replay",
            metavar="DIR",
            help="Benchmark folder (Training/<class>/) mixed in so the model keeps what it "
            "knew (refused with --set replay_ratio=0, which mixes in none). Default: env "
            "BRAINMRI_DATA, then ../shared/data/brain-tumor-mri.",
        ),
    ] = None,
    config: Annotated[
        str,
        typer.Option(
            "--config",
            "-c",
            metavar="SETTINGS",
            help="Settings: a YAML file or a built-in name.",
        ),
    ] = "default",
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a setting, e.g. --set steps=100 (repeatable); a setting adapt "
            "would not use is refused.",
        ),
    ] = None,
) -> None:
    """Fine-tune a model on a few labelled images of a new site (minutes on a CPU).

    Every member is fine-tuned for `steps` optimizer steps (50; rounded up to whole epochs) on
    the site images mixed with as many benchmark Training images; the input guard is refitted.
    Measure the result on images of the site that were NOT used here (`brainmri evaluate
    --model OUT/model.safetensors --data DIR`).
    Settings: configs/adapt/default.yaml; measured curve: docs/RESULTS.md section 14.
    """
    from brainmri.config import load_adapt_config
    from brainmri.data.folders import resolve_data_dir
    from brainmri.model.checkpoint import shipped_model_path
    from brainmri.train.adapt import adapt as run_adapt
    from brainmri.train.adapt import check_overrides, check_replay

    cfg = load_adapt_config(config, overrides)
    check_overrides(cfg, overrides)
    check_replay(cfg, replay)
    replay_dir = resolve_data_dir(replay) if cfg.replay_ratio > 0 else None
    result = run_adapt(model or shipped_model_path(), site, replay_dir, out, cfg)
    summary = result.summary
    counts = ", ".join(f"{k} {v}" for k, v in summary["site_counts"].items() if v)
    n_replay = sum(summary["replay_counts"].values())
    source = f" from {summary['replay']}" if summary["replay"] else ""
    typer.echo(
        f"adapted on {counts} site images (+{n_replay} benchmark{source}) "
        f"in {summary['seconds'] / 60:.1f} min; wrote {result.model_path}"
    )
    calibration = summary.get("calibration") or {}
    if calibration.get("temperature_at_bound") or calibration.get("temperature_all_right"):
        typer.echo(f"temperature from the held-out site images: {calibration['temperature_note']}")


@app.command(cls=Command)
@user_errors
def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FILE", help="ONNX file to write (.onnx).")
    ],
    model: ModelOpt = None,
    int8: Annotated[
        bool,
        typer.Option(
            help="Quantize to int8 (ONNX Runtime static quantization, calibrated on 128 "
            "Training images of --data). See docs/RESULTS.md for its accuracy."
        ),
    ] = False,
    data: DataOpt = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out file.")] = False,
) -> None:
    """Export a model file to ONNX: one graph (an ensemble included), dynamic batch.

    Input `pixels` float32 (batch, 1, S, S) in [0, 1] after the intensity normalization named
    in the metadata; outputs `logits`, `features` (penultimate) and, when the model file holds
    input-guard statistics, `ood_score`. Class names, preprocessing, temperature and the guard
    threshold are in the ONNX metadata. Run it with `brainmri predict --model FILE.onnx`.
    """
    from brainmri.infer.export import calibration_pixels, export_onnx
    from brainmri.model.checkpoint import read_metadata, shipped_model_path

    if out.exists() and not force:
        raise BrainMRIError(f"{out} exists; use --force to overwrite it")
    model = model or shipped_model_path()
    calibration = None
    if int8:
        from brainmri.data.folders import resolve_data_dir

        if not model.is_file():
            raise BrainMRIError(f"model file not found: {model}")
        calibration = calibration_pixels(resolve_data_dir(data), read_metadata(model))
    report = export_onnx(model, out, int8=int8, calibration=calibration)
    outputs = ", ".join(report["outputs"])
    kind = "int8" if int8 else "fp32"
    typer.echo(f"wrote {out} ({kind}; outputs {outputs}; {report['exporter']})")
    if int8:
        typer.echo(
            "note: int8 changes more than 1 test-split prediction of fp32 (docs/RESULTS.md §9); "
            "fp32 is the supported export",
            err=True,
        )


@app.command(cls=Command)
@user_errors
def serve(
    model: ModelOpt = None,
    host: Annotated[
        str,
        typer.Option(
            metavar="ADDRESS",
            help="Address to listen on (loopback by default; set BRAINMRI_API_KEY "
            "before listening on another).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="TCP port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="Server processes, each with its own copy of the model."
        ),
    ] = 1,
    max_body_mb: Annotated[
        float,
        typer.Option(
            min=0.01, metavar="MIB", help="Largest request body (MiB); larger ones get 413."
        ),
    ] = 16.0,
    max_files: Annotated[
        int, typer.Option(min=1, metavar="N", help="Most files in one request.")
    ] = 16,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="ONNX Runtime threads per model call (default 1: calls run side by side, "
            "one per core).",
        ),
    ] = None,
) -> None:
    """Serve the classifier: HTTP API (/v1/predict, /v1/explain, /v1/model, /healthz), the page
    at / and the OpenAPI docs at /docs.

    /v1/predict takes ?tta=N and ?crop=auto|on|off, /v1/explain ?class=NAME, ?method= and
    ?crop=, as predict's and explain's options. On a CPU without a GPU stack, PyTorch is loaded
    only for the first /v1/explain or a tta above 1 (docs/RESULTS.md section 11.5). With env
    BRAINMRI_API_KEY set, /v1/ requests need that key in the X-API-Key header. Not for clinical
    use.
    """
    from brainmri.serve.server import serve as run_server

    run_server(model, host, port, workers, max_body_mb, max_files, access_log, threads)


@app.command(cls=Command)
@user_errors
def explain(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILES", help="Image or DICOM files and/or folders (searched recursively)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the PNG overlays.")],
    model: ModelOpt = None,
    crop: Annotated[
        CropMode,
        typer.Option(
            metavar=choices(CropMode),
            help="auto: crop a wide black frame away; on: always crop; off: never.",
        ),
    ] = CropMode.auto,
    class_name: Annotated[
        ClassName | None,
        typer.Option(
            "--class",
            metavar=choices(ClassName),
            help="Explain this class instead of the predicted one.",
        ),
    ] = None,
    device: DeviceOpt = None,
    method: Annotated[
        ExplainMethod,
        typer.Option(
            metavar=choices(ExplainMethod),
            help="gradcam: Grad-CAM of the stride-16 stage, drawn above 15 % of its maximum "
            "(fast); occlusion: the drop of the "
            "class score when each region is blacked out (under a second more per image on 2 "
            "cores; weighs only what changes the answer).",
        ),
    ] = ExplainMethod.gradcam,
    progress: Annotated[
        bool | None,
        typer.Option(help="Progress bar on stderr (default: only on a terminal)."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Overwrite PNGs already in --out (from an earlier run).")
    ] = False,
) -> None:
    """Grad-CAM or occlusion map: where the model looked, as one PNG overlay per input.

    Writes OUT/<name>_<method>.png (input | overlay, class and probability written on it) and
    prints one line per file as soon as it is done; folders are searched as predict searches
    them (image and DICOM files). A later input with the same name gets
    OUT/<name>_2_<method>.png (_3_, ...); a PNG already there is an error unless --force.
    When another class than the model's answer is explained (--class), the answer is written
    beside it. An ensemble shows the mean of its members' Grad-CAM maps. Inputs the guard
    refuses are listed and skipped; the exit code is 1 if any file was not explained (2: the
    command could not run, one error line). How much
    of each map lies on the head: docs/RESULTS.md sections 16.7, 16.8 and 16.20."""
    from collections import Counter

    from tqdm import tqdm

    from brainmri.infer.gradcam import explain_files
    from brainmri.infer.predict import expand_inputs, format_record, summary_line

    paths = expand_inputs(inputs)
    if not paths:
        raise BrainMRIError("no image files found in the given inputs")
    counts: Counter = Counter()
    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, leave=False,
               disable=None if progress is None else not progress)  # fmt: skip
    explained = None if class_name is None else class_name.value
    records = explain_files(paths, out, model, crop.value, explained, device, method.value, force)
    try:
        for r in records:
            counts[r["status"]] += 1
            if r["status"] == "ok":
                bar.write(f"{r['path']}  {r['caption']}  -> {r['png']}", file=sys.stdout)
            else:
                bar.write(format_record(r, 0)[0], file=sys.stderr)
            bar.update(1)
        if len(paths) > 1:
            where = f"; maps in {out}" if counts["ok"] else ""
            bar.write(summary_line(counts, []) + where, file=sys.stderr)
    finally:
        bar.close()
    if counts["ok"] != len(paths):
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry for `python -m brainmri`
    app(prog_name="brainmri")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
