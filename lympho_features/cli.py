"""Command-line interface: thin wrappers that parse options and call the library.

Every command is equally usable from Python through the functions it calls
(:func:`lympho_features.extract.extract`, :func:`lympho_features.model.fit_model`...).
Errors in the user's input or environment end the command with a one-line
message on stderr and exit code 1 (a bad option value: 2), never a traceback;
:class:`LymphoCommand` is the one place that does it. Each command checks that
its output can be written before it starts work. Ctrl-C says what is kept and
exits 130.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from . import __version__
from ._io import check_output_file, check_output_folder, describe_os_error
from .cli_messages import (
    cv_summary_line,
    extract_notes,
    extract_summary_lines,
    interrupted_line,
    labelled_lines,
    progress_bar,
    skipped_lines,
    with_readings,
)
from .dataset import ClinicalColumns
from .errors import DatasetError, LymphoError, ModelError, SettingsError
from .feature_sets import DEFAULT_FEATURE_SET, FEATURE_SETS

console = Console(stderr=True, soft_wrap=True)


def _error(message: str) -> None:
    """The one way an error reaches the terminal: one line on stderr (never markup: messages quote user text)."""
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False)


def _fail(message: str, code: int = 2) -> None:
    """Stop on a bad option value (exit 2, as click does for usage errors)."""
    _error(message)
    raise typer.Exit(code)


class LymphoCommand(TyperCommand):
    """A lympho command: the one place that turns errors and Ctrl-C into a line on stderr and an exit code.

    A :class:`~lympho_features.errors.LymphoError` (a problem with the input or the environment) and an
    ``OSError`` (a path the system refuses) end the command with one line, exit 1; Ctrl-C says what is
    kept, exit 130. Anything else is a bug in lympho and keeps its traceback.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LymphoError as exc:
            _error(str(exc))
        except OSError as exc:
            _error(describe_os_error(exc))
        except KeyboardInterrupt:
            console.print(escape(interrupted_line(ctx.info_name or "", ctx.params)), highlight=False)
            raise typer.Exit(130) from None
        raise typer.Exit(1)


