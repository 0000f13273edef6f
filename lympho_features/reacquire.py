"""Re-acquire a crop as another laboratory would: optics, focus, compression and stain.

A cell model trained at one hospital meets, at another, crops taken with other
optics (another magnification, so another pixel size), another focus, another
JPEG quality, a stronger or weaker stain, another camera gamma or white balance.
Each pure function below turns one RGB crop (``uint8``, ``H x W x 3``) into what
such a laboratory would have saved, so that a benchmark can ask "do the
measurements and calls stay put?" (``benchmarks/site_robustness.py``) and a model
can be trained on re-acquired copies of its training crops (augmentation).

Every function returns a new ``uint8`` RGB array and leaves its input alone; the
neutral value of each (``factor=1``, ``quality=None``, ``sigma=0``...) returns an
exact copy. A *shift* is a short text naming one or more of them,
``"mag:0.8"``, ``"jpeg:60"``, ``"blur:0.7"``, ``"hema:1.3"``, ``"eosin:0.7"``,
``"gamma:1.25"``, ``"wb:1.08/0.92"``, ``"magrt:0.8"`` (down and back to the same
pixel size), joined with ``+`` to chain them in the order written
(``"mag:0.8+jpeg:80"``); :func:`apply_shift` applies one, :func:`parse_shift`
checks one, :func:`random_shift` draws one within :data:`SHIFT_RANGES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import AcquisitionError

#: Stain vectors (optical density of unit concentration, R G B, normalised) of the two stains of a
#: May-Grunwald-Giemsa smear, measured on the shared trainset (median OD direction over 51 crops, one per
#: 190, of the purple nuclear pixels and of the stained pixels outside nuclei, nearly all red cells; spread
#: between crops 0.01-0.04 per component): the nuclear stain, which plays haematoxylin's part (azure /
#: methylene blue), and the red-cell stain, eosin's part. Ruifrok & Johnston's H&E vectors put these
#: lavender red cells almost wholly on haematoxylin, so "eosin" would have moved next to nothing. The two
#: directions are 12 degrees apart, so they only weigh each pixel's density (see :func:`stain_strength`).
_H = np.array([0.525, 0.823, 0.227])
_E = np.array([0.553, 0.726, 0.403])


def _stain_basis() -> np.ndarray:
    h = _H / np.linalg.norm(_H)
    e = _E / np.linalg.norm(_E)
    r = np.cross(h, e)
    return np.stack([h, e, r / np.linalg.norm(r)])  # rows: stains; OD = concentrations @ basis


STAIN_BASIS = _stain_basis()
_UNMIX = np.linalg.inv(STAIN_BASIS)

#: Ranges of the benchmark's target (issue 17): a new laboratory's acquisition lies within these.
SHIFT_RANGES = {
    "mag": (0.75, 1.6),
    "jpeg": (50, 95),
    "blur": (0.0, 1.0),
    "hema": (0.7, 1.3),
    "eosin": (0.7, 1.3),
    "gamma": (0.8, 1.25),
    "wb": (0.92, 1.08),
}


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise AcquisitionError(f"expected an RGB uint8 image (H x W x 3), got {rgb.dtype} {rgb.shape}")
    return rgb


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def magnify(rgb: np.ndarray, factor: float, keep_size: bool = True) -> np.ndarray:
    """The crop as optics of ``factor`` times the magnification would have imaged it.

    The cell spans ``factor`` times as many pixels: the image is resampled by
    ``factor`` (area averaging when shrinking, as a coarser sensor integrates
    light; bicubic interpolation when enlarging, which cannot invent detail
    the original did not record). With ``keep_size`` the result is cut or padded
    back to the input's size around its centre, as a laboratory crops a fixed
    number of pixels around each cell: padding mirrors the border (smear around
    the cell: red cells and glass), since the wider field was never recorded.

    Parameters
    ----------
    rgb : ndarray of uint8, (H, W, 3)
    factor : float
        Linear magnification relative to the input's (0.8: each pixel covers 1.25 times the length).
    keep_size : bool

    Returns
    -------
    ndarray of uint8
    """
    rgb = _check_rgb(rgb)
    if not (0.1 <= factor <= 10):
        raise AcquisitionError(f"magnification factor {factor} out of [0.1, 10]")
    if factor == 1:
        return rgb.copy()
    h, w = rgb.shape[:2]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    out = cv2.resize(rgb, (nw, nh), interpolation=interp)
    if not keep_size:
        return out
    if factor > 1:
        y0, x0 = (nh - h) // 2, (nw - w) // 2
        return np.ascontiguousarray(out[y0 : y0 + h, x0 : x0 + w])
    top, left = (h - nh) // 2, (w - nw) // 2
    return cv2.copyMakeBorder(out, top, h - nh - top, left, w - nw - left, cv2.BORDER_REFLECT_101)


def magnify_round_trip(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The crop imaged at ``factor`` times the magnification, then resampled back to the input's pixel size.

    What a pipeline that first brings every crop to one physical pixel size sees
    of a laboratory with other optics: the right scale, but the detail lost
    (``factor < 1``) or interpolated (``factor > 1``) on the way.
    """
    rgb = _check_rgb(rgb)
    if factor == 1:
        return rgb.copy()
    h, w = rgb.shape[:2]
    small = magnify(rgb, factor, keep_size=False)
    interp = cv2.INTER_AREA if factor > 1 else cv2.INTER_CUBIC
    return cv2.resize(small, (w, h), interpolation=interp)


