"""What the command line says, apart from the commands' own options: notes after a run, the line of an
interrupted command, the labelled-metrics lines of ``predict`` and ``--explain``'s readable columns.

Kept apart from :mod:`lympho_features.cli` so that the command definitions stay short; every
function returns text or tables, printing is the command line's.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path


def count_shards(folder: Path) -> int:
    """Patients finished in a shard folder (one Parquet file each; temporary files are hidden ``.*.tmp``)."""
    return len(list(folder.glob("*.parquet"))) if folder.is_dir() else 0


def interrupted_line(command: str, params: dict) -> str:
    """What an interrupted command leaves behind, in one line (Ctrl-C)."""
    out = params.get("out")
    if command in ("extract", "embed"):
        shards = Path(out) / ("cells" if command == "extract" else "embeddings")
        return (
            f"interrupted: {count_shards(shards)} finished patient(s) are kept in {shards}; run the same command "
            "again to resume (they are not computed again)"
        )
    if command == "demo":
        return f"interrupted: the demo under {out} is incomplete; run `lympho demo` again to redo it"
    if command == "fit":
        return f"interrupted: no model was saved to {out}; run `lympho fit` again"
    # Every output is written to a temporary name and renamed at the end: nothing half-written is left.
    return f"interrupted: nothing was written to {out}; run the command again"


#: Skipped files named one per line on the terminal; beyond that, manifest.json lists them.
MAX_SKIPPED_SHOWN = 20

#: Why extract measured a patient again, by the reason its earlier result was not reused.
REDONE_BECAUSE = {
    "changed": "their crops or the settings changed since the last run",
    "version": "their earlier results were written by another version of lympho",
    "damaged": "their earlier results were damaged (truncated, unreadable or failing their checksum)",
}


def redone_kind(reason: str) -> str:
    """Key of :data:`REDONE_BECAUSE` for a reason of ``manifest.json``'s ``recomputed_shards``."""
    if reason == "inputs or settings changed":
        return "changed"
    if reason.startswith(("older shard format", "schema differs")):
        return "version"
    return "damaged"


def extract_notes(res, out: Path) -> list[str]:
    """The run's warnings in plain words, with the skipped files named (manifest.json has the details)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return list(res.warnings)
    redone = manifest.get("recomputed_shards", [])
    notes = [w for w in res.warnings if not (redone and w.startswith(f"{len(redone)} shard(s) recomputed"))]
    by_kind: dict[str, list[str]] = {}
    for r in redone:
        by_kind.setdefault(redone_kind(r["reason"]), []).append(r["patient_id"])
    for kind, ids in by_kind.items():
        notes.append(f"{len(ids)} patient(s) measured again because {REDONE_BECAUSE[kind]}: {', '.join(ids)}")
    gone = manifest.get("removed_stale_shards", [])
    if gone:
        notes.append(f"results of {len(gone)} patient(s) no longer in the data folder removed from {out / 'cells'}")
    return notes + skipped_lines(out / "manifest.json")


def skipped_lines(manifest_path: Path) -> list[str]:
    """One line per file a run skipped (``skipped`` of its manifest), the first :data:`MAX_SKIPPED_SHOWN`."""
    try:
        skipped = json.loads(manifest_path.read_text()).get("skipped", [])
    except (OSError, ValueError):
        return []
    lines = [f"skipped {s['image']}: {s['reason']}" for s in skipped[:MAX_SKIPPED_SHOWN]]
    if len(skipped) > MAX_SKIPPED_SHOWN:
        lines.append(f"... and {len(skipped) - MAX_SKIPPED_SHOWN} more skipped file(s), all listed in {manifest_path}")
    return lines


def cv_summary_line(model, cv, settings, out: Path, seconds: float) -> str:
    """What ``fit`` says at the end: the CV metrics, the threshold and the refer band, where it wrote, how long."""
    s, refer = cv.summary, model.metadata["refer"]
    return (
        f"CV ({settings.folds}-fold x {settings.repeats}, {s['n_patients']} patients, feature set "
        f"{settings.feature_set}, {len(model.features)} features): "
        f"balanced accuracy {s['balanced_accuracy_mean']:.3f} ± {s['balanced_accuracy_std']:.3f}, "
        f"ROC AUC {s['roc_auc_mean']:.3f} ± {s['roc_auc_std']:.3f}, "
        f"sensitivity {s['sensitivity_mean']:.3f}, specificity {s['specificity_mean']:.3f}; "
        f"threshold {model.threshold:.3f}, uncertain (refer) from {model.threshold - refer['below']:.3f} to "
        f"{model.threshold + refer['above']:.3f} "
        f"({refer['cv_fraction_referred']:.0%} of CV calls, {refer['cv_share_of_errors_referred'] or 0:.0%} of CV "
        f"errors) -> {out} ({seconds:.0f} s)"
    )


def with_readings(explained):
    """``--explain``'s table with ``top{k}_name`` and ``top{k}_reading`` after its columns (the model's inputs
    are transformed, e.g. the log of the count: the reading is the value in clinical units, rounded as on a
    lab report, in ASCII for spreadsheets)."""
    from .glossary import clinician_name, format_input_value

    out = explained.copy()
    k = 1
    while f"top{k}_feature" in out:
        names, values = out[f"top{k}_feature"], out[f"top{k}_value"]
        out[f"top{k}_name"] = [clinician_name(n) for n in names]
        out[f"top{k}_reading"] = [format_input_value(n, v, ascii=True) for n, v in zip(names, values, strict=True)]
        k += 1
    return out


def labelled_lines(m: dict, n_patients: int, threshold: float) -> list[str]:
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


@contextmanager
def progress_bar(console, label: str, unit: str, enabled: bool):
    """A progress bar on ``console`` fed by a ``progress(done, total)`` callable (thread-safe), with time left.

    Yields that callable, or None when ``enabled`` is False (``--quiet``, or output that is not a
    terminal: a script or a log file wants the result lines, not a bar redrawn ten times a second).
    """
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    from ._io import progress_columns

    columns = progress_columns(label, unit)
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def extract_summary_lines(res, out: Path) -> list[str]:
    """What ``extract`` says when it is done: the pixel scale's sources, then the counts and where they went."""
    lines = []
    if res.scale:
        run_scale = res.scale.get("run_red_cell_um_per_px")
        sources = ", ".join(f"{k} {v}" for k, v in res.scale["sources"].items())
        red = f"; red cells of the run: {run_scale:.4f} um/px" if run_scale else ""
        lines.append(f"pixel scale (patients per source): {sources}{red}")
    qc = ", ".join(f"{k} {v}" for k, v in res.qc_counts.items())
    lines.append(
        f"{res.n_patients} patients, {res.n_cells} cells ({qc}), {res.n_skipped} file(s) skipped, "
        f"{res.n_reused} patient(s) reused from an earlier run -> {out}"
    )
    return lines