class _Lympho(typer.Typer):
    """Typer whose commands are all :class:`LymphoCommand`."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or LymphoCommand, **kwargs)


app = _Lympho(
    help="lympho: reactive vs tumoral lymphocytosis from blood-smear lymphocyte crops and three clinical values.",
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"lympho {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    # `lympho` alone: the help, and success (asking for help is not an error).
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit()


@app.command()
def extract(
    data_dir: Annotated[Path, typer.Argument(help="Folder with one sub-folder of crops per patient.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for cells.parquet, patients.parquet, manifest.json.")
    ],
    clinical: Annotated[
        Path | None, typer.Option("--clinical", help="Clinical CSV (default: the single *.csv in DATA_DIR).")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes; -1 uses every core.")] = 1,
    id_column: Annotated[str, typer.Option(help="CSV column with the patient ID.")] = "ID",
    label_column: Annotated[
        str, typer.Option(help="CSV column with the label (1 tumoral, 0 reactive, -1/empty unknown).")
    ] = "LABEL",
    gender_column: Annotated[str, typer.Option(help="CSV column with the gender.")] = "GENDER",
    dob_column: Annotated[str, typer.Option(help="CSV column with the date of birth.")] = "DOB",
    count_column: Annotated[str, typer.Option(help="CSV column with the lymphocyte count (10^9/L).")] = "LYMPH_COUNT",
    reference_date: Annotated[str, typer.Option(help="Date at which ages are computed (YYYY-MM-DD).")] = "2020-01-01",
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            metavar="UM_PER_PX",
            help="Micrometres per pixel of every crop (default: the clinical CSV's pixel-size column for the "
            "patients that have one, else measured on the red cells of each patient's crops).",
        ),
    ] = None,
    pixel_size_column: Annotated[
        str, typer.Option(help="Optional CSV column with a patient's micrometres per pixel.")
    ] = "PIXEL_SIZE_UM",
    cell_type_gate: Annotated[
        bool,
        typer.Option(
            "--cell-type-gate/--no-cell-type-gate",
            help="Fail crops the cell-type gate calls non-lymphocytes (QC reason not_lymphocyte), so that "
            "aggregates, cell scores and the model use lymphocytes only (default); with --no-cell-type-gate the "
            "segmentation's lobe rules do. cell_type and cell_type_prob are written either way.",
        ),
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="local (worker processes on this machine) or dask (a dask.distributed cluster)."
        ),
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="With --backend dask: the scheduler's address (tcp://host:8786), or local to start a "
            "LocalCluster of --jobs workers. Every worker must see DATA_DIR at the same path.",
        ),
    ] = None,
) -> None:
    """Segment every crop, measure each cell and aggregate per patient."""
    from .extract import ExtractSettings
    from .extract import extract as run_extract

    try:
        ref = date.fromisoformat(reference_date)
    except ValueError:
        _fail(f"--reference-date {reference_date!r} is not a date YYYY-MM-DD")
    cols = ClinicalColumns(id_column, label_column, gender_column, dob_column, count_column, pixel_size_column)
    try:
        settings = ExtractSettings(reference_date=ref, pixel_size_um=pixel_size, cell_type_gate=cell_type_gate)
    except SettingsError:
        _fail(f"--pixel-size {pixel_size} is not a pixel size in micrometres per pixel (0.005 to 5)")
    check_output_folder(out)
    res = run_extract(
        data_dir,
        out,
        clinical,
        jobs,
        settings,
        cols,
        progress=not quiet,
        backend=backend,
        scheduler=scheduler,
    )
    for line in extract_notes(res, Path(out)):
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    for line in extract_summary_lines(res, Path(out)):
        console.print(line, highlight=False, markup=False)


FEATURE_SET_HELP = (
    f"Which inputs: {'|'.join(FEATURE_SETS)} (blocks clinical, crops, morphology, cellscore, cellmorph, "
    "cellatyp, cnn joined by '+'; image = crops+cellatyp (images only), all = clinical+image; '-n_cells' "
    "drops the crop count). cellscore/cellmorph: weakly supervised cell model on every per-cell feature / "
    "without stain colour; cellatyp: cellmorph learned from the tumoral patients' atypical-looking cells "
    "only; morphology: the ~565 per-patient aggregates; cnn: needs `lympho embed`."
)


@app.command()
def fit(
    features_dir: Annotated[Path, typer.Argument(help="Folder written by `lympho extract`.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder (model.txt, model.json, cv_predictions.csv).")],
    folds: Annotated[int, typer.Option(help="CV folds (patient-level, stratified).")] = 5,
    repeats: Annotated[int, typer.Option(help="CV repeats with different shuffles.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed (CV splits and model).")] = 0,
    feature_set: Annotated[str, typer.Option(help=FEATURE_SET_HELP)] = DEFAULT_FEATURE_SET,
    min_sensitivity: Annotated[
        float | None, typer.Option(help="Pick the threshold keeping CV sensitivity at least this (e.g. 0.95).")
    ] = None,
    embeddings: Annotated[
        Path | None,
        typer.Option("--embeddings", help="Folder with embeddings.parquet of `lympho embed` (default: FEATURES_DIR)."),
    ] = None,
    ablation: Annotated[
        bool,
        typer.Option(
            "--ablation/--no-ablation",
            help="Also cross-validate the other configurations on the same folds; table in model.json (ablation). "
            "The CNN ones only with --embeddings or a cnn feature set.",
        ),
    ] = True,
    refer_error_rate: Annotated[
        float,
        typer.Option(
            help="predict flags 'uncertain' the probabilities in the band around the threshold where at least "
            "this share of the CV calls were wrong."
        ),
    ] = 0.3,
    refer_max_fraction: Annotated[
        float,
        typer.Option(
            help="The 'uncertain' band holds at most this share of the CV calls on each side of the threshold "
            "(keeps it meaningful at a low --min-sensitivity threshold)."
        ),
    ] = 0.25,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="CV folds fitted at once (threads).")] = 2,
    monotone: Annotated[
        bool,
        typer.Option(
            "--monotone/--no-monotone",
            help="A higher lymphocyte count, age, cell-model score or crop count never lowers the probability of tumoral "
            "(LightGBM monotone constraints); --no-monotone: unconstrained, as models before.",
        ),
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Cross-validate a patient-level classifier, then fit it on all labeled patients."""
    import time

    from .model import FitSettings, fit_features_dir, format_ablation

    try:  # every option of the fit is checked by FitSettings; a bad value is a usage error
        settings = FitSettings(
            feature_set=feature_set,
            folds=folds,
            repeats=repeats,
            seed=seed,
            min_sensitivity=min_sensitivity,
            ablation=ablation,
            refer_error_rate=refer_error_rate,
            refer_max_fraction=refer_max_fraction,
            n_jobs=jobs,
            monotone=monotone,
            embeddings_dir=embeddings,
        )
    except ModelError as exc:
        _fail(str(exc))
    check_output_folder(out, "model folder")
    t0 = time.perf_counter()
    with _cv_progress(settings, quiet) as progress:
        model, cv = fit_features_dir(features_dir, out, settings, progress=progress)
    if model.metadata.get("ablation"):
        console.print(format_ablation(model.metadata["ablation"]), highlight=False, markup=False)
    console.print(cv_summary_line(model, cv, settings, out, time.perf_counter() - t0), highlight=False, markup=False)


