"""Montages of segmented crops, for checking the segmentation by eye.

:func:`draw_outlines` draws the nucleus and cell outlines of one crop and
:func:`montage` tiles many such crops into one image, each with its QC outcome
written under it. :func:`inspect_folder` draws each crop resampled to the
canonical scale at its own scale, with the outlines extraction measured
(:func:`lympho_features.measure.segment_at_canonical`). ``lympho inspect`` (see :mod:`lympho_features.cli`) is the
command-line entry point; :func:`inspect_folder` picks the crops.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .dataset import DatasetError, ImageError, discover_patients, read_crop
from .segment import Segmentation, SegmentationSettings

NUCLEUS_COLOUR = (0, 200, 255)  #: RGB of the nucleus outline (cyan)
CELL_COLOUR = (40, 220, 40)  #: RGB of the cell outline (green)
OK_TEXT = (0, 110, 0)
FLAG_TEXT = (200, 0, 0)


def draw_outlines(rgb: np.ndarray, seg: Segmentation, thickness: int = 1) -> np.ndarray:
    """Return a copy of ``rgb`` with the cell (green) and nucleus (cyan) outlines drawn."""
    out = np.ascontiguousarray(rgb.copy())
    for mask, colour in ((seg.cell_mask, CELL_COLOUR), (seg.nucleus_mask, NUCLEUS_COLOUR)):
        if mask is None or not mask.any():
            continue
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def qc_label(seg: Segmentation) -> str:
    """Short text for a tile: ``ok`` or the QC reason, plus any other raised flag."""
    raised = [k.split("_", 1)[1] for k, v in seg.flags.items() if v]
    if seg.qc_ok:
        return "ok" + (" " + ",".join(raised) if raised else "")
    others = [r for r in raised if r not in seg.qc_reason]
    return seg.qc_reason + (" +" + ",".join(others) if others else "")


def row_label(row: dict) -> str:
    """Short text for a tile from a measured row: QC outcome, and the cell type when not a lymphocyte."""
    raised = [k.split("_", 1)[1] for k, v in row.items() if k.startswith(("qc_", "is_")) and v is True and k != "qc_ok"]
    if row["qc_ok"]:
        return "ok" + (" " + ",".join(raised) if raised else "")
    reason = row["qc_reason"]
    if row.get("is_not_lymphocyte") and reason == "not_lymphocyte":
        return f"{row['cell_type']} {row['cell_type_prob']:.2f}"
    others = [r for r in raised if r not in reason]
    return reason + (" +" + ",".join(others) if others else "")


def _selected(row: dict, only: str) -> bool:
    """Whether a measured row passes ``--only``: ``flagged``, a QC reason, or ``cell_type=TYPE``."""
    if only == "flagged":
        return not row["qc_ok"]
    if only.startswith("cell_type="):
        return row["cell_type"] == only.split("=", 1)[1]
    return row["qc_reason"] == only


def montage(
    tiles: list[np.ndarray],
    captions: list[str] | None = None,
    columns: int = 8,
    tile_size: int = 160,
    ok: list[bool] | None = None,
) -> np.ndarray:
    """Tile RGB images into one image with a caption strip under each tile.

    Parameters
    ----------
    tiles : list of ndarray (H, W, 3) uint8
        The images, resized to ``tile_size``.
    captions : list of str, optional
        One line per tile (long captions are cut).
    columns : int
        Tiles per row.
    ok : list of bool, optional
        Caption colour: green when True, red when False.

    Returns
    -------
    ndarray (H, W, 3) uint8
        White background; an empty list gives a small blank image.
    """
    captions = captions or [""] * len(tiles)
    ok = ok or [True] * len(tiles)
    cap_h = 16
    n = max(1, len(tiles))
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    cell_h, cell_w = tile_size + cap_h + 4, tile_size + 4
    canvas = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    for i, (tile, cap, good) in enumerate(zip(tiles, captions, ok, strict=False)):
        r, c = divmod(i, cols)
        y, x = r * cell_h + 2, c * cell_w + 2
        canvas[y : y + tile_size, x : x + tile_size] = cv2.resize(
            tile, (tile_size, tile_size), interpolation=cv2.INTER_AREA
        )
        text = cap if len(cap) <= tile_size // 6 else cap[: tile_size // 6 - 1] + "~"
        cv2.putText(
            canvas,
            text,
            (x + 1, y + tile_size + cap_h - 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.36,
            OK_TEXT if good else FLAG_TEXT,
            1,
            cv2.LINE_AA,
        )
    return canvas


def inspect_folder(
    data_dir: str | Path,
    patient: str | None = None,
    n: int = 48,
    seed: int = 0,
    settings: SegmentationSettings | None = None,
    only: str | None = None,
    columns: int = 8,
    images: list[str] | None = None,
    *,
    features_dir: str | Path | None = None,
    pixel_size_um: float | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Segment a random sample of crops of a data folder (or the crops named) and draw their montage.

    Each crop is resampled to the canonical scale and segmented there as
    ``lympho extract`` does (:func:`lympho_features.measure.segment_at_canonical`),
    at its scale: its ``um_per_px`` in ``features_dir``'s cells.parquet when
    given, else ``pixel_size_um``, else measured on the red cells of its
    patient's crops (:func:`lympho_features.measure.crop_scales`). The tile
    shows the crop at the canonical scale, with the outlines that were measured.

    Parameters
    ----------
    data_dir : path
        One sub-folder of crops per patient.
    patient : str, optional
        Restrict to this patient's crops.
    n : int
        Number of crops in the montage (fewer if fewer exist).
    seed : int
        Seed of the sample, so the same call shows the same crops.
    only : str, optional
        Keep only crops whose QC reason is this (e.g. ``touching_cells``),
        ``"flagged"`` for every crop failing QC, or ``"cell_type=TYPE"`` for the
        crops the cell-type gate calls ``TYPE`` (e.g. ``cell_type=neutrophil``;
        :data:`lympho_features.celltype.CELL_TYPES` or ``unknown``).
    images : list of str, optional
        Show exactly these crops, in this order (paths relative to ``data_dir``
        as in ``cells.parquet``'s ``image`` column, e.g. ``P42/000016.jpg``):
        the cells a report or a query pointed at. ``patient``, ``n``, ``seed``
        and ``only`` are then ignored.
    features_dir : path, optional
        A folder written by ``lympho extract`` on ``data_dir``: each crop's scale is the one it was measured at.
    pixel_size_um : float, optional
        The scale of every crop (``--pixel-size``), when no features folder says it.

    Returns
    -------
    image : ndarray (H, W, 3) uint8
    rows : list of dict
        ``image``, ``um_per_px`` (the crop's scale), ``qc_reason``, ``cell_type``, ``cell_type_prob`` and raised
        flags of each tile, in tile order.

    Raises
    ------
    lympho_features.dataset.DatasetError
        Missing data folder; unknown patient; a named crop that is not in the folder.
    """
    patients = discover_patients(Path(data_dir))
    if images:
        known = {rel for imgs in patients.values() for rel in imgs}
        missing = [rel for rel in images if rel not in known]
        if missing:
            raise DatasetError(f"crop {missing[0]} not found in {data_dir} (give it as PATIENT/FILE)")
        named = {pid: imgs for pid, imgs in patients.items() if any(rel in images for rel in imgs)}
        scales = _scales(data_dir, named, features_dir, pixel_size_um)
        return _draw(data_dir, list(images), len(images), None, settings, columns, scales, strict=True)
    if patient is not None:
        if patient not in patients:
            raise DatasetError(f"patient {patient} not found in {data_dir}")
        patients = {patient: patients[patient]}
    names = sorted(rel for imgs in patients.values() for rel in imgs)
    rng = np.random.default_rng(seed)
    scales = _scales(data_dir, patients, features_dir, pixel_size_um)
    return _draw(data_dir, [names[i] for i in rng.permutation(len(names))], n, only, settings, columns, scales)


