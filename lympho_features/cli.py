"""Command-line interface: thin wrappers that parse options and call the library.

Every command is equally usable from Python through the functions it calls
(:func:`lympho_features.extract.extract`, :func:`lympho_features.model.fit_model`...).
Errors in the user's input end the command with a one-line message and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .dataset import ClinicalColumns, DatasetError
from .errors import SettingsError
from .feature_sets import DEFAULT_FEATURE_SET, FEATURE_SETS, ModelError

app = typer.Typer(
    help="lympho: reactive vs tumoral lymphocytosis from blood-smear lymphocyte crops and three clinical values.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (DatasetError, ModelError) as exc:
        _fail(str(exc))
    except PermissionError as exc:
        _fail(f"permission denied: {exc.filename or exc}")
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            _fail(f"no space left on device while writing {exc.filename or 'output'}")
        raise


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
        settings = ExtractSettings(reference_date=ref, pixel_size_um=pixel_size)
    except SettingsError:
        _fail(f"--pixel-size {pixel_size} is not a pixel size in micrometres per pixel (0.005 to 5)")
    res = _guard(
        run_extract,
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
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if res.scale:
        run_scale = res.scale.get("run_red_cell_um_per_px")
        sources = ", ".join(f"{k} {v}" for k, v in res.scale["sources"].items())
        red = f"; red cells of the run: {run_scale:.4f} um/px" if run_scale else ""
        console.print(f"pixel scale (patients per source): {sources}{red}", highlight=False)
    qc = ", ".join(f"{k} {v}" for k, v in res.qc_counts.items())
    console.print(
        f"{res.n_patients} patients, {res.n_cells} cells ({qc}), {res.n_skipped} file(s) skipped, "
        f"{res.n_reused} patient(s) reused from an earlier run -> {out}",
        highlight=False,
    )


@app.command()
def fit(
    features_dir: Annotated[Path, typer.Argument(help="Folder written by `lympho extract`.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder (model.txt, model.json, cv_predictions.csv).")],
    folds: Annotated[int, typer.Option(help="CV folds (patient-level, stratified).")] = 5,
    repeats: Annotated[int, typer.Option(help="CV repeats with different shuffles.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed (CV splits and model).")] = 0,
    feature_set: Annotated[
        str,
        typer.Option(
            help=f"Which inputs: {'|'.join(FEATURE_SETS)} (blocks clinical, crops, morphology, cellscore, cellmorph, "
            "cellatyp, cnn joined by '+'; image = crops+cellatyp (images only), all = clinical+image; '-n_cells' "
            "drops the crop count). cellscore/cellmorph: weakly supervised cell model on every per-cell feature / "
            "without stain colour; cellatyp: cellmorph learned from the tumoral patients' atypical-looking cells "
            "only; morphology: the ~565 per-patient aggregates; cnn: needs `lympho embed`."
        ),
    ] = DEFAULT_FEATURE_SET,
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
) -> None:
    """Cross-validate a patient-level classifier, then fit it on all labeled patients."""
    import time

    from .model import FitSettings, fit_features_dir, format_ablation

    settings = _guard(
        FitSettings,
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
    t0 = time.perf_counter()
    with _cv_progress() as progress:
        model, cv = _guard(fit_features_dir, features_dir, out, settings, progress=progress)
    s = cv.summary
    if model.metadata.get("ablation"):
        console.print(format_ablation(model.metadata["ablation"]), highlight=False, markup=False)
    refer = model.metadata["refer"]
    console.print(
        f"CV ({folds}-fold x {repeats}, {s['n_patients']} patients, feature set {feature_set}, {len(model.features)} features): "
        f"balanced accuracy {s['balanced_accuracy_mean']:.3f} ± {s['balanced_accuracy_std']:.3f}, "
        f"ROC AUC {s['roc_auc_mean']:.3f} ± {s['roc_auc_std']:.3f}, "
        f"sensitivity {s['sensitivity_mean']:.3f}, specificity {s['specificity_mean']:.3f}; "
        f"threshold {model.threshold:.3f}, uncertain from -{refer['below']:.3f} to +{refer['above']:.3f} around it "
        f"({refer['cv_fraction_referred']:.0%} of CV calls, {refer['cv_share_of_errors_referred'] or 0:.0%} of CV "
        f"errors) -> {out} ({time.perf_counter() - t0:.0f} s)",
        highlight=False,
    )


@contextmanager
def _cv_progress():
    """A bar of the cross-validation's outer folds on a terminal (nothing otherwise): the ``progress`` fit takes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("cross-validation"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("folds", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


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
            "in log-odds, positive toward tumoral) after the contract columns.",
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
    """Probability of tumoral lymphocytosis, decision and 'uncertain' flag (refer to flow cytometry) for each patient."""
    from ._io import write_csv
    from .model import predict as run_predict

    if explain and kaggle:
        _fail("--explain cannot be combined with --kaggle (the submission format has fixed columns)")
    if explain_top < 1:
        _fail("--explain-top must be at least 1")
    if explain:
        from .report import ReportError, explain_predictions

        try:
            preds = _guard(explain_predictions, model_dir, features_dir, explain_top, embeddings)
        except ReportError as exc:
            _fail(str(exc))
    else:
        preds = _guard(run_predict, model_dir, features_dir, embeddings)
    from .model import input_warnings, labelled_metrics, load_model, load_patients, training_patient_ids

    meta, patients = _guard(load_model, model_dir)[1], _guard(load_patients, features_dir)
    for line in input_warnings(meta, patients):
        console.print(f"warning: {line}", highlight=False, markup=False)
    scored = labelled_metrics(preds, patients, meta["threshold"], training_patient_ids(model_dir))
    if kaggle:
        preds = preds.rename(columns={"patient_id": "Id", "prediction": "Predicted"})[["Id", "Predicted"]]
    _guard(write_csv, preds, out)
    console.print(f"{len(preds)} patients -> {out}", highlight=False)
    if scored is not None:
        for line in _labelled_lines(scored, len(preds), meta["threshold"]):
            console.print(line, highlight=False, markup=False)