def _cv_progress(settings, quiet: bool):
    """fit's cross-validation bar (outer folds of every repeat done, time left), on a terminal unless --quiet."""
    unit = f"folds ({settings.folds}-fold x {settings.repeats} repeats)"
    return progress_bar(console, "cross-validation", unit, enabled=not quiet and sys.stdout.isatty())


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Folder written by `lympho fit`.")],
    features_dir: Annotated[Path, typer.Argument(help="Folder written by `lympho extract`.")],
    out: Annotated[Path, typer.Option("--out", help="Predictions CSV.")],
    kaggle: Annotated[
        bool, typer.Option("--kaggle", help="Write the challenge's submission format Id,Predicted.")
    ] = False,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Add each patient's strongest contributions (top{k}_feature, top{k}_value, top{k}_contribution "
            "in log-odds, positive toward tumoral) after the contract columns, then each one's name for a "
            "clinician and value as a lab report writes it (top{k}_name 'lymphocyte count', top{k}_reading "
            "'8.30 x10^9/L').",
        ),
    ] = False,
    explain_top: Annotated[int, typer.Option(help="How many contributions --explain adds per patient.")] = 3,
    embeddings: Annotated[
        Path | None,
        typer.Option(
            "--embeddings",
            help="Folder with embeddings.parquet of these patients, for cnn models (default: FEATURES_DIR).",
        ),
    ] = None,
) -> None:
    """Probability of tumoral lymphocytosis, decision, 'uncertain' flag (refer to flow cytometry) and
    'domain_warning' (how the patient lies outside the model's training cohort) for each patient."""
    from ._io import write_csv
    from .model import predict as run_predict

    if explain and kaggle:
        _fail("--explain cannot be combined with --kaggle (the submission format has fixed columns)")
    if explain_top < 1:
        _fail("--explain-top must be at least 1")
    check_output_file(out, "predictions file")
    if explain:
        from .report import explain_predictions

        preds = with_readings(explain_predictions(model_dir, features_dir, explain_top, embeddings))
    else:
        preds = run_predict(model_dir, features_dir, embeddings)
    from .domain import check_settings, warning_lines
    from .model import input_warnings, labelled_metrics, load_model, load_patients, training_patient_ids

    meta, patients = load_model(model_dir)[1], load_patients(features_dir)
    # Settings that are the user's to choose (e.g. the reference date of ages): shown, not refused.
    for line in check_settings(meta, features_dir, model_dir):
        console.print(f"note: {line}", highlight=False, markup=False)
    for line in input_warnings(meta, patients):
        console.print(f"warning: {line}", highlight=False, markup=False)
    for line in warning_lines(preds["patient_id"], preds["domain_warning"]):
        console.print(f"warning: {line}", highlight=False, markup=False)
    scored = labelled_metrics(preds, patients, meta["threshold"], training_patient_ids(model_dir))
    if kaggle:
        preds = preds.rename(columns={"patient_id": "Id", "prediction": "Predicted"})[["Id", "Predicted"]]
    write_csv(preds, out)
    console.print(f"{len(preds)} patients -> {out}", highlight=False)
    if scored is not None:
        for line in labelled_lines(scored, len(preds), meta["threshold"]):
            console.print(line, highlight=False, markup=False)


