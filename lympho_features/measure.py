"""What one crop and one patient are measured with: the extraction settings, each patient's pixel
scale, and one crop's segmentation, features, cell type and acquisition.

:func:`measure_crop` is the whole per-crop step (``lympho inspect`` calls it);
:func:`segment_at_canonical` is where a crop as read becomes the pixels that
are segmented and measured (extraction, ``lympho inspect``'s tiles, the
report's thumbnails and ``lympho embed``'s windows all go through it, at the
crop's scale, :func:`crop_scales`); :func:`lympho_features.extract.extract` runs
:func:`measure_cell` over a patient's crops, then the cell-type gate and the
blur check against the patient's own crops, and :func:`patient_scales` before
that, so that every crop is measured at its patient's scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ._lazy import pd
from ._validate import SettingsCheck
from .acquisition import crop_acquisition
from .aggregate import AggregateSettings
from .celltype import CellTypeGateError, apply_gate, gate_measurements, gate_reads_hue
from .dataset import (
    DEFAULT_REFERENCE_DATE,
    MAX_PIXELS,
    ImageError,
    read_crop,
)
from .features import FeatureSettings, cell_features
from .focus import equalise_focus
from .scale import (
    CANONICAL_UM_PER_PX,
    RED_CELL_DIAMETER_UM,
    RESAMPLE_TOLERANCE,
    RUN_AGREEMENT,
    SCALE_FLAGS,
    PatientScale,
    ScaleEstimate,
    estimate_from_diameters,
    pool_run,
    red_cell_sample,
    to_canonical,
    to_physical,
)
from .segment import (
    Segmentation,
    SegmentationSettings,
    judge_focus_on,
    patient_blur,
    patient_smudge,
    rejudge_qc_reason,
    segment_cell,
)
from .workers import parallel

#: Bump when a change to the code changes the features for the same settings,
#: so that shards from older code are recomputed rather than reused.
#: 5: sizes in um and um^2 (crops resampled to the canonical scale), blur judged against the patient's crops.
#: 6: cell-type gate (cell_type, cell_type_prob; is_not_lymphocyte and the QC reason not_lymphocyte from it).
#: 7: chromatin texture (Haralick, LBP, granularity, nucleoli) measured on the nucleus smoothed by 1 px
#: (FeatureSettings.texture_sigma), so that focus and JPEG compression move it less.
#: 8: tight crops (cut close around the cell, no red cells) segmented without red-cell references (qc_tight_crop;
#: QC reason tight_crop without a pixel size); Haralick texture read on the nucleus' optical density (was its grey
#: level), so that a stain's strength and a camera's gamma cancel; smudge cells' paleness judged against the
#: patient's own crops (``qc_nucleus_od``, ``qc_cytoplasm_fraction``); cell-type gate rebuilt (nucleoli contrast
#: among its inputs, threshold chosen out of fold) and on by default.
#: 9: the red-cell ruler reads red cells cut by the crop's edge and weighs each by the room its centre had (x1.6
#: read 4 % too coarse before), and pools the run's red cells when under half the patients can be measured alone:
#: um_per_px and every size move (-0.24 % on the challenge trainset); cell-type gate rebuilt on re-acquired copies.
#: 10: every crop brought to one focus before it is segmented and measured (SegmentationSettings.focus_edge_sigma,
#: lympho_features.focus: a Gaussian blur added at the canonical scale until the crop's edges read 1.27), so that
#: focus, optics, resampling and JPEG move the measurements less; acq_edge_sigma (the crop's edge blur before);
#: cell-type gate rebuilt on such crops.
#: 11: Haralick counted on the nucleus' core, 2 px inside its outline (FeatureSettings.haralick_inset), and the
#: nucleoli's floor a share of the nucleus' mean OD (nucleoli_min_relative_depth) instead of 0.3 OD: a weaker or
#: stronger nuclear stain moves both less; cell-type gate rebuilt.
FEATURES_VERSION = 11


@dataclass(frozen=True)
class ExtractSettings:
    """Every setting that changes the tables ``lympho extract`` writes."""

    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    reference_date: date = DEFAULT_REFERENCE_DATE
    max_pixels: int = MAX_PIXELS
    #: um per pixel of every crop of the run (``--pixel-size``); None: the clinical CSV's column, else red cells
    pixel_size_um: float | None = None
    canonical_um_per_px: float = CANONICAL_UM_PER_PX  #: the scale segmentation and QC run at
    resample_tolerance: float = RESAMPLE_TOLERANCE  #: crops this close to the canonical scale are not resampled
    #: crops per patient (evenly spread) whose red cells measure its scale: 12 give 26 red cells in the median
    #: on the challenge's patients, for about 6 % of the extraction's time
    ruler_crops: int = 12
    #: is_not_lymphocyte (QC reason not_lymphocyte) from the cell-type gate (True) or from the segmentation's lobe,
    #: monocyte and pyknotic rules (False). ``cell_type`` / ``cell_type_prob`` are written either way. Part of
    #: the settings a model records: ``predict`` refuses features typed otherwise than the model's.
    cell_type_gate: bool = True

    def __post_init__(self) -> None:
        """Refuse a value that cannot mean what its setting says (raises :class:`~lympho_features.errors.SettingsError`)."""
        check = SettingsCheck(self)
        check.instance("segmentation", SegmentationSettings)
        check.instance("features", FeatureSettings)
        check.instance("aggregate", AggregateSettings)
        check.instance("reference_date", date)
        check.integer("max_pixels", 1)
        check.number("pixel_size_um", 0.005, 5.0, optional=True)
        check.number("canonical_um_per_px", 0, low_open=True)
        check.number("resample_tolerance", 0, 1)
        check.integer("ruler_crops", 1)
        check.instance("cell_type_gate", bool)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference_date"] = self.reference_date.isoformat()
        d["features_version"] = FEATURES_VERSION
        return d


@lru_cache(maxsize=8)
def _at_canonical(settings: SegmentationSettings) -> SegmentationSettings:
    """The segmentation settings for a crop already at the canonical scale: pixel settings as they are."""
    return replace(settings, scale_with_side=False)


@lru_cache(maxsize=8)
def _without_blur_check(settings: SegmentationSettings) -> SegmentationSettings:
    """:func:`_at_canonical`'s settings with the blur check off (judged later on the crop as acquired)."""
    return replace(_at_canonical(settings), blur_threshold=0.0)