def jpeg(rgb: np.ndarray, quality: int | None) -> np.ndarray:
    """The crop saved as a JPEG of ``quality`` (1-100, OpenCV's encoder, 4:2:0 chroma) and read back.

    ``None`` returns a copy (a lossless format). The 8x8-pixel blocks of the
    compression quantise fine texture and chroma: what a laboratory's camera or
    image archive does at its own quality setting.
    """
    rgb = _check_rgb(rgb)
    if quality is None:
        return rgb.copy()
    if not (1 <= quality <= 100):
        raise AcquisitionError(f"JPEG quality {quality} out of [1, 100]")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise AcquisitionError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Soft focus: a Gaussian blur of ``sigma`` pixels (0: a copy).

    A slightly defocused objective spreads each point over a small disc; a
    Gaussian of sigma 0.5-1 px is the mild, easily missed softness of another
    microscope or another focus, well inside what a technician accepts.
    """
    rgb = _check_rgb(rgb)
    if sigma < 0:
        raise AcquisitionError(f"blur sigma {sigma} is negative")
    if sigma == 0:
        return rgb.copy()
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT_101)


def _glass(rgb: np.ndarray) -> np.ndarray:
    """RGB of the crop's glass: the 95th percentile of each channel (every third pixel)."""
    sample = rgb[::3, ::3].reshape(-1, 3)
    return np.percentile(sample, 95, axis=0)


def stain_strength(
    rgb: np.ndarray, haematoxylin: float = 1.0, eosin: float = 1.0, glass: np.ndarray | None = None
) -> np.ndarray:
    """The crop as a smear stained ``haematoxylin`` / ``eosin`` times as strongly (colour unmixing, OD scaling).

    Optical density against the glass (``glass``: its RGB; by default the 95th
    percentile of each channel) is unmixed into the two stains
    (:data:`STAIN_BASIS`, measured on real smears) on a lightly smoothed copy
    (Gaussian, 1.5 px), which gives each pixel its share ``w`` of nuclear stain
    (0 to 1). Each pixel's optical density is then multiplied by
    ``w * haematoxylin + (1 - w) * eosin``: a nucleus darkens or pales with the
    nuclear stain, a red cell with the red-cell stain, the glass (OD 0) stays
    white, and hues are kept. The two stains' colours are only 12 degrees apart
    in these smears: unmixing each pixel on its own and rescaling the
    concentrations would multiply the pixel noise about fivefold (new fine
    texture no laboratory would record); scaling each pixel's own density by a
    smooth factor never raises its noise more than the factor does.

    Parameters
    ----------
    rgb : ndarray of uint8, (H, W, 3)
    haematoxylin, eosin : float
        Factors (1: unchanged; the benchmark's range is 0.7 to 1.3).
    glass : array of 3 floats, optional
    """
    rgb = _check_rgb(rgb)
    if haematoxylin <= 0 or eosin <= 0:
        raise AcquisitionError(f"stain factors must be positive, got {haematoxylin}, {eosin}")
    if haematoxylin == 1 and eosin == 1:
        return rgb.copy()
    ref = np.asarray(_glass(rgb) if glass is None else glass, float) + 1.0
    od = -np.log((rgb.astype(float) + 1.0) / ref)  # 0 on glass, negative where a pixel is brighter than it
    smooth = cv2.GaussianBlur(od.astype(np.float32), (0, 0), 1.5).reshape(-1, 3).astype(float)
    conc = np.clip(smooth @ _UNMIX, 0, None)
    share = conc[:, 0] / np.maximum(conc[:, 0] + conc[:, 1], 1e-6)  # nuclear stain's share; 0 on glass
    factor = share * haematoxylin + (1.0 - share) * eosin
    out = ref * np.exp(-od * factor.reshape(rgb.shape[:2] + (1,))) - 1.0
    return _to_u8(out)


def gamma(rgb: np.ndarray, g: float) -> np.ndarray:
    """The camera's tone curve: ``255 (I / 255) ** g`` per channel (1: a copy; above 1 darker mid-tones)."""
    rgb = _check_rgb(rgb)
    if g <= 0:
        raise AcquisitionError(f"gamma {g} must be positive")
    if g == 1:
        return rgb.copy()
    table = _to_u8(255.0 * (np.arange(256) / 255.0) ** g)
    return cv2.LUT(rgb, table)


