"""Cell-type gate: which crops are lymphocytes, and what the others are.

A lab's "lymphocyte" crops come from an automatic pre-classifier and carry
other white cells (neutrophils, eosinophils, monocytes...), a few nucleated
red cells and platelet clumps. Left in, they move a patient's morphology
summaries for reasons that have nothing to do with the lymphocytosis. The
gate gives every measured crop a ``cell_type`` (one of :data:`CELL_TYPES`, or
``"unknown"`` when no nucleus was found) with its probability
``cell_type_prob``; ``is_not_lymphocyte`` is set when the gate's probability
of a lymphocyte is below the threshold stored with it.

What it looks at (:data:`GATE_INPUTS`): the per-cell features of
:mod:`lympho_features.features` that describe shape, size, N:C ratio,
chromatin texture and granularity (no absolute stain colour, which moves
from lab to lab), the segmentation's own measurements (nucleus lobes,
solidity, density relative to the red cells) and a few measurements made for
the gate alone (:func:`gate_measurements`): the granularity and the hue of a
ring just outside the nucleus, measured against the crop's red cells (an
internal standard of the same slide and stain), which tells an eosinophil's
orange granules, a basophil's dark ones and a neutrophil's fine lilac ones
from a lymphocyte's clear blue cytoplasm even where the segmentation found
no cytoplasm at all.

The model is a multiclass LightGBM fitted by ``scripts/build_celltype_gate.py``
on the PBC crops of another lab (Acevedo et al., Data in Brief 30, 2020;
8 types) resized to the lymphocytosis crops' scale, plus lymphocytes of the
lymphocytosis trainset, and on re-acquired copies of those crops (another
laboratory's magnification, focus, stain strength, white balance, gamma and
JPEG, measured at the pixel size its red cells give), so that an acquisition
shift does not turn a lymphocyte into a basophil or a monocyte. It ships in
the package as LightGBM text, gzip-compressed (``data/celltype_gate.txt.gz``: the
text is 2 MB, 1,200 trees), and JSON
(``data/celltype_gate.json``: inputs, classes, threshold, training
fingerprint, augmentation settings, library versions, cross-validated
recall); never pickled.
"""

from __future__ import annotations

import gzip
import json
import math
import operator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from ._lazy import pd
from .errors import LymphoError
from .features.cell import _roi_od_sum
from .lightgbm_native import booster_from_text
from .segment import Segmentation, _disk, _red_cell_reference, _subsample, od_tables, rejudge_qc_reason
from .segment.optical_density import _stained_pixels

#: The types the gate tells apart (PBC's eight folders, ``ig`` spelled out).
CELL_TYPES = (
    "lymphocyte",
    "neutrophil",
    "eosinophil",
    "basophil",
    "monocyte",
    "immature_granulocyte",
    "erythroblast",
    "platelet",
)
#: ``cell_type`` of a crop the gate cannot judge (no nucleus found, unreadable measurements).
UNKNOWN = "unknown"
#: PBC folder name -> cell type.
PBC_FOLDERS = {
    "lymphocyte": "lymphocyte",
    "neutrophil": "neutrophil",
    "eosinophil": "eosinophil",
    "basophil": "basophil",
    "monocyte": "monocyte",
    "ig": "immature_granulocyte",
    "erythroblast": "erythroblast",
    "platelet": "platelet",
}
#: Width (pixels at the canonical scale, 0.163 um) of the ring outside the nucleus whose granules and hue are measured.
RING_WIDTH = 6
#: The top-hat's structuring element (radius 2), made once.
_DISK2 = _disk(2)


#: Format of the gate's JSON (bump when its keys change meaning).
GATE_FORMAT = 1
#: The shipped gate: LightGBM text (gzip-compressed: 2.1 MB -> 0.9 MB) + JSON, package data.
GATE_FILES = ("celltype_gate.txt.gz", "celltype_gate.json")
#: QC reasons decided before any flag is checked: such crops have no measured cell to type.
_NO_CELL_REASONS = ("bad_image", "no_nucleus")


class CellTypeGateError(LymphoError):
    """A saved cell-type gate that cannot be used; the message says why."""


