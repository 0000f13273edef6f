"""Cell thumbnails: each crop re-segmented as extraction measured it, zoomed on its cell and outlined, as an inline JPEG.

A crop is resampled to the canonical scale at its own scale (cells.parquet's
``um_per_px``) and segmented there by
:func:`lympho_features.measure.segment_at_canonical`, the function
``lympho extract`` measures it with: the outline drawn is the one measured.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..dataset import ImageError, read_crop
from ..errors import ReportError
from ..measure import segment_at_canonical
from ..scale import CANONICAL_UM_PER_PX, RESAMPLE_TOLERANCE
from ..segment import SegmentationSettings
from .figures import data_uri
from .inputs import ReportInputs, measured_scales, resampling, segmentation_settings
from .style import CELL_OUTLINE, NUCLEUS_OUTLINE


def cell_thumbnail(
    rgb: np.ndarray, nucleus_mask: np.ndarray, cell_mask: np.ndarray, size: int = 128, quality: int = 70
) -> bytes:
    """JPEG thumbnail zoomed on the cell, with its outline (green) and its nucleus outline (gold).

    The crop is cut to a square around the cell (a quarter of its size as
    margin, at least 40% of the crop side) so the chromatin stays visible at
    thumbnail size; the outlines are drawn at thumbnail scale so they stay one
    pixel wide.
    """
    h, w = rgb.shape[:2]
    ys, xs = np.nonzero(cell_mask if cell_mask.any() else nucleus_mask)
    if len(ys):
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        side = max(ys.max() - ys.min(), xs.max() - xs.min()) * 1.5
    else:
        cy, cx, side = (h - 1) / 2, (w - 1) / 2, 0.6 * min(h, w)
    side = int(min(max(side, 0.4 * min(h, w)), min(h, w)))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    box = (slice(y0, y0 + side), slice(x0, x0 + side))
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    small = cv2.resize(np.ascontiguousarray(rgb[box]), (size, size), interpolation=interp)
    for mask, colour in ((cell_mask, CELL_OUTLINE), (nucleus_mask, NUCLEUS_OUTLINE)):
        m = cv2.resize(mask[box].astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_LINEAR) > 127
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(small, contours, -1, colour, 1, lineType=cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - encoding an RGB uint8 array does not fail
        raise ReportError("cannot encode a thumbnail")
    return buf.tobytes()


#: Side of a gallery thumbnail (pixels): the chromatin must stay readable.
THUMBNAIL_SIZE = 128
#: Side of a thumbnail of the "all cells" strip, and the share of the crop (centred) it shows.
STRIP_SIZE = 56
STRIP_FIELD = 0.6


def strip_thumbnail(rgb: np.ndarray, size: int = STRIP_SIZE, field: float = STRIP_FIELD, quality: int = 55) -> bytes:
    """A small JPEG of the centre of a crop (where the cell is), without outlines: cheap, for every crop."""
    h, w = rgb.shape[:2]
    side = max(1, int(round(min(h, w) * field)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    small = cv2.resize(
        np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side]), (size, size), interpolation=cv2.INTER_AREA
    )
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - encoding an RGB uint8 array does not fail
        raise ReportError("cannot encode a thumbnail")
    return buf.tobytes()


class ThumbnailMaker:
    """Reads crops from the data folder, re-segments them as extraction did and returns outlined JPEG data URIs.

    Parameters
    ----------
    data_dir : Path, optional
        The crops (None: every thumbnail is missing).
    settings : SegmentationSettings, optional
        As recorded at extraction (defaults when None).
    size : int
        Side of a gallery thumbnail (pixels).
    scales : dict of str to float, optional
        Image -> its ``um_per_px`` in cells.parquet; a crop not in it is taken to be at the canonical scale.
    canonical, tolerance : float
        The extraction's ``canonical_um_per_px`` and ``resample_tolerance``.

    URIs are cached by image.
    """

    @classmethod
    def for_report(cls, inp: ReportInputs) -> ThumbnailMaker:
        """The thumbnails of a report's crops, segmented as its features folder's extraction did."""
        canonical, tolerance = resampling(inp.manifest)
        return cls(
            inp.data_dir,
            segmentation_settings(inp.manifest),
            scales=measured_scales(inp.cells),
            canonical=canonical,
            tolerance=tolerance,
        )

    def __init__(
        self,
        data_dir: Path | None,
        settings=None,
        size: int = THUMBNAIL_SIZE,
        *,
        scales: dict[str, float] | None = None,
        canonical: float = CANONICAL_UM_PER_PX,
        tolerance: float = RESAMPLE_TOLERANCE,
    ):
        self.data_dir = data_dir
        self.settings = settings if settings is not None else SegmentationSettings()
        self.size = size
        self.scales = scales or {}
        self.canonical = canonical
        self.tolerance = tolerance
        self.cache: dict[str, str | None] = {}
        self.strip_cache: dict[str, str | None] = {}
        self.missing = 0

    def strip(self, image: str) -> str | None:
        """A small JPEG data URI of the centre of a crop, no segmentation (the "all cells" strip)."""
        if image not in self.strip_cache:
            uri = None
            if self.data_dir is not None:
                try:
                    uri = data_uri(strip_thumbnail(read_crop(self.data_dir, image)), "image/jpeg")
                except (ImageError, OSError):
                    pass  # counted once, by the gallery or here below
                if uri is None and image not in self.cache:
                    self.missing += 1
            self.strip_cache[image] = uri
        return self.strip_cache[image]

    def __call__(self, image: str) -> str | None:
        if image in self.cache:
            return self.cache[image]
        uri = None
        if self.data_dir is not None:
            try:
                rgb = read_crop(self.data_dir, image)
                crop, seg, _ = segment_at_canonical(
                    rgb, self.scales.get(image), self.settings, canonical=self.canonical, tolerance=self.tolerance
                )
                uri = data_uri(cell_thumbnail(crop, seg.nucleus_mask, seg.cell_mask, self.size), "image/jpeg")
            except (ImageError, OSError):
                self.missing += 1
        self.cache[image] = uri
        return uri