@dataclass(frozen=True)
class CanonicalSegmentation:
    """A crop brought to the canonical scale and focus, and its segmentation there (:func:`segment_at_canonical`).

    Unpacks as ``crop, segmentation, um_per_px``.
    """

    crop: np.ndarray  #: the crop at (or within the tolerance of) the canonical scale and focus: the pixels measured
    segmentation: Segmentation  #: its masks are the crop's (``crop``'s shape)
    um_per_px: float  #: the scale of ``crop``
    #: the crop at the canonical scale before it was blurred to the common focus (``crop`` itself when nothing was
    #: added): what the cell-type gate's granule measures read
    acquired: np.ndarray | None = None

    def __iter__(self):
        return iter((self.crop, self.segmentation, self.um_per_px))


def segment_at_canonical(
    rgb: np.ndarray,
    um_per_px: float | None = None,
    segmentation: SegmentationSettings = SegmentationSettings(),
    *,
    canonical: float = CANONICAL_UM_PER_PX,
    tolerance: float = RESAMPLE_TOLERANCE,
) -> CanonicalSegmentation:
    """Resample a crop to the canonical scale and focus, and segment it there, as ``lympho extract`` measures it.

    The one place a crop as read becomes the pixels that are segmented and
    measured: :func:`measure_cell` calls it, and so do everything that draws
    or cuts a cell after extraction (``lympho inspect``'s montages, the
    report's thumbnails, ``lympho embed``'s windows), so that an outline
    drawn is the outline that was measured. At the canonical scale the crop
    is blurred to ``segmentation.focus_edge_sigma``
    (:func:`lympho_features.focus.equalise_focus`); the segmentation's
    ``diagnostics`` record its edge blur before (``edge_sigma``) and the
    Gaussian sigma added (``focus_added``, pixels); the blur check is judged
    on the crop before that blur (:func:`~lympho_features.segment.qc.judge_focus_on`).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
        The crop as read.
    um_per_px : float, optional
        The crop's scale (cells.parquet's ``um_per_px``); None, NaN or not
        positive: the crop is taken to be at the canonical scale.
    segmentation : SegmentationSettings
        As recorded at extraction (their pixel settings are the canonical scale's).
    canonical, tolerance : float
        :func:`lympho_features.scale.to_canonical`'s (``ExtractSettings.canonical_um_per_px`` and
        ``resample_tolerance``).
    """
    um = float(um_per_px) if um_per_px is not None and math.isfinite(um_per_px) and um_per_px > 0 else canonical
    crop, reached = to_canonical(rgb, um, canonical, tolerance)
    # One focus for every crop (SegmentationSettings.focus_edge_sigma): blur can be added, not taken away.
    acquired = crop
    crop, edge, added = equalise_focus(crop, segmentation.focus_edge_sigma)
    if added > 0:
        # Whether the crop was in focus is judged on it as acquired (the blur check, acq_sharpness), not on the
        # blurred pixels: no blur check there (a crop failing it would also be segmented again as a tight crop).
        seg = segment_cell(crop, _without_blur_check(segmentation))
        judge_focus_on(seg, acquired, segmentation)
    else:
        seg = segment_cell(crop, _at_canonical(segmentation))
    seg.diagnostics = {**(seg.diagnostics or {}), "edge_sigma": edge, "focus_added": added}
    return CanonicalSegmentation(crop, seg, reached, acquired)


