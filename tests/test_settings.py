"""Every settings class refuses, where it is defined, a value that cannot mean what its setting says."""

import json
from datetime import date

import numpy as np
import pytest

from lympho_features.aggregate import AggregateSettings
from lympho_features.errors import LymphoError, SettingsError
from lympho_features.extract import ExtractSettings
from lympho_features.features import FeatureSettings
from lympho_features.segment import SegmentationSettings

BAD = [
    (SegmentationSettings, "central_fraction", 0.0),
    (SegmentationSettings, "central_fraction", 1.5),
    (SegmentationSettings, "max_centre_offset", float("nan")),
    (SegmentationSettings, "min_nucleus_area", -5),
    (SegmentationSettings, "min_nucleus_area", 300.5),
    (SegmentationSettings, "max_nucleus_area", 100),  # below min_nucleus_area (300)
    (SegmentationSettings, "purple_min", 300),
    (SegmentationSettings, "roi_margin", -1),
    (SegmentationSettings, "open_radius", True),
    (SegmentationSettings, "max_touch_fraction", 1.2),
    (SegmentationSettings, "monocyte_max_solidity", -0.1),
    (SegmentationSettings, "od_background", -0.2),
    (SegmentationSettings, "blur_threshold", "1.0"),
    (SegmentationSettings, "cytoplasm_margin", None),
    (FeatureSettings, "haralick_levels", 1),
    (FeatureSettings, "haralick_distances", ()),
    (FeatureSettings, "haralick_distances", (1, 0)),
    (FeatureSettings, "haralick_distances", 3),
    (FeatureSettings, "haralick_distances", (1.5,)),
    (FeatureSettings, "nucleoli_radius", 0),
    (FeatureSettings, "nucleoli_depth", -1.0),
    (AggregateSettings, "quantiles", (0.1, 1.5)),
    (AggregateSettings, "quantiles", "0.5"),
    (AggregateSettings, "min_cells", -1),
    (ExtractSettings, "segmentation", {"central_fraction": 0.7}),
    (ExtractSettings, "features", None),
    (ExtractSettings, "aggregate", FeatureSettings()),
    (ExtractSettings, "reference_date", "2026-01-01"),
    (ExtractSettings, "max_pixels", 0),
]


@pytest.mark.parametrize(("cls", "name", "value"), BAD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in BAD])
def test_a_bad_value_is_refused_with_the_settings_name(cls, name, value):
    with pytest.raises(SettingsError, match=rf"^{cls.__name__}\.{name} = .*: must be "):
        cls(**{name: value})


def test_the_error_is_a_lympho_error_and_a_value_error():
    # The CLI prints any LymphoError on one line; callers that expect ValueError from bad arguments still catch it.
    with pytest.raises(LymphoError):
        FeatureSettings(haralick_levels=0)
    with pytest.raises(ValueError):
        AggregateSettings(min_cells=-2)


def test_defaults_and_meaningful_values_are_accepted():
    for cls in (SegmentationSettings, FeatureSettings, AggregateSettings, ExtractSettings):
        cls()
    # An infinite margin switches a test off, None switches the chroma test off.
    SegmentationSettings(pale_chroma_margin=np.inf, cytoplasm_chroma_margin=None, max_rbc_blueness=-0.1)
    FeatureSettings(haralick_levels=300, haralick_distances=[1, 2, 5])  # a list, as read back from JSON
    AggregateSettings(quantiles=(), min_cells=0)
    ExtractSettings(reference_date=date(2020, 1, 1), max_pixels=10)


@pytest.mark.parametrize("side", [32, 100, 224, 363, 2000])
def test_rescaled_settings_stay_valid(side):
    # scaled() builds new settings, checked as any others: a rescaling to a small crop must not break them.
    s = SegmentationSettings().scaled(side)
    assert 4 <= s.min_nucleus_area <= s.max_nucleus_area
    assert s.roi_margin >= 8 and s.open_radius >= 1 and s.close_radius >= 1


def test_recorded_settings_read_back_from_json_are_accepted():
    # The report rebuilds the segmentation settings from the manifest's JSON.
    recorded = json.loads(json.dumps(ExtractSettings().to_dict()))
    assert SegmentationSettings(**recorded["segmentation"]) == SegmentationSettings()
    assert AggregateSettings(**recorded["aggregate"]).min_cells == AggregateSettings().min_cells
    assert list(FeatureSettings(**recorded["features"]).haralick_distances) == [1, 3]
