"""Patient folders, the clinical CSV and safe paths (lympho_features.dataset)."""

from datetime import date

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lympho_features.dataset import (
    DatasetError,
    ImageError,
    discover_patients,
    load_clinical,
    normalise_gender,
    parse_count,
    parse_dob,
    parse_label,
    safe_path,
    scan_data_dir,
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
        (
            "ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,M,1/1/1950,1\nP1,0,F,1/1/1950,2\n",
            "line 3 (patient P1): duplicate patient ID (first on line 2)",
        ),
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


def test_every_problem_of_the_csv_is_reported_at_once(tmp_path):
    p = write(
        tmp_path,
        "ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"
        "P1,1,M,1/1/1950,abc\n"  # non-numeric count
        "P2,0,F,2/2/1960,4.1\n"
        "P2,0,F,2/2/1960,4.2\n"  # duplicated ID
        "P3,1,X,someday,5\n"  # two problems on one row
        "P9,0,M,3/3/1970,6\n",  # no image folder
    )
    with pytest.raises(DatasetError) as info:
        load_clinical(p, patient_folders=["P1", "P2", "P3"])
    message = str(info.value)
    assert message.startswith(f"clinical CSV {p} has 5 problems: ") and "\n" not in message
    assert message.split(" problems: ", 1)[1].split("; ") == [
        "line 2 (patient P1): LYMPH_COUNT 'abc' is not a number",
        "line 4 (patient P2): duplicate patient ID (first on line 3)",
        "line 5 (patient P3): unknown gender 'X'",
        "line 5 (patient P3): unparseable date of birth 'someday'",
        "line 6 (patient P9): no image folder of that name",
    ]


def test_a_row_without_folder_alone_is_no_problem(tmp_path):
    p = write(tmp_path, "ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,M,1/1/1950,3\nP9,0,F,1/1/1950,4\n")
    assert load_clinical(p, patient_folders=["P1"])["patient_id"].tolist() == ["P1", "P9"]


def test_many_problems_are_counted_beyond_those_shown(tmp_path):
    rows = "".join(f"P{i},1,M,1/1/1950,x\n" for i in range(40))
    with pytest.raises(DatasetError) as info:
        load_clinical(write(tmp_path, "ID,LABEL,GENDER,DOB,LYMPH_COUNT\n" + rows))
    message = str(info.value)
    assert "has 40 problems" in message and message.endswith("; and 10 more") and "line 31 (patient P29)" in message
    assert "line 32 " not in message


def test_blank_rows_and_quoted_line_breaks_keep_line_numbers(tmp_path):
    p = write(tmp_path, 'ID,LABEL,GENDER,DOB,LYMPH_COUNT\n\n,,,,\n"P1",1,M,"1/1/1950",2\nP2,1,M,1/1/1950,"4\n5"\n')
    with pytest.raises(DatasetError, match=r"line 5 \(patient P2\): LYMPH_COUNT '4\\n5' is not a number"):
        load_clinical(p)


def test_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_clinical(tmp_path / "nope.csv")


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


def test_safe_path_refuses_escapes(tmp_path):
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "a.jpg").write_bytes(b"x")
    assert safe_path(tmp_path, "P1/a.jpg") == tmp_path.resolve() / "P1" / "a.jpg"
    for rel in ("../x.jpg", "P1/../../x.jpg", "/etc/passwd"):
        with pytest.raises(ImageError, match="outside DATA_DIR"):
            safe_path(tmp_path, rel)
    outside = tmp_path.parent / f"{tmp_path.name}-secret.jpg"
    outside.write_bytes(b"x")
    (tmp_path / "P1" / "b.jpg").symlink_to(outside)  # swapped in after a scan
    with pytest.raises(ImageError, match="outside DATA_DIR"):
        safe_path(tmp_path, "P1/b.jpg")


