"""Seeded synthetic smears: crops that look like the challenge's, with ground truth.

Used by ``lympho demo`` and by the tests, which must not depend on the real
data. Each crop has a cream background, pale pink red cells with a paler
centre, and a central lymphocyte: a purple, textured nucleus inside pale blue
cytoplasm. The true nucleus and cell masks come with every crop.

Sizes are the real ones relative to the red cells: at the default 224 px a red
cell is about 46 px across (7.5 um, the challenge crops' canonical
0.1627 um/px), a lymphocyte's nucleus about 60 px (10 um, the trainset's median
nucleus area is about 80 um^2) and the cell about 72 px, with the nucleus
touching the outline on one side. Outlines are not perfect ellipses: red cells
press on a real lymphocyte and its nucleus is slightly irregular
(``roughness``), and the cytoplasm is faintly mottled. Drawn smaller or
smoother, the cells look to the cell-type gate (learned on real crops) like
erythroblasts or platelets.

Class-dependent morphology follows the textbook picture: tumoral (e.g. CLL)
lymphocytes are round, monomorphic, with a high N:C ratio and dense
chromatin; reactive ones are larger, more varied, with more cytoplasm. Tumoral
patients are older with higher lymphocyte counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ._lazy import pd

BACKGROUND = np.array([246, 224, 206], np.float32)
RED_CELL = np.array([222, 178, 186], np.float32)
CYTOPLASM = np.array([188, 178, 222], np.float32)
NUCLEUS = np.array([96, 52, 142], np.float32)


@dataclass
class SyntheticCrop:
    """One synthetic crop and its ground truth."""

    rgb: np.ndarray  # (H, W, 3) uint8
    nucleus_mask: np.ndarray  # bool
    cell_mask: np.ndarray  # bool, contains nucleus_mask


def _ellipse_mask(shape, centre, axes, angle) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(
        m,
        (int(round(centre[0])), int(round(centre[1]))),
        (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
        angle,
        0,
        360,
        1,
        -1,
    )
    return m.astype(bool)


def synthetic_crop(
    rng: np.random.Generator,
    size: int = 224,
    nucleus_radius: float = 30.0,
    cell_radius: float = 37.0,
    offset: tuple[float, float] = (0.0, 0.0),
    elongation: float = 1.1,
    pale_nucleus: bool = False,
    dark_cytoplasm: bool = False,
    pale_cytoplasm: bool = False,
    neighbour: bool = False,
    n_red_cells: int = 14,
    chromatin_contrast: float = 18.0,
    blur: float = 0.0,
    lobes: int = 1,
    smudge: bool = False,
    red_cell_colour: tuple[float, float, float] | None = None,
    red_cell_radius: tuple[float, float] = (21.0, 25.0),
    granules: float = 0.0,
    granule_colour: tuple[float, float, float] = (205, 95, 85),
    notch: float = 0.0,
    cytoplasm_colour: tuple[float, float, float] | None = None,
    nucleus_shift: float = 0.8,
    roughness: float = 0.04,
    cytoplasm_mottle: float = 5.0,
) -> SyntheticCrop:
    """Draw one crop with a central lymphocyte.

    Parameters
    ----------
    rng : numpy Generator
        Source of randomness (seed it for reproducibility).
    size : int
        Side of the square crop in pixels.
    nucleus_radius, cell_radius : float
        Mean radii of nucleus and whole cell (pixels for a 224 crop; scaled with ``size``).
    offset : (dx, dy)
        Displacement of the lymphocyte from the crop centre, in pixels.
    elongation : float
        Ratio of the nucleus' long to short axis.
    pale_nucleus, dark_cytoplasm : bool
        Harder cases: a lightly stained nucleus, a deeply basophilic cytoplasm.
    pale_cytoplasm : bool
        A cytoplasm so thin that it is barely stained (less than the red cells), but blue.
    neighbour : bool
        Put a second lymphocyte touching the central one.
    chromatin_contrast : float
        Amplitude of the nucleus' texture (clumped chromatin is higher).
    blur : float
        Extra Gaussian blur (sigma, pixels) of the whole crop: an out-of-focus image.
    lobes : int
        Above 1, draw a granulocyte: a nucleus of this many lobes joined by thin strands.
    smudge : bool
        Draw a smudge cell: a pale nucleus with no cytoplasm (use with ``pale_nucleus``).
    red_cell_colour : (r, g, b), optional
        Mean colour of the red cells (default :data:`RED_CELL`, pink; real smears are often mauve).
    red_cell_radius : (low, high)
        Range of the red cells' radii (pixels for a 224 crop; scaled with ``size``). The default puts them at
        the challenge crops' 46 px diameter, so that the red-cell ruler (:mod:`lympho_features.scale`) reads a
        224 crop at the canonical scale.
    granules : float
        Share of the cytoplasm covered by small dark granules (0: clear cytoplasm, as a lymphocyte's; an
        eosinophil's orange granules fill it, about 0.35).
    granule_colour : (r, g, b)
        Colour of the granules (default orange-red, eosinophilic; lilac for a neutrophil, dark purple for a
        basophil).
    notch : float
        Depth of a notch cut into the nucleus, as a fraction of its radius (a monocyte's kidney-shaped nucleus
        is about 0.6).
    cytoplasm_colour : (r, g, b), optional
        Colour of the cytoplasm (default :data:`CYTOPLASM`, pale blue; a monocyte's is grey-blue).
    nucleus_shift : float
        How far the nucleus sits off the cell's centre, as a fraction of the cytoplasm rim (1: it touches the
        outline on one side, as in most real lymphocytes).
    roughness : float
        Relative amplitude of the smooth bumps of the cell's and the nucleus' outlines (0: perfect ellipses).
    cytoplasm_mottle : float
        Standard deviation (grey levels) of the cytoplasm's faint, fine mottling (0: flat colour).
    """
    k = size / 224.0
    shape = (size, size)
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND + rng.normal(0, 2.0, 3)
    cx, cy = (size - 1) / 2 + offset[0] * k, (size - 1) / 2 + offset[1] * k
    rn, rc = nucleus_radius * k, max(cell_radius, nucleus_radius * 1.02) * k
    cell, nucleus = _lymphocyte_masks(
        rng, shape, k, (cx, cy), rn, rc, elongation, lobes, notch, nucleus_shift, roughness
    )
    if smudge:
        # A broken cell: the nucleus spread flat, no cytoplasm left around it.
        cell = nucleus.copy()
    _draw_red_cells(rng, img, cell, n_red_cells, k, red_cell_colour, red_cell_radius)
    if neighbour:
        _draw_neighbour(rng, img, (cx, cy), rn, rc, cell)
    _paint_cytoplasm(rng, img, cell, cytoplasm_colour, dark_cytoplasm, pale_cytoplasm)
    if cytoplasm_mottle > 0:
        # Real cytoplasm is never flat: fine, faint darker and lighter spots (ribosomes, a few azurophil granules).
        mottle = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 0.8 * k)
        img[cell] += (mottle / (mottle.std() + 1e-6) * cytoplasm_mottle)[cell][:, None]
    if granules > 0:
        _draw_granules(rng, img, cell & ~nucleus, granules, granule_colour, k)
    _paint_nucleus(rng, img, nucleus, k, chromatin_contrast, pale_nucleus, smudge)
    img = cv2.GaussianBlur(img, (0, 0), 0.5 + blur)
    img += rng.normal(0, 2.5, img.shape).astype(np.float32)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return SyntheticCrop(rgb, nucleus, cell)


def _paint_cytoplasm(rng, img: np.ndarray, cell: np.ndarray, colour, dark: bool, pale: bool) -> None:
    """The cell's cytoplasm on ``img``: pale blue (or ``colour``), deeply basophilic when ``dark``, faint when ``pale``."""
    base = CYTOPLASM if colour is None else np.asarray(colour, np.float32)
    cyto_colour = base * (0.78 if dark else 1.0) + rng.normal(0, 3, 3)
    if dark:
        cyto_colour = cyto_colour + np.array([-25, -10, 0])
    if pale:
        cyto_colour = cyto_colour * 0.4 + BACKGROUND * 0.6
    img[cell] = cyto_colour


def _paint_nucleus(rng, img: np.ndarray, nucleus: np.ndarray, k: float, contrast: float, pale: bool, smudge: bool):
    """The nucleus on ``img``: purple with chromatin texture, lighter when ``pale``, washed out when a smudge."""
    nuc_colour = NUCLEUS + rng.normal(0, 4, 3)
    if pale:
        nuc_colour = nuc_colour * 0.55 + np.array([150, 130, 190]) * 0.45
    if smudge:
        nuc_colour = nuc_colour * 0.45 + np.array([170, 150, 200]) * 0.55
    img[nucleus] = nuc_colour + _chromatin(rng, img.shape[:2], k, contrast)[nucleus][:, None]


def _irregular_mask(rng, shape, centre, axes, angle: float, roughness: float) -> np.ndarray:
    """An ellipse whose radius is modulated by a few smooth bumps (harmonics 2 to 6, of relative amplitude
    ``roughness`` falling as 1/harmonic), as a cell pressed by its neighbours: a plain ellipse at 0."""
    if roughness <= 0:
        return _ellipse_mask(shape, centre, axes, angle)
    t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    harmonics = np.arange(2, 7)
    amps = roughness * rng.normal(1.0, 0.3, harmonics.size) * 2.0 / harmonics
    phases = rng.uniform(0, 2 * np.pi, harmonics.size)
    bump = 1.0 + (amps[:, None] * np.cos(harmonics[:, None] * t + phases[:, None])).sum(0)
    a = np.deg2rad(angle)
    x, y = axes[0] * np.cos(t) * bump, axes[1] * np.sin(t) * bump
    pts = np.stack([centre[0] + x * np.cos(a) - y * np.sin(a), centre[1] + x * np.sin(a) + y * np.cos(a)], 1)
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def _lymphocyte_masks(
    rng,
    shape,
    k: float,
    centre,
    rn: float,
    rc: float,
    elongation: float,
    lobes: int,
    notch=0.0,
    nucleus_shift=0.8,
    roughness=0.0,
):
    """Masks ``(cell, nucleus)`` of the central cell: a cell, its nucleus eccentric in it (or lobed)."""
    cx, cy = centre
    angle = float(rng.uniform(0, 180))
    cell = _irregular_mask(rng, shape, (cx, cy), (rc * 1.05, rc / 1.05), angle, roughness)
    # Nucleus eccentric within its cell, as in real lymphocytes.
    shift = (rc - rn) * nucleus_shift
    th = rng.uniform(0, 2 * np.pi)
    ncx, ncy = cx + shift * np.cos(th), cy + shift * np.sin(th)
    if lobes > 1:
        # Granulocyte: small lobes on an arc, joined by thin strands.
        nucleus = np.zeros(shape, bool)
        rl = rn * 0.42
        phis = np.linspace(0, 1.3 * np.pi, lobes) + rng.uniform(0, 2 * np.pi)
        pts = [(cx + rn * 0.75 * np.cos(p), cy + rn * 0.75 * np.sin(p)) for p in phis]
        for p in pts:
            nucleus |= _ellipse_mask(shape, p, (rl, rl * 0.85), float(rng.uniform(0, 180)))
        strands = np.zeros(shape, np.uint8)
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            cv2.line(strands, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 1, max(2, int(round(4 * k))))
        nucleus = (nucleus | strands.astype(bool)) & cell
    else:
        axes = (rn * np.sqrt(elongation), rn / np.sqrt(elongation))
        nucleus = _irregular_mask(rng, shape, (ncx, ncy), axes, angle + rng.uniform(-30, 30), roughness * 0.6) & cell
    if notch > 0 and lobes <= 1:
        # Kidney shape: a disc bites into the nucleus from one side.
        phi = rng.uniform(0, 2 * np.pi)
        d = rn * (1.6 - notch)
        nucleus &= ~_ellipse_mask(shape, (ncx + d * np.cos(phi), ncy + d * np.sin(phi)), (rn * 0.7, rn * 0.7), 0)
    return cell, nucleus


def _draw_granules(rng, img: np.ndarray, cytoplasm: np.ndarray, granules: float, colour, k: float) -> None:
    """Granules on ``img``: specks of 1-2 pixels (0.2-0.3 um at the canonical scale) over a share of the cytoplasm."""
    specks = cv2.GaussianBlur(rng.random(cytoplasm.shape).astype(np.float32), (0, 0), 0.8 * k)
    cut = np.quantile(specks[cytoplasm], 1.0 - granules) if cytoplasm.any() else 1.0
    grain = cytoplasm & (specks > cut)
    img[grain] = np.asarray(colour, np.float32) + rng.normal(0, 6, (int(grain.sum()), 3))


def _draw_red_cells(
    rng, img: np.ndarray, cell: np.ndarray, n_red_cells: int, k: float, red_cell_colour, red_cell_radius=(21.0, 25.0)
) -> None:
    """Red cells on ``img``: discs with a paler centre, avoiding the lymphocyte (but they may touch it)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    occupied = cell.copy()
    for _ in range(n_red_cells):
        r = rng.uniform(*red_cell_radius) * k
        for _try in range(20):
            x, y = rng.uniform(-r, size + r), rng.uniform(-r, size + r)
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
            if not (disc & occupied).any():
                break
        else:
            continue
        d = np.sqrt((xx - x) ** 2 + (yy - y) ** 2) / r
        colour = (RED_CELL if red_cell_colour is None else np.asarray(red_cell_colour, np.float32)) + rng.normal(
            0, 4, 3
        )
        pale = np.clip(1 - d, 0, 1)[..., None] * 0.0 + (d < 0.45)[..., None] * 0.45
        img[disc] = (colour * (1 - pale) + BACKGROUND * pale)[disc]
        occupied |= disc


def _draw_neighbour(rng, img: np.ndarray, centre, rn: float, rc: float, cell: np.ndarray) -> None:
    """A second lymphocyte on ``img``, touching the central one on a random side."""
    cx, cy = centre
    shape = img.shape[:2]
    phi = rng.uniform(0, 2 * np.pi)
    d = rc * 2.0
    ox, oy = cx + d * np.cos(phi), cy + d * np.sin(phi)
    ncell = _ellipse_mask(shape, (ox, oy), (rc, rc), 0) & ~cell
    nnuc = _ellipse_mask(shape, (ox, oy), (rn * 0.9, rn * 0.9), 0) & ncell
    img[ncell] = CYTOPLASM
    img[nnuc] = NUCLEUS


def _chromatin(rng, shape, k: float, contrast: float) -> np.ndarray:
    """Texture of the nucleus: coarse clumps plus fine grain, as in real nuclei, of standard deviation ``contrast``."""
    coarse = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 1.5 * k)
    fine = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 0.6)
    texture = coarse / (coarse.std() + 1e-6) + 0.8 * fine / (fine.std() + 1e-6)
    return texture / (texture.std() + 1e-6) * contrast


#: Smallest nucleus radius (pixels of a 224 crop) :func:`patient_crops` draws: 8.3 um across.
MIN_LYMPHOCYTE_NUCLEUS_RADIUS = 25.5

#: The kinds of crop in :func:`varied_set`, each a set of :func:`synthetic_crop` arguments.
VARIED_CASES = (
    {},
    {"pale_nucleus": True},
    {"dark_cytoplasm": True},
    {"pale_cytoplasm": True, "nucleus_radius": 28, "cell_radius": 46},
    {"offset": (12.0, -10.0)},
    {"offset": (-9.0, 14.0), "elongation": 1.3},
    {"nucleus_radius": 26, "cell_radius": 30},
    {"nucleus_radius": 36, "cell_radius": 52},
    {"elongation": 1.5},
    {"neighbour": True},
    {"neighbour": True, "nucleus_radius": 27, "cell_radius": 33},
    {"chromatin_contrast": 22},
)


def varied_set(seed: int = 0, repeats: int = 2, size: int = 224) -> list[tuple[dict, SyntheticCrop]]:
    """A varied set of lymphocyte crops with their true masks, for segmentation tests.

    Every case of :data:`VARIED_CASES` (sizes, pale nuclei, dark cytoplasm,
    touching neighbours, off-centre cells) ``repeats`` times.

    Returns
    -------
    list of (case, SyntheticCrop)
    """
    rng = np.random.default_rng(seed)
    return [(case, synthetic_crop(rng, size, **case)) for _ in range(repeats) for case in VARIED_CASES]


def patient_crops(rng: np.random.Generator, tumoral: bool, n: int, size: int = 224) -> list[SyntheticCrop]:
    """The crops of one synthetic patient, with class-dependent morphology."""
    crops = []
    # Each patient has its own typical cell; tumoral clones vary less, with denser chromatin (the texture's
    # contrast stays within the trainset's range: 11-19 gives a nucleus' density spread of 0.15-0.26; denser,
    # a small round nucleus looks like an erythroblast's to the cell-type gate).
    # Nucleus radii in pixels of a 224 crop (0.163 um): 30 px is a nucleus of 9.8 um, 75 um^2; real nuclei are
    # slightly oval (the trainset's median eccentricity is 0.6).
    base_rn = rng.normal(30, 1.5) if tumoral else rng.normal(31, 2.0)
    for _ in range(n):
        if tumoral:
            rn = base_rn + rng.normal(0, 1.0)
            rc = rn * rng.uniform(1.1, 1.22)
            elong, contrast = rng.uniform(1.1, 1.35), rng.uniform(15, 19)
        else:
            rn = base_rn + rng.normal(0, 2.5)
            rc = rn * rng.uniform(1.2, 1.55)
            elong, contrast = rng.uniform(1.1, 1.5), rng.uniform(11, 16)
        # No nucleus under 8.3 um (54 um^2; the trainset's 10th percentile is 56 um^2): smaller round
        # nuclei are erythroblasts' and platelets' sizes.
        rn = max(rn, MIN_LYMPHOCYTE_NUCLEUS_RADIUS)
        crops.append(
            synthetic_crop(
                rng,
                size,
                rn,
                rc,
                offset=tuple(rng.normal(0, 4, 2)),
                elongation=elong,
                dark_cytoplasm=(not tumoral) and rng.random() < 0.2,
                chromatin_contrast=contrast,
            )
        )
    return crops


def _format_dob(rng: np.random.Generator, year: int) -> str:
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    # The formats seen in the real files.
    return f"{month}/{day}/{year}" if rng.random() < 0.7 else f"{day:02d}-{month:02d}-{year}"


def make_cohort(
    out_dir: str | Path,
    n_patients: int = 36,
    cells_per_patient: tuple[int, int] = (12, 24),
    seed: int = 0,
    size: int = 224,
    tumoral_fraction: float = 0.6,
    csv_name: str = "clinical.csv",
) -> pd.DataFrame:
    """Write a synthetic cohort in the challenge layout.

    ``out_dir/P<i>/<j>.jpg`` crops and ``out_dir/<csv_name>`` with columns
    ID, LABEL, GENDER, DOB, LYMPH_COUNT. Returns the clinical table written.
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_patients):
        tumoral = bool(rng.random() < tumoral_fraction)
        pid = f"P{i}"
        folder = out / pid
        folder.mkdir(exist_ok=True)
        n = int(rng.integers(cells_per_patient[0], cells_per_patient[1] + 1))
        for j, crop in enumerate(patient_crops(rng, tumoral, n, size)):
            cv2.imwrite(
                str(folder / f"{j:06d}.jpg"), cv2.cvtColor(crop.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
        age = rng.normal(70, 10) if tumoral else rng.normal(50, 18)
        count = np.exp(rng.normal(np.log(14), 0.6)) if tumoral else np.exp(rng.normal(np.log(5.5), 0.45))
        gender = rng.choice(["M", "F", "f"], p=[0.5, 0.4, 0.1])
        rows.append(
            {
                "ID": pid,
                "LABEL": int(tumoral),
                "GENDER": gender,
                "DOB": _format_dob(rng, int(2019 - np.clip(age, 18, 99))),
                "LYMPH_COUNT": round(float(count), 2),
            }
        )
    clinical = pd.DataFrame(rows)
    clinical.to_csv(out / csv_name, index=False)
    return clinical
