"""Settings of every feature family, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from .._validate import SettingsCheck


@dataclass(frozen=True)
class FeatureSettings:
    """Extraction settings of every feature family, in one place."""

    haralick_levels: int = 16  #: grey levels after quantisation (16 keeps the matrices of a small nucleus well filled)
    haralick_distances: tuple[int, ...] = (1, 3)
    background_od: float = (
        0.45  #: unused since v2 (the segmentation's background reference is used); kept for old settings
    )
    nucleoli_radius: int = 4  #: largest radius of a pale spot counted as a nucleolus
    nucleoli_depth: float = 0.9  #: a nucleolus is paler than its surroundings by this many nucleus OD std
    #: ... and by at least this much OD (0: no absolute floor; 0.3 up to features version 10). An absolute floor
    #: read a weaker nuclear stain as fewer nucleoli: the nucleus' OD and its spread fall with the stain, the floor
    #: did not (it decided 12 % of the challenge nuclei as stained, 97 % with the hematoxylin at x0.7).
    nucleoli_min_depth: float = 0.0
    #: ... and by at least this share of the nucleus' mean OD (no spots in a flat, noisy nucleus): a floor that
    #: scales with the stain, as the spread does. 0.1 is the former 0.3 OD over the challenge nuclei's mean (~3.1).
    nucleoli_min_relative_depth: float = 0.1
    #: Gaussian sigma (pixels) by which the nucleus' grey level and optical density are smoothed, inside the
    #: nucleus only, before the chromatin-texture families (Haralick, LBP, granularity, nucleoli) measure them:
    #: texture measured at a scale coarser than what focus, optics and JPEG's 8-pixel blocks move (0: raw
    #: pixels, features version 5 and before). 1 px halved how far these families move under a JPEG re-save at
    #: 50, a soft focus or a round trip through another magnification, with unshifted CV accuracy unchanged
    #: (benchmarks/site_robustness_results.md).
    texture_sigma: float = 1.0
    #: Pixels of the nucleus' rim that Haralick's co-occurrences leave out: they read the nucleus eroded by this
    #: many pixels (:func:`~lympho_features.features.cell.nucleus_core`), after the smoothing. The rim holds the
    #: nucleus' strong edge against the cytoplasm, whose exact position moves with the stain's strength; read with
    #: it, contrast and correlation moved with the outline. 0: the whole nucleus (features version 10 and before).
    haralick_inset: int = 2

    def __post_init__(self) -> None:
        """Refuse a value that cannot mean what its setting says (raises :class:`~lympho_features.errors.SettingsError`)."""
        check = SettingsCheck(self)
        check.integer("haralick_levels", 2)
        check.numbers("haralick_distances", 1, None, whole=True)
        check.number("background_od")
        check.integer("nucleoli_radius", 1)
        check.number("nucleoli_depth", 0)
        check.number("nucleoli_min_depth", 0)
        check.number("nucleoli_min_relative_depth", 0)
        check.number("texture_sigma", 0)
        check.integer("haralick_inset", 0)
