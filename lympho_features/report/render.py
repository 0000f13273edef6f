"""From plain data to one self-contained HTML file: the Jinja2 templates, the style sheet, the writing.

Templates (``templates/*.html.j2``) and the style sheet (``static/report.css``)
are package data. Autoescaping is on: patient IDs, file names and every value
from the user's files are text, never markup.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup

from .._io import atomic_path
from ..errors import ReportError
from . import style
from .cell_types import HIGH_OTHER_CELL_SHARE
from .explanations import global_importance, percentile_note, start_note
from .inputs import ReportInputs, load_inputs
from .numbers import percent
from .patient import patients
from .performance import performance
from .sections import caveats, cohort, explanation, provenance, report_context
from .thumbnails import ThumbnailMaker

#: The page may load nothing and run nothing: images are inline, styles inline, no script.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

#: The colours the templates write inline (legend dots), by role.
COLOURS = {
    "tumoral": style.TUMORAL_COLOUR,
    "reactive": style.REACTIVE_COLOUR,
    "unknown": style.UNKNOWN_COLOUR,
    "nucleus": style.NUCLEUS_OUTLINE_COLOUR,
    "cell": style.CELL_OUTLINE_COLOUR,
}


@functools.cache
def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: package templates, autoescaping on, undefined names an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lympho_features.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


@functools.cache
def stylesheet() -> str:
    """The report's style sheet (package data)."""
    return resources.files("lympho_features.report").joinpath("static", "report.css").read_text(encoding="utf-8")


#: Constants the templates may quote.
CONSTANTS = {"other_cells_threshold": percent(HIGH_OTHER_CELL_SHARE)}


def render(template: str, **context) -> str:
    """Render one of the package's templates with the colours and constants every template may use."""
    return environment().get_template(template).render(colours=COLOURS, **CONSTANTS, **context)


def page_notes(inp: ReportInputs) -> dict[str, str]:
    """The notes every patient page repeats: what the waterfall starts from, what percentiles compare with."""
    return {
        "start_note": start_note(inp),
        "percentile_note": percentile_note(inp),
        "threshold": f"{inp.threshold:.3f}",
    }


@dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    path: Path
    size_bytes: int
    n_patients: int
    n_thumbnails: int
    seconds: float
    warnings: list[str]


def build_html(inp: ReportInputs, generated: str | None = None) -> tuple[str, int]:
    """The whole report as one HTML string; also returns the number of cell thumbnails (galleries and strips)."""
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    context = report_context(inp, generated)
    thumbs = ThumbnailMaker.for_report(inp)
    rows, pages = patients(inp, thumbs)
    if thumbs.missing:
        inp.warnings.append(f"{thumbs.missing} crop(s) could not be read from {inp.data_dir}")
    doc = render(
        "report.html.j2",
        csp=Markup(CSP),  # a constant: its quotes stay quotes
        css=Markup(stylesheet()),  # package data, not user input
        css_variables=style.CSS_VARIABLES,
        perf=performance(inp),
        patient_rows=rows,
        pages=pages,
        **page_notes(inp),
        provenance=provenance(inp, generated),
        **context,
    )
    return doc, sum(1 for cache in (thumbs.cache, thumbs.strip_cache) for v in cache.values() if v)


def write_report(
    model_dir: str | Path,
    features_dir: str | Path,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
) -> ReportResult:
    """Write ``out_dir/index.html`` for a model and a features folder.

    Parameters
    ----------
    model_dir : path
        Folder written by ``lympho fit``.
    features_dir : path
        Folder written by ``lympho extract``: the patients to report on.
    out_dir : path
        Receives ``index.html`` (written atomically).
    data_dir : path, optional
        Folder of the crops; defaults to the ``data_dir`` recorded in the
        features' manifest.json. Without crops the galleries show placeholders.

    Raises
    ------
    ReportError
        Missing or incompatible model or features.
    """
    t0 = time.perf_counter()
    inp = load_inputs(model_dir, features_dir, data_dir)
    doc, n_thumbs = build_html(inp)
    out = Path(out_dir) / "index.html"
    try:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(doc, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return ReportResult(out, out.stat().st_size, len(inp.patients), n_thumbs, time.perf_counter() - t0, inp.warnings)


# -------------------------------------------- one section as HTML (API) ----
def section_caveats(inp: ReportInputs, imp=None) -> str:
    """The "limits of this tool" section as HTML (``imp``: :func:`global_importance`, computed when None)."""
    return render("caveats.html.j2", caveats=caveats(inp, global_importance(inp) if imp is None else imp))


def section_cohort(inp: ReportInputs) -> str:
    """Section 1 (cohort) as HTML."""
    return render("cohort.html.j2", cohort=cohort(inp))


def section_performance(inp: ReportInputs) -> str:
    """Section 2 (cross-validated performance) as HTML."""
    return render("performance.html.j2", perf=performance(inp))


def section_explanation(inp: ReportInputs, imp=None) -> str:
    """Section 3 (what the model looks at) as HTML."""
    x = explanation(inp, global_importance(inp) if imp is None else imp)
    return render("explanation.html.j2", explanation=x)


def section_patients(inp: ReportInputs, thumbs: ThumbnailMaker) -> tuple[str, str]:
    """Section 4 as HTML: the patient table, and the patient pages."""
    rows, pages = patients(inp, thumbs)
    table = render("patients_table.html.j2", patient_rows=rows, threshold=f"{inp.threshold:.3f}")
    notes = page_notes(inp)
    return table, "".join(render("patient.html.j2", page=p, **notes) for p in pages)


def section_provenance(inp: ReportInputs, generated: str) -> str:
    """Section 5 (provenance) as HTML."""
    return render("provenance.html.j2", provenance=provenance(inp, generated))