def _labelled_lines(m: dict, n_patients: int, threshold: float) -> list[str]:
    """What `predict` says when the features folder records labels (see model.labelled_metrics)."""

    def f(x):
        return "n/a" if x != x else f"{x:.3f}"  # NaN: a class is absent

    lines = [
        f"labels recorded for {m['n']} of {n_patients} patients ({m['n_tumoral']} tumoral, {m['n_reactive']} "
        f"reactive): balanced accuracy {f(m['balanced_accuracy'])}, ROC AUC {f(m['roc_auc'])}, sensitivity "
        f"{f(m['sensitivity'])}, specificity {f(m['specificity'])} at threshold {threshold:.3f}; "
        f"{m['n_uncertain']} uncertain (refer), balanced accuracy {f(m['balanced_accuracy_confident'])} on the "
        f"other {m['n'] - m['n_uncertain']}"
    ]
    if m.get("n_in_training"):
        lines.append(
            f"note: {m['n_in_training']} of these labelled patients trained the model: the figures above are "
            "in-sample (optimistic); the cross-validated ones are in model.json"
        )
    return lines


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
) -> None:
    """CNN embedding of each nucleus-centred cell (optional learned features; needs the `cnn` extra)."""
    from .embed import DEVICES, EmbedError
    from .embed import embed as run_embed

    if device not in DEVICES:
        _fail(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if batch_size < 1:
        _fail("--batch-size must be at least 1")
    try:
        res = _guard(run_embed, data_dir, out, weights, device, batch_size, workers, progress=not quiet)
    except EmbedError as exc:
        from rich.markup import escape

        _fail(escape(str(exc)))  # messages name extras like [cnn], which are not markup
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

    data = out / "data"
    console.print(f"generating {patients} synthetic patients in {data}", highlight=False)
    make_cohort(data, n_patients=patients, seed=seed)
    res = _guard(run_extract, data, out / "features", None, jobs)
    console.print(f"extracted {res.n_cells} cells of {res.n_patients} patients", highlight=False)
    # `lympho fit`'s defaults (3 x 3 CV for speed): the ablation table compares the other configurations.
    model_dir = out / "model"
    settings = _guard(FitSettings, folds=3, repeats=3, seed=seed, n_jobs=jobs)
    with _cv_progress() as progress:
        model, cv = _guard(fit_features_dir, out / "features", model_dir, settings, progress=progress)
    console.print(format_ablation(model.metadata["ablation"]), highlight=False, markup=False)
    s = cv.summary
    console.print(
        f"default model ({settings.feature_set}): balanced accuracy {s['balanced_accuracy_mean']:.3f} "
        f"± {s['balanced_accuracy_std']:.3f}, ROC AUC {s['roc_auc_mean']:.3f} ± {s['roc_auc_std']:.3f} -> {model_dir}",
        highlight=False,
    )
    _write_report_or_fail(model_dir, out / "features", report_dir, data)


def _write_report_or_fail(model_dir: Path, features_dir: Path, out: Path, data_dir: Path | None):
    from .report import ReportError, write_report

    try:
        res = _guard(write_report, model_dir, features_dir, out, data_dir)
    except ReportError as exc:
        _fail(str(exc))
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
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
    _write_report_or_fail(model_dir, features_dir, out, data_dir)


@app.command()
def inspect(
    data_dir: Annotated[Path, typer.Argument(help="Folder with one sub-folder of crops per patient.")],
    out: Annotated[Path, typer.Option("--out", help="Montage image to write (PNG).")],
    patient: Annotated[str | None, typer.Option("--patient", help="Only this patient's crops.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=1000, help="Number of crops in the montage.")] = 48,
    only: Annotated[
        str | None,
        typer.Option(
            "--only", help="Only crops with this QC reason (e.g. touching_cells), or 'flagged' for any failure."
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
) -> None:
    """Draw a montage of segmented crops (nucleus and cell outlines, QC flags) to check the segmentation by eye."""
    from .montage import inspect_folder, write_png
    from .segment import QC_REASONS

    if only is not None and only != "flagged" and only not in QC_REASONS:
        _fail(f"--only must be 'flagged' or one of: {', '.join(QC_REASONS)}")
    if out.suffix.lower() != ".png":
        _fail(f"--out must be a .png file: {out}")
    picture, rows = _guard(inspect_folder, data_dir, patient, n, seed, None, only, columns, image)
    if not rows:
        _fail(f"no crop to show in {data_dir}" + (f" for patient {patient}" if patient else ""))
    _guard(write_png, picture, out)
    n_ok = sum(r["qc_reason"] == "ok" for r in rows)
    console.print(f"{len(rows)} crops ({n_ok} passing QC) -> {out}", highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
