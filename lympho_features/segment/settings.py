"""What the segmentation can be told and what it reports: its settings, QC reasons and flags."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .._validate import SettingsCheck

#: Reasons a crop can fail quality control, in the order they are checked.
QC_REASONS = (
    "ok",
    "bad_image",
    "no_nucleus",
    "tight_crop",
    "nucleus_off_centre",
    "nucleus_at_border",
    "nucleus_too_small",
    "nucleus_too_large",
    "touching_cells",
    "not_lymphocyte",
    "smudge",
    "blur",
)

#: Every boolean flag of :attr:`Segmentation.flags`, with its meaning.
FLAG_DESCRIPTIONS = {
    "qc_off_centre": "nucleus centre far from the crop centre: probably not the cell the crop was taken for",
    "qc_at_border": "nucleus touches the crop border: cut",
    "qc_too_small": "nucleus smaller than any lymphocyte's (debris, platelet clump)",
    "qc_too_large": "nucleus larger than any lymphocyte's (clump of cells)",
    "qc_touching": "another cell touches this one over much of its outline: outline unreliable",
    "qc_neighbour_split": "a touching neighbour was split off along a short cut (cell kept)",
    "is_pyknotic": "small, very dense, structureless nucleus (nucleated red cell or dying cell)",
    "is_granulocyte": "nucleus of several lobes joined by thin strands (neutrophil, eosinophil)",
    "is_monocyte": "large cell with a folded nucleus and abundant grey cytoplasm",
    "is_not_lymphocyte": "not a lymphocyte: any type the cell-type gate names (with --no-cell-type-gate: granulocyte, monocyte or pyknotic cell by the segmentation's rules)",
    "is_smudge": "smudge (broken) cell: pale, spread nucleus without cytoplasm",
    "qc_blur": "nucleus out of focus",
    "qc_tight_crop": "crop cut close around the cell: little glass and no red cells around it (segmented without "
    "them; without a pixel size its scale and focus cannot be judged: QC reason tight_crop)",
}

#: Reasons decided before (or apart from) the flags of :data:`_QC_ORDER`, kept when the QC reason is derived
#: again from the flags (the cell-type gate): no cell found, or a tight crop whose scale is unknown
#: (:func:`lympho_features.measure.measure_cell` knows the scale, the segmentation does not).
QC_REASONS_BEFORE_FLAGS = ("bad_image", "no_nucleus", "tight_crop")

#: The checks behind each QC reason, in the order of :data:`QC_REASONS` (the first failed one is reported).
_QC_ORDER = (
    ("nucleus_off_centre", "qc_off_centre"),
    ("nucleus_at_border", "qc_at_border"),
    ("nucleus_too_small", "qc_too_small"),
    ("nucleus_too_large", "qc_too_large"),
    ("touching_cells", "qc_touching"),
    ("not_lymphocyte", "is_not_lymphocyte"),
    ("smudge", "is_smudge"),
    ("blur", "qc_blur"),
)


@dataclass(frozen=True)
class SegmentationSettings:
    """All tunable parameters of the segmentation, in one place.

    Distances and areas are pixels of the canonical scale
    (:data:`lympho_features.scale.CANONICAL_UM_PER_PX`, the 224x224 challenge
    crops'): ``lympho extract`` resamples every crop to that scale, so they
    hold at any magnification. Called on its own, :func:`segment_cell` scales
    them with the crop side instead (see :meth:`scaled`), unless
    ``scale_with_side`` is False.
    """

    central_fraction: float = 0.7  #: side of the central window used for thresholds
    min_nucleus_area: int = 300
    max_nucleus_area: int = 14000
    max_centre_offset: float = 0.22  #: nucleus centroid offset, as a fraction of crop side
    purple_min: int = 25  #: nucleus pixels have blue - green above this (uint8 levels)
    od_background: float = 0.15  #: OD sum above the background reference that counts as stained
    cytoplasm_margin: float = 0.08  #: how far above the red-cell reference cytoplasm sits
    max_rbc_blueness: float = 0.22  #: cap of the red-cell reference (real crops: 0.04 to 0.21)
    pale_min_od: float = 0.08  #: OD sum above the background of the faintest (pale) cytoplasm counted
    pale_chroma_margin: float = 0.12  #: how far above the red cells' blue chroma pale cytoplasm sits
    pale_max_rbc_od: float = 1.0  #: pale cytoplasm is less dense than this times the red cells' mean OD
    #: cytoplasm's blue chroma sits this far above the red cells' (None: no hue test for stained cytoplasm)
    cytoplasm_chroma_margin: float | None = 0.05
    roi_margin: int = 56  #: pixels around the nucleus box examined for cytoplasm
    max_touch_fraction: float = 0.3  #: cut along a neighbour, as a fraction of the cell outline
    lobe_erosion: int = 4  #: erosion radius that separates granulocyte lobes (thin strands)
    min_lobe_area: int = 40  #: smallest area of a lobe after erosion
    min_merged_nucleus_area: int = 1000  #: each of two merged nuclei is at least this large (else: lobes)
    lobulated_max_solidity: float = 0.85  #: a nucleus less solid than this is checked for thick-stranded lobes
    lobe_erosion_fraction: float = 0.14  #: ... by an erosion of this fraction of its equivalent diameter
    merged_max_solidity: float = 0.9  #: a large nucleus less solid than this may be two merged nuclei
    lobe_gap: int = 12  #: separate pieces this close to the nucleus may be its lobes
    #: std of the Laplacian of nucleus OD over its std below this is blur (one crop alone); read on the crop as
    #: acquired, before it is brought to the common focus (``focus_edge_sigma``; segment.qc.judge_focus_on)
    blur_threshold: float = 1.0
    #: ``lympho extract`` judges blur against the crop's own patient: sharpness below this fraction of the
    #: median of the patient's crops (a soft slide is a property of the slide, not of a crop) ...
    blur_patient_ratio: float = 0.5
    blur_floor: float = 0.4  #: ... or below this at any rate (canonical scale; Gaussian blur of 2 px gives 0.3)
    blur_min_crops: int = 5  #: with fewer measurable crops, only ``blur_floor`` applies
    #: a crop that failed QC, or whose area is less than this many times its cell's, or narrower than
    #: ``tight_crop_check_side``, is segmented again as a tight crop (cut close around the cell: no red cells,
    #: little glass; :func:`~.pipeline.segment_cell`) ...
    tight_crop_check_ratio: float = 5.0
    #: (pixels; 26 um at the canonical scale: room for a large lymphocyte and little else. Not scaled by
    #: :meth:`scaled`: a crop checked costs a second segmentation, the decision below is free of the scale)
    tight_crop_check_side: int = 160
    #: ... and is tight when its area is less than this many times the cell found then: the challenge's 224 px
    #: crops hold 2.8 to 40 times their cell (trainset, 9,501 crops), a crop cut to the cell's box 1.3 to 1.8 times
    tight_crop_area_ratio: float = 2.5
    #: ... and the cell found then is convex (area over convex hull area): lymphocytes cut tight 0.84 and above
    #: (PBC), clumps of large cells with red cells in an ordinary crop, which a segmentation without red cells
    #: runs together, 0.81 and below (trainset)
    tight_crop_min_solidity: float = 0.82
    smudge_max_od: float = 2.4  #: mean nucleus OD (above background) below this looks washed out (one crop alone)
    #: ``lympho extract`` judges paleness against the crop's own patient (a stain's strength is the slide's):
    #: nucleus OD below this fraction of the median of the patient's crops (2.4 / 3.23, the trainset's median) ...
    smudge_patient_ratio: float = 0.74
    #: ... or below this at any rate (with fewer than ``blur_min_crops`` measured crops: ``smudge_max_od``)
    smudge_floor_od: float = 1.2
    smudge_max_cytoplasm: float = 0.15  #: ... and cytoplasm below this fraction of the cell
    pyknotic_min_od: float = 3.9  #: a nucleus denser than this and structureless (OD std
    pyknotic_max_od_sd: float = 0.38  #: below this) is pyknotic: nucleated red cell or dying cell
    monocyte_min_diameter: float = 100.0  #: cell equivalent diameter above which a folded nucleus is a monocyte
    monocyte_max_solidity: float = 0.88
    open_radius: int = 2
    close_radius: int = 3
    #: Edge blur every crop is brought to before it is segmented and measured (units of
    #: :func:`lympho_features.focus.edge_sigma`; the challenge crops as acquired read about 0.86, blurred by a
    #: Gaussian of 1 px 1.25): a Gaussian blur is added to each crop at the canonical scale until its edges
    #: read this, so that focus, optics, resampling and compression up to a blur of about 1 px leave the
    #: measurements where they were. Applied by :func:`lympho_features.measure.segment_at_canonical` (what
    #: ``lympho extract``, the montages, the report and ``lympho embed`` see), not by :func:`segment_cell`
    #: itself. None: crops as they are (features version 9 and before).
    focus_edge_sigma: float | None = 1.27
    #: False when the crop is already at the canonical scale (``lympho extract``): then its side says nothing
    #: of the magnification (a tight crop is small, not coarse) and the pixel settings hold as they are.
    scale_with_side: bool = True

    def __post_init__(self) -> None:
        """Refuse a value that cannot mean what its setting says (raises :class:`~lympho_features.errors.SettingsError`)."""
        check = SettingsCheck(self)
        for name in ("central_fraction", "max_centre_offset"):
            check.number(name, 0, 1, low_open=True)
        for name in ("min_nucleus_area", "max_nucleus_area"):
            check.integer(name, 1)
        if self.max_nucleus_area < self.min_nucleus_area:
            check.fail("max_nucleus_area", f"at least min_nucleus_area ({self.min_nucleus_area})")
        check.number("purple_min", 0, 255)
        for name in ("roi_margin", "lobe_erosion", "min_lobe_area", "min_merged_nucleus_area", "lobe_gap"):
            check.integer(name, 0)
        for name in ("open_radius", "close_radius"):
            check.integer(name, 0)
        for name in (
            "max_touch_fraction",
            "lobulated_max_solidity",
            "lobe_erosion_fraction",
            "merged_max_solidity",
            "smudge_max_cytoplasm",
            "monocyte_max_solidity",
        ):
            check.number(name, 0, 1)
        for name in (
            "od_background",
            "pale_min_od",
            "pale_max_rbc_od",
            "blur_threshold",
            "smudge_max_od",
            "pyknotic_max_od_sd",
            "monocyte_min_diameter",
        ):
            check.number(name, 0)
        # Margins and references that may be negative, or infinite to switch a test off.
        for name in ("cytoplasm_margin", "max_rbc_blueness", "pale_chroma_margin", "pyknotic_min_od"):
            check.number(name)
        check.number("cytoplasm_chroma_margin", optional=True)
        check.number("blur_patient_ratio", 0, 1)
        check.number("blur_floor", 0)
        check.integer("blur_min_crops", 1)
        check.number("tight_crop_area_ratio", 0)
        check.number("tight_crop_check_ratio", 0)
        check.integer("tight_crop_check_side", 0)
        check.number("tight_crop_min_solidity", 0, 1)
        check.number("smudge_patient_ratio", 0, 1)
        check.number("smudge_floor_od", 0)
        check.number("focus_edge_sigma", 0, low_open=True, optional=True)

    # Cached: segment_cell asks for every crop, and building (and checking) the settings costs more than a look-up.
    @lru_cache(maxsize=64)  # noqa: B019  (settings are small, immutable and few)
    def scaled(self, side: int) -> SegmentationSettings:
        """Return settings whose lengths and areas are rescaled from a 224-pixel crop to ``side``.

        Unchanged when ``scale_with_side`` is False.

        Examples
        --------
        >>> s = SegmentationSettings()
        >>> half = s.scaled(112)  # a crop half as wide: areas a quarter, lengths a half
        >>> half.min_nucleus_area, half.roi_margin, s.scaled(224) == s
        (75, 28, True)
        """
        if side == 224 or not self.scale_with_side:
            return self
        k = side / 224.0
        d = dict(self.__dict__)
        for a in ("min_nucleus_area", "max_nucleus_area", "min_lobe_area", "min_merged_nucleus_area"):
            d[a] = max(4, int(round(getattr(self, a) * k * k)))
        d["roi_margin"] = max(8, int(round(self.roi_margin * k)))
        d["lobe_gap"] = max(2, int(round(self.lobe_gap * k)))
        d["lobe_erosion"] = max(1, int(round(self.lobe_erosion * k)))
        d["monocyte_min_diameter"] = self.monocyte_min_diameter * k
        d["open_radius"] = max(1, int(round(self.open_radius * k)))
        d["close_radius"] = max(1, int(round(self.close_radius * k)))
        return SegmentationSettings(**d)


_DEFAULT_SETTINGS = SegmentationSettings()