def crop_sharpness(seg: Segmentation) -> float:
    """A segmented crop's sharpness, for the patient-level blur check (:func:`apply_patient_blur`).

    NaN when not measured: no nucleus, or a dense (pyknotic-looking) nucleus, which has no texture to judge focus
    by and so is never blur (the segmentation's ``focus_sharpness``).
    """
    return float((seg.diagnostics or {}).get("focus_sharpness", float("nan")))


def measure_cell(
    rgb: np.ndarray,
    settings: ExtractSettings = ExtractSettings(),
    data: bytes | None = None,
    *,
    um_per_px: float | None = None,
    gate_hue: bool | None = None,
) -> dict:
    """Segment one crop and measure it, before the cell-type gate and the patient-level blur check.

    The crop is first resampled to the canonical scale
    (:func:`lympho_features.scale.to_canonical`; not when within the
    tolerance), so segmentation, QC and texture see the same pixels at any
    magnification; sizes are then converted to um and um^2. The row also
    holds the cell-type gate's own measurements (``gate_*``,
    :func:`lympho_features.celltype.gate_measurements`), which
    :func:`lympho_features.celltype.apply_gate` reads and removes; its
    ``is_not_lymphocyte`` is still the segmentation's lobe rules'.
    ``scripts/build_celltype_gate.py`` learns the gate from such rows. It
    also holds the acquisition measurements ``acq_*``
    (:data:`lympho_features.acquisition.ACQUISITION_COLUMNS`; the JPEG quality
    from ``data``, the crop file's bytes, NaN without them).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
    settings : ExtractSettings
    data : bytes, optional
        The crop file's bytes (their header tells the JPEG quality).
    um_per_px : float, optional
        The crop's scale; None or NaN: not known, the canonical scale is
        assumed, and a tight crop (``qc_tight_crop``: cut close around its
        cell, no red cells) fails QC with reason ``tight_crop``.
    gate_hue : bool, optional
        Measure the gate's hue keys (:data:`lympho_features.celltype.HUE_KEYS`; NaN when not). None:
        when the shipped gate reads them (:func:`lympho_features.celltype.gate_reads_hue`), so that
        ``lympho extract`` skips what no model uses. ``scripts/build_celltype_gate.py`` measures them.
    """
    canonical = settings.canonical_um_per_px
    scale_known = um_per_px is not None and math.isfinite(um_per_px) and um_per_px > 0
    um = float(um_per_px) if scale_known else canonical
    canon = segment_at_canonical(
        rgb, um, settings.segmentation, canonical=canonical, tolerance=settings.resample_tolerance
    )
    crop, seg, um_measured = canon
    row: dict = {"qc_ok": bool(seg.qc_ok), "qc_reason": seg.qc_reason}
    row.update({k: bool(v) for k, v in seg.flags.items()})
    if seg.flags.get("qc_tight_crop") and not scale_known:
        # Cut close around the cell, with no scale given: no red cell to measure the scale by and no glass
        # around the cell, so its sizes (and the size checks) would rest on an assumed scale.
        row["qc_ok"], row["qc_reason"] = False, "tight_crop"
    diag = seg.diagnostics or {}
    row["qc_sharpness"] = crop_sharpness(seg)
    # For the patient-level smudge check (paleness against the patient's crops, apply_patient_smudge).
    row["qc_nucleus_od"] = float(diag.get("nucleus_od", float("nan")))
    row["qc_cytoplasm_fraction"] = float(diag.get("cytoplasm_fraction", float("nan")))
    row["um_per_px"] = um
    row.update(to_physical(cell_features(crop, seg, settings.features), um_measured))
    # The gate's granule and ring measures read the crop as acquired: granules are the finest detail, which the
    # common focus blurs away (the segmentation's densities are the blurred crop's: not reused).
    gate_crop, gate_seg = crop, seg
    if canon.acquired is not None and canon.acquired is not crop:
        gate_crop, gate_seg = canon.acquired, replace(seg, od_sum=None, od_sum_every4=None)
    row.update(gate_measurements(gate_crop, gate_seg, hue=_gate_hue() if gate_hue is None else gate_hue))
    row.update(crop_acquisition(seg, data, crop))
    return row


