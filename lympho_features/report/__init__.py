"""Self-contained HTML report of a fitted model, written for the hematologists who read it.

:func:`write_report` reads a model folder (``lympho fit``) and a features folder
(``lympho extract``) and writes ``REPORT_DIR/index.html``: cohort, cross-validated
performance, what the model looks at, one page per patient with the cells that
drove its decision, provenance and caveats. Everything is inline (figures as
base64 PNG, cell crops as base64 JPEG), the page needs no network and no
JavaScript (its Content-Security-Policy forbids both), and it prints one patient
per page.

The stages, each a module:

============== =====================================================================
inputs         read model, features, cells, manifest, CV predictions; SHAP values
language       plain-language names and meanings of the model's inputs
explanations   global importance, each patient's waterfall, ``predict --explain``
metrics        calibration bins, Wilson intervals, operating points
figures        matplotlib figures as inline PNG
thumbnails     crops re-segmented at the canonical scale, outlined, as inline JPEG
gallery        which cells of a patient to show
cell_types     the crops the cell-type gate calls other cells, on a patient's page
sections       summary, caveats, cohort, explanation, provenance (plain data)
performance    section 2: cross-validation, held-out patients, ablation (plain data)
patient        section 4: the patient table and pages (plain data)
render         Jinja2 templates (``templates/``) + style sheet (``static/``) -> HTML
style          the colours, defined once
============== =====================================================================

Decisions (what to show) are taken in Python into plain data; markup lives only
in the templates, which autoescape every value. model.json is read defensively:
a section whose data is absent is left out, so the report works with richer
model folders too.
"""

from ..errors import ReportError
from .explanations import explain_predictions, global_importance, waterfall
from .gallery import GalleryGroup, select_gallery
from .inputs import ReportInputs, load_inputs, shap_contributions
from .language import (
    ACQUISITION_FAMILIES,
    FAMILIES,
    configuration_words,
    describe_feature,
    feature_family,
    short_label,
    split_aggregate,
)
from .metrics import OPERATING_SENSITIVITIES, calibration_bins, operating_points, wilson_interval
from .render import (
    CSP,
    ReportResult,
    build_html,
    section_caveats,
    section_cohort,
    section_explanation,
    section_patients,
    section_performance,
    section_provenance,
    stylesheet,
    write_report,
)
from .style import CELL_OUTLINE, NUCLEUS_OUTLINE, REACTIVE_COLOUR, TUMORAL_COLOUR, UNKNOWN_COLOUR
from .thumbnails import ThumbnailMaker, cell_thumbnail

#: The report's style sheet (``static/report.css``), as text.
CSS = stylesheet()

__all__ = [
    "ACQUISITION_FAMILIES",
    "CELL_OUTLINE",
    "CSP",
    "CSS",
    "FAMILIES",
    "NUCLEUS_OUTLINE",
    "OPERATING_SENSITIVITIES",
    "REACTIVE_COLOUR",
    "TUMORAL_COLOUR",
    "UNKNOWN_COLOUR",
    "GalleryGroup",
    "ReportError",
    "ReportInputs",
    "ReportResult",
    "ThumbnailMaker",
    "build_html",
    "calibration_bins",
    "configuration_words",
    "cell_thumbnail",
    "describe_feature",
    "explain_predictions",
    "feature_family",
    "global_importance",
    "load_inputs",
    "operating_points",
    "section_caveats",
    "section_cohort",
    "section_explanation",
    "section_patients",
    "section_performance",
    "section_provenance",
    "select_gallery",
    "shap_contributions",
    "short_label",
    "split_aggregate",
    "waterfall",
    "wilson_interval",
    "write_report",
]