@dataclass(frozen=True)
class CellTypeGate:
    """A fitted cell-type gate: a multiclass LightGBM over :attr:`inputs`.

    Attributes
    ----------
    booster : lightgbm.Booster or lympho_features.lightgbm_native.NativeBooster
        Class ``i`` of its output is ``classes[i]`` (the same predictions either way).
    classes : tuple of str
        :data:`CELL_TYPES`, in the booster's order (``lymphocyte`` first).
    inputs : tuple of str
        Columns of a measured row the booster reads, in order.
    threshold : float
        A crop is a lymphocyte when the gate's probability of it is at least this.
    meta : dict
        The whole JSON (training fingerprint, settings, cross-validated recall).
    """

    booster: object
    classes: tuple[str, ...]
    inputs: tuple[str, ...]
    threshold: float
    meta: dict

    def probabilities(self, table: pd.DataFrame) -> np.ndarray:
        """Probability of each class (columns in :attr:`classes` order) for each row of ``table``."""
        missing = [c for c in self.inputs if c not in table.columns]
        if missing:
            raise CellTypeGateError(f"the cell-type gate needs columns {', '.join(missing[:5])}: not measured")
        X = table[list(self.inputs)].to_numpy(np.float64)
        p = np.asarray(self.booster.predict(X), np.float64)
        return p.reshape(len(table), len(self.classes))


def read_gate_text(txt: str | Path) -> str:
    """A gate's LightGBM model text, from its file: plain, or gzip-compressed when the name ends in ``.gz``."""
    data = Path(txt).read_bytes()
    return (gzip.decompress(data) if str(txt).endswith(".gz") else data).decode("utf-8")


def read_gate(txt: str | Path, meta_json: str | Path) -> CellTypeGate:
    """Load a gate from its LightGBM text file (plain or ``.gz``, :func:`read_gate_text`) and its JSON.

    Raises
    ------
    CellTypeGateError
        Missing or unreadable files, another format, classes or inputs that do not match the booster.
    """
    try:
        meta = json.loads(Path(meta_json).read_text())
        # The C library's own predictions without importing lightgbm (and scikit-learn) in every worker.
        booster = booster_from_text(read_gate_text(txt))
    except (OSError, ValueError, EOFError) as exc:
        raise CellTypeGateError(f"cannot read the cell-type gate {txt}: {exc}") from None
    if meta.get("format") != GATE_FORMAT:
        raise CellTypeGateError(f"{meta_json}: gate format {meta.get('format')!r}, expected {GATE_FORMAT}")
    classes, inputs = tuple(meta.get("classes", ())), tuple(meta.get("inputs", ()))
    if (
        classes != CELL_TYPES
        or tuple(booster.feature_name()) != inputs
        or booster.num_model_per_iteration() != len(classes)
    ):
        raise CellTypeGateError(f"{meta_json}: classes or inputs do not match the booster in {txt}")
    return CellTypeGate(booster, classes, inputs, float(meta["threshold"]), meta)


@lru_cache(maxsize=1)
def default_gate() -> CellTypeGate:
    """The gate shipped with the package (built by ``scripts/build_celltype_gate.py``), loaded once a process."""
    root = resources.files("lympho_features") / "data"
    with resources.as_file(root / GATE_FILES[0]) as txt, resources.as_file(root / GATE_FILES[1]) as js:
        return read_gate(txt, js)


def type_cells(table: pd.DataFrame, gate: CellTypeGate | None = None) -> pd.DataFrame:
    """The gate's call on each measured row: ``cell_type``, ``cell_type_prob``, ``is_not_lymphocyte``.

    A row is a lymphocyte when the gate's probability of one reaches the
    gate's threshold (``cell_type_prob`` is then that probability); otherwise
    it is the most probable other type, with that type's probability. Rows
    without a nucleus (QC reason ``bad_image`` or ``no_nucleus``, or unmeasured
    inputs) are ``unknown`` with a NaN probability and are not flagged (their
    QC reason already excludes them).
    """
    gate = gate or default_gate()
    n = len(table)
    out = pd.DataFrame(
        {"cell_type": np.full(n, UNKNOWN, object), "cell_type_prob": np.full(n, np.nan), "is_not_lymphocyte": False},
        index=table.index,
    )
    if n == 0:
        return out
    measured = ~table[list(gate.inputs)].isna().all(axis=1).to_numpy()
    if "qc_reason" in table.columns:
        measured &= ~table["qc_reason"].isin(_NO_CELL_REASONS).to_numpy()
    if not measured.any():
        return out
    names, probs, is_lymph = _calls(gate.probabilities(table[measured]), gate)
    out.loc[measured, "cell_type"] = names
    out.loc[measured, "cell_type_prob"] = probs
    out.loc[measured, "is_not_lymphocyte"] = ~is_lymph
    return out