def test_scan_lists_refused_entries(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-out"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "dir.jpg").mkdir()
    (tmp_path / "P2").symlink_to(outside)  # a whole patient folder outside DATA_DIR
    patients, refused = scan_data_dir(tmp_path)
    assert patients == {"P1": [], "P2": []}
    reasons = {r["image"]: r["reason"] for r in refused}
    assert reasons == {"P1/dir.jpg": "not a regular file", "P2/x.jpg": "symbolic link leads outside DATA_DIR"}


@pytest.mark.parametrize(
    "text,value", [("11.2", 11.2), (" 3 ", 3.0), ("4,5", 4.5), ("1e1", 10.0), ("", None), ("NA", None)]
)
def test_parse_count(text, value):
    got = parse_count(text)
    assert np.isnan(got) if value is None else got == value


@pytest.mark.parametrize("text", ["abc", "1.2.3", "4,5,6", "12 G/L", "inf", "--1"])
def test_parse_count_rejects(text):
    with pytest.raises(ValueError):
        parse_count(text)


def test_clinical_csv_in_latin1_semicolons_and_bom(tmp_path):
    p = tmp_path / "c.csv"
    p.write_bytes("ID;LABEL;GENDER;DOB;LYMPH_COUNT\nPé1;1;F;4/25/1946;11,5\n".encode("cp1252"))
    df = load_clinical(p)
    assert df["patient_id"].tolist() == ["Pé1"] and df["lymph_count"].tolist() == [11.5]
    assert "not UTF-8 (byte 0xE9 on line 2)" in df.attrs["warnings"][0]
    p.write_bytes("\ufeffID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,0,M,1/1/1950,2\n".encode())
    df = load_clinical(p)
    assert df["patient_id"].tolist() == ["P1"] and df.attrs["warnings"] == []
    p.write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,0,M,1/1/1950,2\n", encoding="utf-16")
    assert load_clinical(p)["patient_id"].tolist() == ["P1"]


def test_ragged_csv_gives_one_line_error(tmp_path):
    p = write(tmp_path, "ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,M,1/1/1950,1,extra,more\n")
    with pytest.raises(DatasetError) as info:
        load_clinical(p)
    assert "c.csv" in str(info.value) and "\n" not in str(info.value)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)), st.sampled_from(["us", "eu-", "eu.", "iso"]))
def test_parse_dob_round_trips(d, style):
    text = {
        "us": f"{d.month}/{d.day}/{d.year}",
        "eu-": f"{d.day:02d}-{d.month:02d}-{d.year}",
        "eu.": f"{d.day}.{d.month}.{d.year}",
        "iso": d.isoformat(),
    }[style]
    assert parse_dob(text) == d


@FAST
@given(st.text(max_size=30))
def test_clinical_parsers_fail_only_with_value_error(text):
    for parse in (parse_dob, normalise_gender, parse_count):
        try:
            parse(text)
        except ValueError as exc:
            assert str(exc)


@FAST
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.booleans())
def test_parse_count_round_trips(value, comma):
    text = f"{value:.4f}"
    assert parse_count(text.replace(".", ",") if comma else text) == pytest.approx(float(text))


csv_cell = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r"), max_size=12),
    st.sampled_from(["", "1", "0", "-1", "M", "f", "4/25/1946", "25-03-1931", "1946-04-25", "11.2", "4,5", '"q"']),
)


@FAST
@given(st.lists(st.lists(csv_cell, min_size=5, max_size=5), min_size=1, max_size=6))
@example(rows=[["0\n0", "00", "", "", ""]])  # found by hypothesis: an ID with a line break
def test_load_clinical_returns_a_table_or_a_one_line_error(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("csv") / "c.csv"
    pd.DataFrame(rows, columns=["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"]).to_csv(path, index=False)
    try:
        df = load_clinical(path)
    except DatasetError as exc:
        assert "\n" not in str(exc) and "c.csv" in str(exc)
        return
    # Rows of empty fields (spreadsheet exports) are passed over; every other row is a patient.
    assert df["patient_id"].is_unique and len(df) == sum(any(c.strip() for c in r) for r in rows)
    assert set(df["gender"].dropna()) <= {"M", "F"} and set(df["label"].dropna()) <= {0, 1}
    assert (df["lymph_count"].dropna() >= 0).all()


def test_bmp_crops_of_other_scanners_are_found_and_read(tmp_path):
    import cv2

    from lympho_features.dataset import read_crop

    (tmp_path / "P1").mkdir()
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[..., 0] = 200  # red, to check the channel order survives the BMP round trip
    assert cv2.imwrite(str(tmp_path / "P1" / "cell.bmp"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert discover_patients(tmp_path) == {"P1": ["P1/cell.bmp"]}
    assert np.array_equal(read_crop(tmp_path, "P1/cell.bmp"), rgb)
