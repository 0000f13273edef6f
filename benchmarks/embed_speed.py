"""Throughput of `lympho embed` (crops/s) on CPU and, when there is one, on a CUDA GPU.

    python benchmarks/embed_speed.py --data ../shared/data/lymphocytosis/trainset
    python benchmarks/embed_speed.py --synthetic 8192 --devices cuda,cpu     # no real data at hand
    bash benchmarks/embed_speed_gpu.sh                                        # on the GPU machine

For each device it prints three rates: the whole command (decode, segment,
centre, network, Parquet shards), the crop loader alone (decode + segment +
centre in DataLoader workers) and the network alone (random uint8 batches
already in memory), so the slower of loader and network says what limits the
whole. It then prints a checksum of the embeddings of the crops every device
embedded, and, with two devices, how far the GPU (mixed precision) is from
the CPU (float32): maximum absolute difference and lowest cosine similarity.
The issue's target is >= 2,000 crops/s for the whole command on one H100.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.dataset import discover_patients  # noqa: E402
from lympho_features.embed import (  # noqa: E402
    Embedder,
    EmbedSettings,
    crop_loader,
    default_workers,
    embed,
    load_network,
    resolve_device,
)


def synthetic_folder(root: Path, n_crops: int, per_patient: int = 80, distinct: int = 96, seed: int = 0) -> Path:
    """A data folder of ``n_crops`` synthetic 224x224 crops (``distinct`` drawn ones, written cyclically)."""
    import cv2

    from lympho_features.synthetic import patient_crops

    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(distinct):
        crop = patient_crops(rng, tumoral=bool(i % 2), n=1, size=224)[0]
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        blobs.append(buf.tobytes())
    for j in range(n_crops):
        folder = root / f"S{j // per_patient:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{j % per_patient:06d}.jpg").write_bytes(blobs[j % distinct])
    return root


def patients_for(data: Path, n_crops: int) -> int:
    """How many patients (in sorted order) hold at least ``n_crops`` crops (all if fewer)."""
    total = 0
    patients = discover_patients(data)
    for k, images in enumerate(patients.values(), start=1):
        total += len(images)
        if total >= n_crops:
            return k
    return len(patients)


def loader_rate(data: Path, n_patients: int, batch_size: int, workers: int) -> float:
    patients = dict(list(discover_patients(data).items())[:n_patients])
    items = [(p, rel) for p, imgs in patients.items() for rel in imgs]
    t = time.perf_counter()
    n = 0
    for batch in crop_loader(data, items, EmbedSettings(), batch_size, workers):
        n += len(batch["index"])
    return n / (time.perf_counter() - t)


def network_rate(weights, device: str, batch_size: int, batches: int) -> float:
    import torch

    net, _ = load_network(weights)
    embedder = Embedder(net, device)
    x = torch.randint(0, 256, (batch_size, 224, 224, 3), dtype=torch.uint8)
    if embedder.cuda:
        x = x.pin_memory()
    for _ in range(2):  # warm-up (cudnn autotuning)
        embedder(x)
    t = time.perf_counter()
    for _ in range(batches):
        embedder(x)  # returns numpy: includes the device -> host copy and synchronisation
    return batches * batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--synthetic", type=int, default=0, help="Use this many synthetic crops instead of --data.")
    ap.add_argument("--weights", default="efficientnet-lite0")
    ap.add_argument("--devices", default="auto", help="Comma-separated: cpu, cuda; auto = cuda (if any) then cpu.")
    ap.add_argument("--crops-cpu", type=int, default=256, help="Crops embedded on the CPU.")
    ap.add_argument("--crops-cuda", type=int, default=8192, help="Crops embedded on the GPU.")
    ap.add_argument("--batch-cpu", type=int, default=32)
    ap.add_argument("--batch-cuda", type=int, default=256)
    ap.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: lympho's default per device).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="embed_speed_"))
    try:
        if args.synthetic:
            data = synthetic_folder(tmp / "data", args.synthetic)
        else:
            data = args.data
            if not data.is_dir():
                sys.exit(f"{data} not found: pass --data DIR or --synthetic N")
        if args.devices == "auto":
            devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
        else:
            devices = [resolve_device(d.strip()) for d in args.devices.split(",")]
        info = {
            "torch": torch.__version__,
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "data": "synthetic" if args.synthetic else str(data),
            "weights": args.weights,
        }
        print(" ".join(f"{k}={v}" for k, v in info.items()))
        results, embeddings = [], {}
        for dev in devices:
            n_target = args.crops_cuda if dev == "cuda" else args.crops_cpu
            batch = args.batch_cuda if dev == "cuda" else args.batch_cpu
            workers = default_workers(dev) if args.workers < 0 else args.workers
            n_pat = patients_for(data, n_target)
            if dev == "cuda":  # warm-up run: CUDA context, cudnn autotuning, worker start-up paths
                embed(data, tmp / "warm", args.weights, dev, batch, workers, progress=False, limit=2)
            res = embed(data, tmp / f"out-{dev}", args.weights, dev, batch, workers, progress=False, limit=n_pat)
            loader = loader_rate(data, n_pat, batch, workers)
            network = network_rate(args.weights, dev, batch, batches=20 if dev == "cuda" else 3)
            import pandas as pd

            emb = pd.read_parquet(tmp / f"out-{dev}" / "embeddings.parquet")
            embeddings[dev] = emb
            results.append(
                {
                    "device": dev,
                    "crops": res.n_embedded,
                    "batch_size": batch,
                    "workers": workers,
                    "seconds": round(res.seconds, 2),
                    "crops_per_s": round(res.crops_per_second, 1),
                    "loader_crops_per_s": round(loader, 1),
                    "network_crops_per_s": round(network, 1),
                }
            )
        print()
        print(
            f"{'device':<6} {'crops':>6} {'batch':>5} {'workers':>7} {'seconds':>8} {'crops/s':>9} "
            f"{'loader/s':>9} {'network/s':>10}"
        )
        for r in results:
            print(
                f"{r['device']:<6} {r['crops']:>6} {r['batch_size']:>5} {r['workers']:>7} {r['seconds']:>8.2f} "
                f"{r['crops_per_s']:>9.1f} {r['loader_crops_per_s']:>9.1f} {r['network_crops_per_s']:>10.1f}"
            )
        # Checksums over the crops every device embedded.
        common = None
        for emb in embeddings.values():
            keys = set(zip(emb["patient_id"], emb["image"], strict=True))
            common = keys if common is None else common & keys
        common = sorted(common)
        cols = [c for c in next(iter(embeddings.values())).columns if c.startswith("cnn_")]
        mats = {}
        for dev, emb in embeddings.items():
            e = emb.set_index(["patient_id", "image"]).loc[common, cols].to_numpy(np.float64)
            mats[dev] = e
            print(
                f"checksum {dev}: {len(common)} crops x {len(cols)} dims, sum {e.sum():.6f}, "
                f"sum of squares {np.square(e).sum():.6f}, first crop sum {e[0].sum():.6f}"
            )
        comparison = None
        if "cpu" in mats and "cuda" in mats:
            a, b = mats["cpu"], mats["cuda"]
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            comparison = {"max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min())}
            print(
                f"cuda vs cpu: max |diff| {comparison['max_abs_diff']:.4g}, lowest cosine similarity "
                f"{comparison['min_cosine']:.6f} (mixed precision on CUDA)"
            )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"info": info, "results": results, "cuda_vs_cpu": comparison}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