def _calls(p: np.ndarray, gate: CellTypeGate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's call from the gate's class probabilities ``p``: type name, its probability, is a lymphocyte."""
    lymph = gate.classes.index("lymphocyte")
    is_lymph = p[:, lymph] >= gate.threshold
    others = p.copy()
    others[:, lymph] = -1.0
    best = others.argmax(axis=1)
    names = np.where(is_lymph, "lymphocyte", np.asarray(gate.classes, object)[best])
    probs = np.where(is_lymph, p[:, lymph], others[np.arange(len(p)), best])
    return names, probs, is_lymph


def _row_calls(rows: list[dict], gate: CellTypeGate) -> list[tuple[str, float, bool]]:
    """:func:`type_cells` on measured rows, without building a table of every column.

    The gate's inputs are read straight from the rows into the matrix
    :meth:`CellTypeGate.probabilities` would build (a missing value is NaN),
    so the calls are the same; a pandas table of the rows' ~250 columns cost
    more than the gate itself.

    Returns
    -------
    list of (cell_type, cell_type_prob, is_not_lymphocyte)
    """
    missing = [c for c in gate.inputs if not any(c in r for r in rows)]
    if missing:
        raise CellTypeGateError(f"the cell-type gate needs columns {', '.join(missing[:5])}: not measured")
    X = np.array([_inputs_of(r, gate.inputs) for r in rows], np.float64)  # None -> NaN, as pandas
    measured = ~np.isnan(X).all(axis=1)
    measured &= np.array([r.get("qc_reason") not in _NO_CELL_REASONS for r in rows])
    calls = [(UNKNOWN, math.nan, False)] * len(rows)
    if not measured.any():
        return calls
    p = np.asarray(gate.booster.predict(X[measured]), np.float64).reshape(int(measured.sum()), len(gate.classes))
    names, probs, is_lymph = _calls(p, gate)
    rows_measured = np.flatnonzero(measured).tolist()
    for i, name, prob, lymph in zip(rows_measured, names, probs.tolist(), is_lymph.tolist(), strict=True):
        calls[i] = (str(name), prob, not lymph)
    return calls


def _inputs_of(row: dict, inputs: tuple[str, ...]) -> tuple:
    """The row's values of ``inputs`` in order, None for a missing one."""
    try:
        values = operator.itemgetter(*inputs)(row)  # one C call: every input is there in a measured row
    except KeyError:
        return tuple(row.get(c) for c in inputs)
    return values if len(inputs) > 1 else (values,)


def apply_gate(rows: list[dict], gate: CellTypeGate | None = None, flag: bool = True) -> None:
    """Type measured rows in place: set ``cell_type``, ``cell_type_prob``, ``is_not_lymphocyte``, the QC reason.

    With ``flag`` False only ``cell_type`` and ``cell_type_prob`` are set (``is_not_lymphocyte`` stays the
    segmentation rules' and the QC reason is untouched). The gate's own measurements (``gate_*``: :data:`GATE_KEYS` and
    any other input of the gate so named) are removed from the rows afterwards:
    they serve the gate, not the reactive / tumoral model. The QC reason is
    re-derived from the flags in their usual order, so a crop the gate calls a
    non-lymphocyte fails with ``not_lymphocyte`` (unless an earlier check
    failed) and a crop the segmentation's lobe rules flagged but the gate
    calls a lymphocyte no longer fails for it. Reasons that come before any
    flag (``bad_image``, ``no_nucleus``, ``tight_crop``) stay.
    """
    if not rows:
        return
    gate = gate or default_gate()
    # The gate_* columns a row can hold (gate_measurements' and the gate's own inputs), removed by name: testing
    # every key of a row of ~150 for the prefix cost more than the rest of the gate.
    own = (*GATE_KEYS, *(c for c in gate.inputs if c.startswith("gate_") and c not in GATE_KEYS))
    for r, (cell_type, prob, flagged) in zip(rows, _row_calls(rows, gate), strict=True):
        r["cell_type"], r["cell_type_prob"] = cell_type, prob
        for k in own:
            r.pop(k, None)
        if not flag:
            continue
        r["is_not_lymphocyte"] = bool(flagged)
        rejudge_qc_reason(r)


def gate_measurements(rgb: np.ndarray, seg: Segmentation, hue: bool = True) -> dict[str, float]:
    """Measurements made for the cell-type gate alone, on one segmented crop.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8
        The crop at the canonical scale (:data:`lympho_features.scale.CANONICAL_UM_PER_PX`), as the
        segmentation saw it.
    seg : Segmentation
        Its segmentation (:func:`lympho_features.segment.segment_cell`). What it already measured on ``rgb`` is
        read, not measured again: the total OD of its region (:attr:`Segmentation.od_sum`) and of every fourth
        pixel of the crop (:attr:`Segmentation.od_sum_every4`, the red cells' reference) when ``hue`` is False.
    hue : bool, optional
        Measure ``gate_ring_chroma`` and ``gate_ring_purple`` (:data:`HUE_KEYS`); False leaves them NaN,
        for a gate that does not read them (:func:`gate_reads_hue`): about a quarter of the cost.

    Returns
    -------
    dict of str to float
        ``gate_*`` values (NaN when no nucleus was found):

        - ``gate_n_lobes``, ``gate_nucleus_od_rbc``, ``gate_nucleus_od_sd``:
          the segmentation's lobe count, nucleus density relative to the red
          cells' and its spread (dense, structureless: erythroblast).
        - ``gate_ring_od_rbc``: density of a ring of :data:`RING_WIDTH` pixels
          just outside the nucleus, relative to the red cells' (granules
          darken it; a lymphocyte's clear cytoplasm or the glass do not).
        - ``gate_ring_chroma``: the ring's blue chroma
          ``(OD_red - OD_blue) / OD_sum`` minus the red cells' (blue
          cytoplasm above 0, orange eosinophil granules below).
        - ``gate_ring_purple``: the ring's ``(OD_green - OD_red) / OD_sum``
          minus the red cells' (dark purple basophil granules).
        - ``gate_ring_granularity``, ``gate_cyto_granularity``: mean black
          top-hat (radius 2) of the OD in the ring and in the segmented
          cytoplasm, over the red cells' mean OD: small dark specks.
        - ``gate_ring_texture``: coefficient of variation of the ring's OD.
    """
    out = dict.fromkeys(GATE_KEYS, math.nan)
    nucleus = seg.nucleus_mask
    if seg.background is None or not nucleus.any():
        return out
    # The crop is at the canonical scale (extract resamples it): RING_WIDTH pixels mean the same everywhere.
    box = _cell_box(seg, RING_WIDTH + 4)  # the ring may reach past the cell's outline
    n8 = nucleus[box].astype(np.uint8)
    # Without hue only the total OD is needed: the segmentation's, when its region holds the box.
    od_sum = None if hue else _roi_od_sum(seg, (box[0].start, box[0].stop, box[1].start), box[1].stop - box[1].start)
    od_r = od_g = od_b = None
    if od_sum is None:
        # Only the box and every fourth pixel are looked up: splitting the whole crop cost more than both.
        split = cv2.split(np.ascontiguousarray(rgb[box]))
        od_r, od_g, od_b = (cv2.LUT(ch, t) for ch, t in zip(split, od_tables(seg.background), strict=True))
        od_sum = od_r + od_g + od_b  # as the segmentation adds them
    rbc_od, rbc_chroma, rbc_purple = _red_cell_references(rgb, seg, hue)
    if not math.isfinite(rbc_od) or rbc_od <= 0:
        rbc_od = float(np.mean(od_sum))  # no red cells: the region's own mean keeps the ratios finite
    nod = od_sum[n8 > 0]
    nod_mean, nod_sd = _mean_std(nod)
    out["gate_n_lobes"] = float(seg.diagnostics.get("n_lobes", math.nan))
    out["gate_nucleus_od_rbc"] = float(nod_mean / rbc_od)
    out["gate_nucleus_od_sd"] = float(nod_sd / max(nod_mean, 1e-3))
    # Granules are dark specks: high OD. A white top-hat of the OD (the OD minus its opening by a radius-2
    # disk) keeps what is narrower than the disk.
    tophat = cv2.morphologyEx(od_sum, cv2.MORPH_TOPHAT, _DISK2)
    ring = _ring(n8, RING_WIDTH)
    if ring.any():
        out.update(_ring_measures(ring, (od_r, od_g, od_b, od_sum), tophat, (rbc_od, rbc_chroma, rbc_purple), hue))
    cyto = seg.cell_mask[box] & (n8 == 0)
    out["gate_cyto_granularity"] = float(_mean(tophat[cyto]) / rbc_od) if np.count_nonzero(cyto) >= 5 else 0.0
    return out


#: The columns :func:`gate_measurements` returns.
GATE_KEYS = (
    "gate_n_lobes",
    "gate_nucleus_od_rbc",
    "gate_nucleus_od_sd",
    "gate_ring_od_rbc",
    "gate_ring_chroma",
    "gate_ring_purple",
    "gate_ring_granularity",
    "gate_cyto_granularity",
    "gate_ring_texture",
)


#: The gate's measurements of the hue around the nucleus (stain-dependent: the shipped gate leaves them out).
HUE_KEYS = ("gate_ring_chroma", "gate_ring_purple")


def gate_reads_hue(gate: CellTypeGate | None = None) -> bool:
    """Whether ``gate`` (default: the shipped one) reads any of :data:`HUE_KEYS`."""
    gate = gate or default_gate()
    return any(k in gate.inputs for k in HUE_KEYS)


def _cell_box(seg: Segmentation, margin: int) -> tuple[slice, slice]:
    """The box around the cell (and its nucleus), ``margin`` pixels wider on each side, within the crop."""
    h, w = seg.nucleus_mask.shape
    # The bounding rectangle of the set pixels: the extremes of np.nonzero, without listing every pixel.
    x, y, bw, bh = cv2.boundingRect((seg.cell_mask | seg.nucleus_mask).view(np.uint8))
    return (
        slice(max(0, y - margin), min(h, y + bh - 1 + margin + 1)),
        slice(max(0, x - margin), min(w, x + bw - 1 + margin + 1)),
    )


def _ring(n8: np.ndarray, width: int) -> np.ndarray:
    """Pixels within a disk of radius ``width`` (:func:`~lympho_features.segment._disk`) of the nucleus ``n8``, not in it.

    The dilation runs on the nucleus' own box grown by ``width`` (the disk reaches no farther), not on the
    whole cell's: the same pixels for about half the cost.
    """
    x, y, bw, bh = cv2.boundingRect(n8)
    h, w = n8.shape
    win = (slice(max(0, y - width), min(h, y + bh + width)), slice(max(0, x - width), min(w, x + bw + width)))
    sub = n8[win]
    ring = np.zeros(n8.shape, bool)
    ring[win] = (cv2.dilate(sub, _disk(width)) > 0) & (sub == 0)
    return ring


def _median(values: np.ndarray) -> np.floating:
    """``np.median(values)`` of a 1-D float array, with the same arithmetic and without its overhead.

    The middle order statistic (odd size) or the mean of the two middle ones (even size), a scalar of the
    array's own precision as :func:`numpy.median` returns; NaN when any value is NaN.
    """
    n = values.size
    k = n // 2
    if n % 2:
        part = np.partition(values, [k, n - 1])
        middle = part[k]
    else:
        part = np.partition(values, [k - 1, k, n - 1])
        middle = (part[k - 1] + part[k]) / 2
    return part[-1] if np.isnan(part[-1]) else middle


def _mean(values: np.ndarray) -> np.floating:
    """``values.mean()`` of a 1-D float array, the same number without NumPy's argument handling.

    NumPy sums with its pairwise ``add.reduce`` and divides the sum (of the array's precision) by the
    count as a float64, then rounds to the array's precision: so does this (~2 us against ~8 us a call).
    """
    return values.dtype.type(float(np.add.reduce(values)) / values.size)


def _mean_std(values: np.ndarray) -> tuple[np.floating, np.floating]:
    """``(values.mean(), values.std())`` of a 1-D float array, with NumPy's arithmetic, the mean computed once.

    ``std`` subtracts the mean (computed as :func:`_mean`) from every value, squares, sums pairwise, divides
    by the count as :func:`_mean` does and takes the square root in the array's precision.
    """
    mean = _mean(values)
    dev = np.subtract(values, mean)
    np.square(dev, out=dev)
    return mean, np.sqrt(_mean(dev))


def _od_every4(rgb: np.ndarray, background: np.ndarray) -> list[np.ndarray]:
    """OD of the red, green and blue channels of every fourth pixel of the crop, as the segmentation looks them up."""
    return [cv2.LUT(ch, t) for ch, t in zip(cv2.split(_subsample(rgb, 4)), od_tables(background), strict=True)]


def _red_cell_references(rgb: np.ndarray, seg: Segmentation, hue: bool = True) -> tuple[float, float, float]:
    """The red cells' OD, blue chroma and purple hue (every fourth pixel of the crop, nuclei left out).

    Without ``hue`` only the OD is measured (chroma and purple hue NaN), from the segmentation's total OD
    of the same pixels when it kept it (:attr:`Segmentation.od_sum_every4`: the same look-ups and sums).
    """
    nucleus = seg.nucleus_mask
    nucleus_sub = nucleus[::4, ::4]
    dark_sub = nucleus_sub.view(np.uint8) * np.uint8(255)
    if not hue:
        # _red_cell_reference's mean OD alone, with the same operations.
        ssum = seg.od_sum_every4
        if ssum is None or ssum.shape != nucleus_sub.shape:
            sub = _od_every4(rgb, seg.background)
            ssum = cv2.add(cv2.add(sub[0], sub[1]), sub[2])
        stained = _stained_pixels(ssum, dark_sub, 0.15)
        return (math.nan if stained is None else float(cv2.mean(ssum, mask=stained)[0])), math.nan, math.nan
    sub = _od_every4(rgb, seg.background)
    # _red_cell_reference reads only every fourth pixel of the dark mask: the others may stay 0.
    dark = np.zeros(nucleus.shape, np.uint8)
    dark[::4, ::4] = dark_sub
    _, rbc_od, rbc_chroma = _red_cell_reference(*sub, dark, 0.15)  # as the segmentation measures them
    ssum = sub[0] + sub[1] + sub[2]
    sm = (ssum > 0.15) & ~nucleus_sub
    rbc_purple = float(_median((sub[1][sm] - sub[0][sm]) / ssum[sm])) if sm.sum() >= 10 else 0.0
    return rbc_od, rbc_chroma, rbc_purple


def _ring_measures(ring: np.ndarray, od, tophat: np.ndarray, references, hue: bool = True) -> dict[str, float]:
    """Density, texture, granularity and hue of the ring around the nucleus, relative to the red cells.

    ``od`` holds the box's OD channels red, green, blue and their sum; ``references`` the red cells' OD,
    chroma and purple hue (:func:`_red_cell_references`). Without ``hue`` the hue keys are left out.
    """
    od_r, od_g, od_b, od_sum = od
    rbc_od, rbc_chroma, rbc_purple = references
    r_mean, r_sd = _mean_std(od_sum[ring])
    out = {
        "gate_ring_od_rbc": float(r_mean / rbc_od),
        "gate_ring_texture": float(r_sd / max(r_mean, 0.05)),
        "gate_ring_granularity": float(_mean(tophat[ring]) / rbc_od),
    }
    if not hue:
        return out
    st = ring & (od_sum > 0.15)
    if st.sum() >= 5:
        s_sum = od_sum[st]
        out["gate_ring_chroma"] = float(_median((od_r[st] - od_b[st]) / s_sum) - rbc_chroma)
        out["gate_ring_purple"] = float(_median((od_g[st] - od_r[st]) / s_sum) - rbc_purple)
    else:  # nothing stained around the nucleus (bare nucleus on glass): no hue to read
        out["gate_ring_chroma"] = out["gate_ring_purple"] = 0.0
    return out