def _scales(data_dir, patients: dict[str, list[str]], features_dir, pixel_size_um) -> dict[str, float]:
    """Each crop's scale: :func:`lympho_features.measure.crop_scales` with the features folder's cells, if any."""
    from .folders import FeaturesFolder
    from .measure import crop_scales

    cells = FeaturesFolder(features_dir).cells() if features_dir is not None else None
    return crop_scales(data_dir, patients, cells=cells, pixel_size_um=pixel_size_um)


def _draw(
    data_dir,
    candidates: list[str],
    n: int,
    only: str | None,
    settings: SegmentationSettings | None,
    columns: int,
    scales: dict[str, float],
    strict: bool = False,
):
    """Segment and measure ``candidates`` in order until ``n`` tiles are kept (by ``only``); their montage and rows.

    An unreadable crop is passed over in a sample, and is an error (naming it) when ``strict``.
    """
    from .measure import ExtractSettings, measure_crop, segment_at_canonical

    extract_settings = ExtractSettings() if settings is None else ExtractSettings(segmentation=settings)
    tiles, captions, oks, rows = [], [], [], []
    for rel in candidates:
        if len(tiles) >= n:
            break
        try:
            rgb = read_crop(data_dir, rel)
        except ImageError as exc:
            if strict:
                raise DatasetError(f"crop {rel} cannot be read: {exc}") from None
            continue
        um = scales.get(rel)
        # QC and cell type as `lympho extract` decides them (the cell-type gate, the crop at its scale); the tile
        # is the crop at the canonical scale with the outlines measured on it.
        row = measure_crop(rgb, extract_settings, um_per_px=um)
        if only is not None and not _selected(row, only):
            continue
        crop, seg, _ = segment_at_canonical(
            rgb,
            um,
            extract_settings.segmentation,
            canonical=extract_settings.canonical_um_per_px,
            tolerance=extract_settings.resample_tolerance,
        )
        tiles.append(draw_outlines(crop, seg))
        captions.append(row_label(row))
        oks.append(bool(row["qc_ok"]))
        flags = {k: v for k, v in row.items() if k.startswith(("qc_", "is_")) and v is True and k != "qc_ok"}
        rows.append(
            {
                "image": rel,
                "um_per_px": row["um_per_px"],
                "qc_reason": row["qc_reason"],
                "cell_type": row["cell_type"],
                "cell_type_prob": row["cell_type_prob"],
                **flags,
            }
        )
    return montage(tiles, captions, columns=columns, ok=oks), rows


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB montage as PNG atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise OSError(f"cannot encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)
    return path