@lru_cache(maxsize=1)
def _gate_hue() -> bool:
    """Whether the shipped cell-type gate reads the hue keys (True when it cannot be read: measure everything)."""
    try:
        return gate_reads_hue()
    except CellTypeGateError:
        return True


def measure_crop(
    rgb: np.ndarray,
    settings: ExtractSettings = ExtractSettings(),
    data: bytes | None = None,
    *,
    um_per_px: float | None = None,
) -> dict:
    """Segment one crop, measure it and type it: one row of cells.parquet (without its keys).

    :func:`measure_cell`, then the cell-type gate
    (:func:`lympho_features.celltype.apply_gate`: ``cell_type``,
    ``cell_type_prob``, and with ``settings.cell_type_gate`` also
    ``is_not_lymphocyte`` and the QC reason ``not_lymphocyte``), then the blur
    check of a crop alone.

    The row holds ``qc_ok``, ``qc_reason``, every QC and cell-type flag
    (``qc_*``, ``is_*``, see :data:`lympho_features.segment.FLAG_DESCRIPTIONS`),
    ``cell_type`` and ``cell_type_prob``,
    ``qc_sharpness`` (for the patient-level blur check, :func:`apply_patient_blur`;
    NaN when not measured; alone, ``qc_blur`` is its floor test), ``qc_nucleus_od`` and
    ``qc_cytoplasm_fraction`` (for the patient-level smudge check, :func:`apply_patient_smudge`; alone,
    ``is_smudge`` uses the fixed limit), ``um_per_px`` (the crop's own scale), every
    feature and the acquisition measurements ``acq_*``. Flagged cells are measured too (their features are
    kept, but the per-patient morphology aggregates use ``qc_ok`` cells only).

    Parameters are those of :func:`measure_cell`.
    """
    row = measure_cell(rgb, settings, data, um_per_px=um_per_px)
    apply_gate([row], flag=settings.cell_type_gate)
    # Alone, a crop is judged as in a patient of one crop (the fixed limits); process_patient re-judges it
    # against the patient's other crops.
    apply_patient_qc([row], settings.segmentation)
    return row


def apply_patient_qc(rows: list[dict], settings: SegmentationSettings) -> None:
    """The QC checks judged against the patient's own crops, in place: blur, then smudge.

    :func:`apply_patient_blur` and :func:`apply_patient_smudge`. A crop's
    ``qc_reason`` stays the first failed check of
    :data:`lympho_features.segment.QC_REASONS` (smudge before blur).
    """
    apply_patient_blur(rows, settings)
    apply_patient_smudge(rows, settings)


def apply_patient_smudge(rows: list[dict], settings: SegmentationSettings) -> None:
    """Re-judge ``is_smudge`` of one patient's rows against the patient's own crops, in place.

    :func:`lympho_features.segment.patient_smudge` on the rows' ``qc_nucleus_od``
    and ``qc_cytoplasm_fraction``. A crop whose reason was ``smudge`` and no
    longer is one takes the next check's (``blur`` if ``qc_blur``, else
    ``ok``); a crop that was ``ok`` or ``blur`` and is now a smudge cell fails
    with reason ``smudge``. Earlier reasons are kept.
    """
    if not rows:
        return
    nan = float("nan")
    smudge = patient_smudge(
        [r.get("qc_nucleus_od", nan) for r in rows], [r.get("qc_cytoplasm_fraction", nan) for r in rows], settings
    )
    for r, sm in zip(rows, smudge.tolist(), strict=True):
        if "is_smudge" not in r or "qc_nucleus_od" not in r:
            continue
        r["is_smudge"] = sm
        rejudge_qc_reason(r)