def white_balance(rgb: np.ndarray, red: float = 1.0, blue: float = 1.0) -> np.ndarray:
    """Another white balance: red and blue channels times ``red`` and ``blue`` (green kept), clipped at 255.

    A warmer lamp or camera setting (``red > 1``, ``blue < 1``) or a cooler one.
    """
    rgb = _check_rgb(rgb)
    if red <= 0 or blue <= 0:
        raise AcquisitionError(f"white-balance gains must be positive, got {red}, {blue}")
    if red == 1 and blue == 1:
        return rgb.copy()
    out = rgb.astype(np.float32) * np.array([red, 1.0, blue], np.float32)
    return _to_u8(out)


@dataclass(frozen=True)
class Step:
    """One step of a shift: a function name of :data:`STEPS` and its values."""

    name: str
    values: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.name}:" + "/".join(f"{v:g}" for v in self.values)


def _apply_step(rgb: np.ndarray, step: Step) -> np.ndarray:
    v = step.values
    if step.name == "mag":
        return magnify(rgb, v[0])
    if step.name == "magrt":
        return magnify_round_trip(rgb, v[0])
    if step.name == "jpeg":
        return jpeg(rgb, int(v[0]))
    if step.name == "blur":
        return blur(rgb, v[0])
    if step.name == "hema":
        return stain_strength(rgb, haematoxylin=v[0])
    if step.name == "eosin":
        return stain_strength(rgb, eosin=v[0])
    if step.name == "gamma":
        return gamma(rgb, v[0])
    return white_balance(rgb, *v)  # "wb"


#: Step names and how many values each takes.
STEPS = {"mag": 1, "magrt": 1, "jpeg": 1, "blur": 1, "hema": 1, "eosin": 1, "gamma": 1, "wb": 2}


def parse_shift(text: str) -> tuple[Step, ...]:
    """The steps of a shift text (``"mag:0.8+jpeg:80"``); ``"none"`` or ``""`` is no step.

    Raises
    ------
    AcquisitionError
        Unknown step, wrong number of values, or a value that is not a number.
    """
    text = (text or "").strip()
    if text in ("", "none"):
        return ()
    steps = []
    for part in text.split("+"):
        name, sep, vals = part.strip().partition(":")
        if name not in STEPS or not sep:
            raise AcquisitionError(f"unknown shift step {part!r} (steps: {', '.join(f'{s}:VALUE' for s in STEPS)})")
        try:
            values = tuple(float(x) for x in vals.split("/"))
        except ValueError:
            raise AcquisitionError(f"shift step {part!r}: values must be numbers") from None
        if len(values) != STEPS[name] or not all(math.isfinite(x) for x in values):
            raise AcquisitionError(f"shift step {part!r}: {name} takes {STEPS[name]} finite value(s)")
        steps.append(Step(name, values))
    return tuple(steps)


def apply_shift(rgb: np.ndarray, shift: str | tuple[Step, ...]) -> np.ndarray:
    """Re-acquire ``rgb`` through every step of ``shift`` (a text for :func:`parse_shift`, or its steps), in order."""
    steps = parse_shift(shift) if isinstance(shift, str) else shift
    out = _check_rgb(rgb).copy()
    for step in steps:
        out = _apply_step(out, step)
    return out


def random_shift(rng: np.random.Generator, ranges: dict | None = None, p: float = 0.5) -> str:
    """A random laboratory within ``ranges`` (default :data:`SHIFT_RANGES`), as a shift text.

    Each kind of change is drawn with probability ``p`` (values uniform in
    their range; magnification log-uniform, the white balance's red and blue
    gains moving opposite ways as a colour temperature does), applied in
    the order of acquisition: optics (magnification, focus), stain, camera
    (white balance, gamma), then compression. Used for augmentation: the
    same generator state gives the same shift.
    """
    r = dict(SHIFT_RANGES if ranges is None else ranges)
    steps: list[str] = []

    def draw(name):
        return name in r and rng.random() < p

    if draw("mag"):
        lo, hi = r["mag"]
        steps.append(f"mag:{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3f}")
    if draw("blur"):
        steps.append(f"blur:{rng.uniform(*r['blur']):.2f}")
    if draw("hema"):
        steps.append(f"hema:{rng.uniform(*r['hema']):.3f}")
    if draw("eosin"):
        steps.append(f"eosin:{rng.uniform(*r['eosin']):.3f}")
    if draw("wb"):
        lo, hi = r["wb"]
        g = rng.uniform(lo, hi)
        steps.append(f"wb:{g:.3f}/{2 - g:.3f}")
    if draw("gamma"):
        lo, hi = r["gamma"]
        steps.append(f"gamma:{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3f}")
    if draw("jpeg"):
        lo, hi = r["jpeg"]
        steps.append(f"jpeg:{int(rng.integers(lo, hi + 1))}")
    return "+".join(steps) or "none"