@app.command()
def embed(
    data_dir: Annotated[Path, typer.Argument(help="Folder with one sub-folder of crops per patient.")],
    out: Annotated[
        Path,
        typer.Option("--out", help="Output folder (may be the extract folder): embeddings/, embeddings.parquet."),
    ],
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="Backbone whose weights ship in a package (efficientnet-lite0) or a local state-dict file "
            "(.safetensors or a torch file read with weights_only). Nothing is ever downloaded.",
        ),
    ] = "efficientnet-lite0",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Crops per forward pass.")] = 64,
    workers: Annotated[
        int, typer.Option("--workers", help="Processes decoding and segmenting crops; -1 picks for the device.")
    ] = -1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    features: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="Folder written by `lympho extract` on DATA_DIR: each crop is cut at the scale it was measured at "
            "(its um_per_px in cells.parquet; default: the --out folder when it holds cells).",
        ),
    ] = None,
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            metavar="UM_PER_PX",
            help="Micrometres per pixel of the crops no features folder gives (default: measured on the red cells "
            "of each patient's crops, as `lympho extract` does).",
        ),
    ] = None,
) -> None:
    """CNN embedding of each nucleus-centred cell (optional learned features; needs the `cnn` extra).

    Each crop is resampled to the canonical scale and segmented there, as `lympho extract` measures it.
    """
    from .embed import DEVICES
    from .embed import embed as run_embed

    if device not in DEVICES:
        _fail(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if batch_size < 1:
        _fail("--batch-size must be at least 1")
    if pixel_size is not None and not 0.005 <= pixel_size <= 5.0:
        _fail(f"--pixel-size {pixel_size} is not a pixel size in micrometres per pixel (0.005 to 5)")
    check_output_folder(out)
    res = run_embed(
        data_dir,
        out,
        weights,
        device,
        batch_size,
        workers,
        progress=not quiet,
        features_dir=features,
        pixel_size_um=pixel_size,
    )
    for line in skipped_lines(Path(out) / "embed_manifest.json"):
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    console.print(
        f"{res.n_patients} patients, {res.n_cells} cells embedded ({res.embedding_dim} dimensions, "
        f"weights {res.weights}, {res.device}), {res.n_skipped} file(s) skipped, "
        f"{res.n_reused} patient(s) reused; {res.n_embedded} crops in {res.seconds:.1f} s "
        f"({res.crops_per_second:.0f} crops/s) -> {out}",
        highlight=False,
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the synthetic cohort, features and model.")] = Path(
        "artifacts/demo"
    ),
    patients: Annotated[int, typer.Option(help="Synthetic patients.")] = 36,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 2,
    report_dir: Annotated[
        Path, typer.Option("--report-dir", help="Folder for the HTML report of the default model.")
    ] = Path("reports/demo"),
) -> None:
    """Generate a seeded synthetic cohort, run extract and fit on it, print the CV metrics, write a report."""
    from .extract import extract as run_extract
    from .model import FitSettings, fit_features_dir, format_ablation
    from .synthetic import make_cohort

    check_output_folder(out)
    check_output_folder(report_dir, "report folder")
    data = out / "data"
    console.print(f"generating {patients} synthetic patients in {data}", highlight=False)
    make_cohort(data, n_patients=patients, seed=seed)
    res = run_extract(data, out / "features", None, jobs)
    console.print(f"extracted {res.n_cells} cells of {res.n_patients} patients", highlight=False)
    # `lympho fit`'s defaults (3 x 3 CV for speed): the ablation table compares the other configurations.
    model_dir = out / "model"
    settings = FitSettings(folds=3, repeats=3, seed=seed, n_jobs=jobs)
    with _cv_progress(settings, quiet=False) as progress:
        model, cv = fit_features_dir(out / "features", model_dir, settings, progress=progress)
    console.print(format_ablation(model.metadata["ablation"]), highlight=False, markup=False)
    s = cv.summary
    console.print(
        f"default model ({settings.feature_set}): balanced accuracy {s['balanced_accuracy_mean']:.3f} "
        f"± {s['balanced_accuracy_std']:.3f}, ROC AUC {s['roc_auc_mean']:.3f} ± {s['roc_auc_std']:.3f} -> {model_dir}",
        highlight=False,
    )
    _write_report(model_dir, out / "features", report_dir, data)


