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
    nucleoli_min_depth: float = 0.3  #: ... and by at least this much OD (no spots in a flat, noisy nucleus)
    #: Gaussian sigma (pixels) by which the nucleus' grey level and optical density are smoothed, inside the
    #: nucleus only, before the chromatin-texture families (Haralick, LBP, granularity, nucleoli) measure them:
    #: texture measured at a scale coarser than what focus, optics and JPEG's 8-pixel blocks move (0: raw
    #: pixels, features version 5 and before). 1 px halved how far these families move under a JPEG re-save at
    #: 50, a soft focus or a round trip through another magnification, with unshifted CV accuracy unchanged
    #: (benchmarks/site_robustness_results.md).
    texture_sigma: float = 1.0

    def __post_init__(self) -> None:
        """Refuse a value that cannot mean what its setting says (raises :class:`~lympho_features.errors.SettingsError`)."""
        check = SettingsCheck(self)
        check.integer("haralick_levels", 2)
        check.numbers("haralick_distances", 1, None, whole=True)
        check.number("background_od")
        check.integer("nucleoli_radius", 1)
        check.number("nucleoli_depth", 0)
        check.number("nucleoli_min_depth", 0)
        check.number("texture_sigma", 0)