def apply_patient_blur(rows: list[dict], settings: SegmentationSettings) -> None:
    """Re-judge ``qc_blur`` of one patient's rows against the patient's own crops, in place.

    :func:`lympho_features.segment.patient_blur` on the rows' ``qc_sharpness``;
    a crop whose only failed check was blur passes, a crop that passed every
    other check and is blur fails with reason ``blur`` (the last check).
    """
    if not rows:
        return
    blur = patient_blur([r.get("qc_sharpness", float("nan")) for r in rows], settings)
    for r, b in zip(rows, blur.tolist(), strict=True):
        if "qc_blur" not in r:
            continue
        r["qc_blur"] = b
        rejudge_qc_reason(r)


def ruler_sample(images: list[str], n: int) -> list[str]:
    """Up to ``n`` of a patient's crops, evenly spread over its (sorted) list: those the red-cell ruler reads."""
    if len(images) <= n:
        return list(images)
    return [images[i] for i in np.linspace(0, len(images) - 1, n).round().astype(int).tolist()]


def _ruler_patient(data_dir: Path, patient_id: str, images: list[str], settings: ExtractSettings, threads):
    """One task: the red-cell ruler's estimate of one patient's scale, from a sample of its crops."""
    if threads is not None:
        cv2.setNumThreads(threads)
    diameters, weights = [np.zeros(0)], [np.zeros(0)]
    for rel in ruler_sample(images, settings.ruler_crops):
        try:
            rgb = read_crop(data_dir, rel, settings.max_pixels)
        except ImageError:
            continue  # recorded as skipped when the crops are measured
        d, w = red_cell_sample(rgb)
        diameters.append(d)
        weights.append(w)
    d, w = np.concatenate(diameters), np.concatenate(weights)
    return patient_id, estimate_from_diameters(d, weights=w), (d, w)


def patient_scales(
    data_dir: Path,
    patients: dict[str, list[str]],
    clinical: pd.DataFrame,
    settings: ExtractSettings,
    jobs: int = 1,
    backend: str = "local",
    scheduler: str | None = None,
) -> tuple[dict[str, PatientScale], dict]:
    """The scale (um per pixel) each patient's crops are measured at, and its provenance.

    ``settings.pixel_size_um`` (``--pixel-size``) for the whole run, else
    the clinical CSV's ``pixel_size_um`` (its ``PIXEL_SIZE_UM`` column) for
    the patients that have one, else the red cells of a sample of each
    patient's crops, pooled over the run (:func:`lympho_features.scale.pool_run`).

    Returns
    -------
    scales : dict of str to PatientScale
    summary : dict
        For ``manifest.json``: the run's red-cell scale, the count of patients
        per source and flag, and every patient's scale.
    """
    scales: dict[str, PatientScale] = {}
    run_scale = float("nan")
    if settings.pixel_size_um is not None:
        scales = {pid: PatientScale(float(settings.pixel_size_um), "option") for pid in patients}
    else:
        given = {}
        if "pixel_size_um" in clinical.columns:
            given = {
                pid: float(v)
                for pid, v in zip(clinical["patient_id"], clinical["pixel_size_um"], strict=True)
                if pd.notna(v)
            }
        scales = {pid: PatientScale(given[pid], "csv") for pid in patients if pid in given}
        todo = [(pid, images) for pid, images in patients.items() if pid not in given]
        if todo:
            estimates: dict[str, ScaleEstimate] = {}
            every_diameter, every_weight = [np.zeros(0)], [np.zeros(0)]
            from joblib import delayed

            with parallel(jobs, backend, scheduler) as (runner, threads):
                tasks = (delayed(_ruler_patient)(data_dir, pid, imgs, settings, threads) for pid, imgs in todo)
                for pid, est, (diameters, weights) in runner(tasks):
                    estimates[pid] = est
                    every_diameter.append(diameters)
                    every_weight.append(weights)
            # The run's red cells read together: the ruler when too few patients have enough of their own.
            run_estimate = estimate_from_diameters(np.concatenate(every_diameter), weights=np.concatenate(every_weight))
            run_scale, pooled = pool_run(estimates, RUN_AGREEMENT, settings.canonical_um_per_px, run_estimate)
            scales.update(pooled)
    scales = dict(sorted(scales.items()))
    summary = {
        "canonical_um_per_px": settings.canonical_um_per_px,
        "red_cell_diameter_um": RED_CELL_DIAMETER_UM,
        "run_red_cell_um_per_px": None if not math.isfinite(run_scale) else run_scale,
        "sources": _count(s.source for s in scales.values()),
        "flags": {f: n for f, n in _count(s.flag for s in scales.values()).items() if f},
        "flag_meanings": {f: m for f, m in SCALE_FLAGS.items() if f},
        "patients": {
            pid: {
                "um_per_px": s.um_per_px,
                "source": s.source,
                "flag": s.flag,
                "red_cell_um_per_px": None if not math.isfinite(s.own_um_per_px) else s.own_um_per_px,
                "n_red_cells": s.n_red_cells,
            }
            for pid, s in scales.items()
        },
    }
    return scales, summary