def _write_report(model_dir: Path, features_dir: Path, out: Path, data_dir: Path | None):
    from .report import write_report

    res = write_report(model_dir, features_dir, out, data_dir)
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    console.print(
        f"report of {res.n_patients} patients ({res.n_thumbnails} cell images, {res.size_bytes / 1e6:.1f} MB, "
        f"{res.seconds:.1f} s) -> {res.path}",
        highlight=False,
    )
    return res


@app.command()
def report(
    model_dir: Annotated[Path, typer.Argument(help="Folder written by `lympho fit`.")],
    features_dir: Annotated[Path, typer.Argument(help="Folder written by `lympho extract`: the patients to report.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder; receives index.html.")],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Folder of the crops (default: the one recorded in FEATURES_DIR/manifest.json)."
        ),
    ] = None,
) -> None:
    """Write a self-contained HTML report: cohort, CV performance, explanations, one page per patient."""
    from .dataset import check_data_dir

    check_output_folder(out, "report folder")
    if data_dir is not None:
        check_data_dir(data_dir)  # a missing crops folder would give a report without a single cell image
    _write_report(model_dir, features_dir, out, data_dir)


@app.command()
def inspect(
    data_dir: Annotated[Path, typer.Argument(help="Folder with one sub-folder of crops per patient.")],
    out: Annotated[Path, typer.Option("--out", help="Montage image to write (PNG).")],
    patient: Annotated[str | None, typer.Option("--patient", help="Only this patient's crops.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=1000, help="Number of crops in the montage.")] = 48,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Only crops with this QC reason (e.g. touching_cells), 'flagged' for any failure, or "
            "cell_type=TYPE for the crops the cell-type gate calls TYPE (e.g. cell_type=neutrophil).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random sample of crops.")] = 0,
    columns: Annotated[int, typer.Option("--columns", min=1, max=32, help="Tiles per row.")] = 8,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image", help="Show this crop (PATIENT/FILE, as in cells.parquet); repeat for more. Overrides the sample."
        ),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="Folder written by `lympho extract` on DATA_DIR: each crop is drawn at the scale it was measured at "
            "(its um_per_px in cells.parquet).",
        ),
    ] = None,
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            metavar="UM_PER_PX",
            help="Micrometres per pixel of every crop not in --features (default: measured on the red cells of "
            "each patient's crops, as `lympho extract` does).",
        ),
    ] = None,
) -> None:
    """Draw a montage of segmented crops (nucleus and cell outlines, QC flags) to check the segmentation by eye.

    Each crop is resampled to the canonical scale and segmented there, as `lympho extract` measures it.
    """
    from .celltype import CELL_TYPES, UNKNOWN
    from .montage import inspect_folder, write_png
    from .segment import QC_REASONS

    types = (*CELL_TYPES, UNKNOWN)
    if only is not None and only.startswith("cell_type="):
        if only.split("=", 1)[1] not in types:
            _fail(f"--only cell_type= must name one of: {', '.join(types)}")
    elif only is not None and only != "flagged" and only not in QC_REASONS:
        _fail(f"--only must be 'flagged', cell_type=TYPE or one of: {', '.join(QC_REASONS)}")
    if out.suffix.lower() != ".png":
        _fail(f"--out must be a .png file: {out}")
    if pixel_size is not None and not 0.005 <= pixel_size <= 5.0:
        _fail(f"--pixel-size {pixel_size} is not a pixel size in micrometres per pixel (0.005 to 5)")
    check_output_file(out, "montage")
    picture, rows = inspect_folder(
        data_dir, patient, n, seed, None, only, columns, image, features_dir=features, pixel_size_um=pixel_size
    )
    if not rows:
        raise DatasetError(f"no crop to show in {data_dir}" + (f" for patient {patient}" if patient else ""))
    write_png(picture, out)
    n_ok = sum(r["qc_reason"] == "ok" for r in rows)
    console.print(f"{len(rows)} crops ({n_ok} passing QC) -> {out}", highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
