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
        ("ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP1,1,M,1/1/1950,1\nP1,0,F,1/1/1950,2\n", "line 3 (patient P1): duplicate patient ID (first on line 2)"),
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


# --- header-checked decoding, safe paths, CSV encodings (issue 6) ---

from lympho_features.dataset import (  # noqa: E402
    image_header,
    parse_count,
    read_image,
    safe_path,
    scan_data_dir,
)


@pytest.mark.parametrize("ext,fmt", [(".jpg", "jpeg"), (".png", "png"), (".tiff", "tiff"), (".bmp", "bmp")])
def test_image_header_reads_the_size_without_decoding(ext, fmt):
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    assert image_header(encode(img, ext)) == (fmt, 53, 37)


def _chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(img: np.ndarray, color_type: int, width: int | None = None, height: int | None = None) -> bytes:
    """A PNG written by hand (8-bit), so that any colour type and any header size can be made."""
    import struct
    import zlib

    h, w = img.shape[:2]
    ihdr = struct.pack(
        ">IIBBBBB", w if width is None else width, h if height is None else height, 8, color_type, 0, 0, 0
    )
    rows = b"".join(b"\0" + img[y].tobytes() for y in range(h))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def png_bomb(width, height) -> bytes:
    """A tiny PNG whose header claims a huge image."""
    return raw_png(np.zeros((2, 2, 3), np.uint8), 2, width, height)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    def boom(*args):
        raise AssertionError("cv2.imdecode must not be called for a bomb")

    monkeypatch.setattr(cv2, "imdecode", boom)
    with pytest.raises(ImageError, match="too large \\(60000x60000"):
        decode_image(png_bomb(60000, 60000))
    jpeg = bytearray(encode(np.zeros((16, 16, 3), np.uint8), ".jpg"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") + (65000).to_bytes(2, "big")
    with pytest.raises(ImageError, match="too large \\(65000x65000"):
        decode_image(bytes(jpeg))


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda: encode(np.full((64, 64, 3), 99, np.uint8), ".jpg")[:-40], "truncated JPEG"),
        (lambda: encode(np.full((64, 64, 3), 99, np.uint8), ".png")[:-20], "truncated PNG"),
        (lambda: b"GIF89a" + b"\0" * 40, "not an image"),
        (lambda: b"hello world, not a picture", "not an image"),
        (lambda: encode(np.zeros((8, 8), np.float32), ".tiff"), "unsupported pixel type float32"),
        (lambda: png_bomb(0, 10), "empty image"),
    ],
)
def test_decode_names_what_is_wrong(make, fragment):
    with pytest.raises(ImageError, match=fragment):
        decode_image(make())


def test_png_bytes_named_jpg_and_gray_alpha_are_read(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(encode(np.full((10, 12, 3), 7, np.uint8), ".png"))
    rgb, digest = read_image(p)
    assert rgb.shape == (10, 12, 3) and len(digest) == 64
    ga = np.dstack([np.full((9, 11), 50, np.uint8), np.full((9, 11), 255, np.uint8)])
    assert decode_image(raw_png(ga, color_type=4))[0, 0].tolist() == [50, 50, 50]


def test_read_image_refuses_huge_files(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(b"\xff\xd8\xff" + b"\0" * 2000)
    with pytest.raises(ImageError, match="file too large"):
        read_image(p, max_bytes=1000)


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