def crop_scales(
    data_dir: str | Path,
    patients: dict[str, list[str]],
    *,
    cells: pd.DataFrame | None = None,
    pixel_size_um: float | None = None,
    jobs: int = 1,
) -> dict[str, float]:
    """The scale (um per pixel) of each crop of ``patients``, for drawing or cutting it as it was measured.

    A crop's ``um_per_px`` in ``cells`` (cells.parquet of the extraction
    that measured it) when it has one; the other crops' from
    :func:`patient_scales` (``pixel_size_um``, else the red cells of their
    patients' crops, pooled over ``patients`` as ``lympho extract`` pools
    them over its run).

    Parameters
    ----------
    data_dir : path
        One sub-folder of crops per patient.
    patients : dict of str to list of str
        Patient ID -> its crops (paths relative to ``data_dir``, as in cells.parquet's ``image``).
    cells : DataFrame, optional
        With ``image`` and ``um_per_px`` columns.
    pixel_size_um : float, optional
        The scale of every crop not in ``cells`` (``--pixel-size``).
    jobs : int
        Worker processes of the red-cell ruler.

    Returns
    -------
    dict of str to float
        Image -> um per pixel, for every crop of ``patients``.
    """
    known: dict[str, float] = {}
    if cells is not None and {"image", "um_per_px"} <= set(cells.columns):
        known = {
            str(im): float(um)
            for im, um in zip(cells["image"], cells["um_per_px"], strict=True)
            if pd.notna(um) and um > 0
        }
    todo = {pid: imgs for pid, imgs in patients.items() if any(im not in known for im in imgs)}
    if todo:
        settings = ExtractSettings(pixel_size_um=pixel_size_um)
        scales, _ = patient_scales(Path(data_dir), todo, pd.DataFrame({"patient_id": []}), settings, jobs)
        for pid, imgs in todo.items():
            known.update({im: scales[pid].um_per_px for im in imgs if im not in known})
    return {im: known[im] for imgs in patients.values() for im in imgs}


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


#: Units of the per-cell columns, as ``manifest.json`` records them (per-patient aggregates keep their feature's).
UNITS = {
    "um_per_px": "micrometres per pixel of the crop as read (before resampling to the canonical scale)",
    "lengths": "um: nc_rim_width*, shape_{nucleus,cell}_{perimeter,equivalent_diameter,major_axis,minor_axis,"
    "feret_max,feret_min}",
    "areas": "um^2: nucleus_area, cell_area, nc_cytoplasm_area, shape_{nucleus,cell}_area",
    "texture": "measured on the crop resampled to the canonical scale (canonical_um_per_px); distances and radii "
    "in its pixels",
    "other": "dimensionless (ratios, shape indices, optical density)",
}


def _scale_warnings(summary: dict, warnings: list[str]) -> None:
    """One warning per scale flag raised, naming the patients (a guess is never silent)."""
    by_flag: dict[str, list[str]] = {}
    for pid, p in summary["patients"].items():
        if p["flag"]:
            by_flag.setdefault(p["flag"], []).append(pid)
    for flag, pids in sorted(by_flag.items()):
        shown = ", ".join(pids[:20]) + (f" and {len(pids) - 20} more" if len(pids) > 20 else "")
        warnings.append(f"scale {flag} for {len(pids)} patient(s) ({SCALE_FLAGS[flag]}): {shown}")
