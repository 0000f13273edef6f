from datetime import date

import cv2
import numpy as np
import pytest

from lympho_features.dataset import (
    DatasetError,
    ImageError,
    decode_image,
    discover_patients,
    load_clinical,
    normalise_gender,
    parse_dob,
    parse_label,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4/25/1946", date(1946, 4, 25)),
        ("11/22/1965", date(1965, 11, 22)),
        ("25-03-1931", date(1931, 3, 25)),
        ("08-02-1945", date(1945, 2, 8)),
        ("13/02/1950", date(1950, 2, 13)),  # impossible as US order: read day/month
        ("1946-04-25", date(1946, 4, 25)),
        ("", None),
    ],
)
def test_parse_dob_real_formats(text, expected):
    assert parse_dob(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "31/31/1950", "4/25/46"])
def test_parse_dob_rejects(text):
    with pytest.raises(ValueError):
        parse_dob(text)


def test_gender_and_label():
    assert normalise_gender("f") == "F" and normalise_gender(" M ") == "M" and normalise_gender("") is None
    with pytest.raises(ValueError):
        normalise_gender("X")
    assert [parse_label(v) for v in ("1", "0", "-1", "", None)] == [1, 0, None, None, None]
    with pytest.raises(ValueError):
        parse_label("2")


def write(tmp_path, text, name="c.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_clinical(tmp_path):
    p = write(tmp_path, "ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,f,4/25/1946,11.2\nP2,-1,M,25-03-1931,\n")
    df = load_clinical(p, reference_date=date(2020, 1, 1))
    assert df["patient_id"].tolist() == ["P1", "P2"]
    assert df["label"].tolist()[0] == 1 and df["label"].isna().tolist() == [False, True]
    assert df["gender"].tolist() == ["F", "M"]
    assert df["age"].iloc[0] == pytest.approx(73.7, abs=0.1)
    assert np.isnan(df["lymph_count"].iloc[1])


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("ID,LABEL,GENDER,DOB\nP1,1,M,1/1/1950\n", "LYMPH_COUNT"),
        ("ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,M,1/1/1950,1\nP1,0,F,1/1/1950,2\n", "duplicate patient ID(s): P1"),
        ("ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,M,1/1/1950,abc\n", "line 2 (patient P1)"),
        ("ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,M,1/1/1950,1\nP2,1,M,someday,1\n", "line 3 (patient P2)"),
        ("ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,7,M,1/1/1950,1\n", "label '7'"),
    ],
)
def test_load_clinical_errors_name_the_problem(tmp_path, text, fragment):
    with pytest.raises(DatasetError, match=None) as info:
        load_clinical(write(tmp_path, text))
    assert fragment in str(info.value)
    assert "c.csv" in str(info.value)


def test_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_clinical(tmp_path / "nope.csv")


def encode(img, ext=".png"):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_decode_variants():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    bgr = rgb[..., ::-1].copy()
    assert decode_image(encode(bgr))[0, 0].tolist() == [200, 0, 0]
    assert decode_image(encode(np.full((20, 30), 90, np.uint8))).shape == (20, 30, 3)
    rgba = np.dstack([bgr, np.full((20, 30), 255, np.uint8)])
    assert decode_image(encode(rgba))[0, 0].tolist() == [200, 0, 0]
    sixteen = bgr.astype(np.uint16) * 257
    out = decode_image(encode(sixteen))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_decode_bad_bytes(data):
    if data is None:  # a truncated JPEG
        data = encode(np.full((64, 64, 3), 128, np.uint8), ".jpg")[:100]
    with pytest.raises(ImageError):
        decode_image(data)


def test_decode_refuses_huge_images():
    with pytest.raises(ImageError, match="too large"):
        decode_image(encode(np.zeros((64, 64, 3), np.uint8)), max_pixels=100)


def test_discover_patients_ignores_non_images_and_escaping_links(tmp_path):
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "a.jpg").write_bytes(b"x")
    (tmp_path / "P1" / "notes.txt").write_text("x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jpg"
    outside.write_bytes(b"x")
    (tmp_path / "P1" / "b.jpg").symlink_to(outside)
    (tmp_path / "P2").mkdir()
    assert discover_patients(tmp_path) == {"P1": ["P1/a.jpg"], "P2": []}
    with pytest.raises(DatasetError, match="not found"):
        discover_patients(tmp_path / "missing")
