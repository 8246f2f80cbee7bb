"""Datasets as tensors: MNIST-format image sets via torchvision, graphs via PyG.

MNIST is read once through ``torchvision.datasets.MNIST`` (or FashionMNIST/KMNIST) and kept as
float tensors on the training device, so the training loop batches by indexing and never
decodes PIL images.

Data directories named by ``--data-dir`` / ``TORCHOPT_SURVEY_DATA`` are treated as read-only:
torchvision only reads uncompressed IDX files, so when such a directory holds just the ``.gz``
archives we check their MD5 against torchvision's own list and decompress them into a private
cache (``TORCHOPT_SURVEY_CACHE``, default ``~/.cache/torchopt_survey``), never next to the
originals. Without a data directory, torchvision downloads into that cache.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

DATA_ENV = "TORCHOPT_SURVEY_DATA"
CACHE_ENV = "TORCHOPT_SURVEY_CACHE"

# MNIST-format datasets by CLI name -> torchvision class name.
DATASETS: dict[str, str] = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "kmnist": "KMNIST"}


class DataError(RuntimeError):
    """Missing or corrupt data files; the message names the file and what to do."""


def _tv_class(name: str) -> type:
    import torchvision.datasets as tvd

    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return getattr(tvd, DATASETS[key])


def cache_dir() -> Path:
    """Writable cache root for downloads and decompressed copies."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "torchopt_survey"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``--data-dir`` wins over ``TORCHOPT_SURVEY_DATA``; ``None`` means download into the cache."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def _decompress_atomic(src: Path, dst: Path) -> None:
    """Decompress ``src`` (gzip) to ``dst`` via a temp file + rename, so a kill leaves no stub."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, length=1 << 20)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prepare_root(cls: type, data_dir: Path | None) -> tuple[Path, bool]:
    """Return (root for torchvision, download flag) without ever writing into ``data_dir``."""
    cache = cache_dir() / "datasets"
    if data_dir is None:
        return cache, True
    from torchvision.datasets.utils import check_integrity

    raw = data_dir / cls.__name__ / "raw"
    if not data_dir.is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist; point --data-dir or {DATA_ENV} at the "
            f"folder that contains {cls.__name__}/raw/, or unset both to download into {cache}"
        )
    names = [(fn, md5) for fn, md5 in cls.resources]
    # Uncompressed IDX files present: torchvision reads them in place (read-only).
    if all((raw / Path(fn).stem).is_file() for fn, _ in names):
        return data_dir, False
    dest = cache / "decompressed" / cls.__name__ / "raw"
    for fn, md5 in names:
        gz = raw / fn
        out = dest / Path(fn).stem
        if (raw / Path(fn).stem).is_file():
            # Mixed folder: copy the ready file so torchvision finds the whole set in one root.
            if not out.is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(raw / Path(fn).stem, out)
            continue
        if not gz.is_file():
            raise DataError(
                f"{cls.__name__} file not found: {gz} (nor its uncompressed {gz.with_suffix('')}); "
                f"point --data-dir or {DATA_ENV} at the folder that contains {cls.__name__}/raw/, "
                f"or unset both to download the dataset into {cache}"
            )
        if not check_integrity(str(gz), md5):
            raise DataError(
                f"{cls.__name__} file {gz} is corrupt (MD5 differs from torchvision's {md5}); "
                "replace it with a fresh copy or unset --data-dir to download it again"
            )
        if not out.is_file():
            _decompress_atomic(gz, out)
    return cache / "decompressed", False


@dataclass
class ImageData:
    """An MNIST-format dataset as flat float tensors on one device."""

    name: str
    x_train: torch.Tensor  # (N, 784) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return 10


def load_image_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> ImageData:
    """Load an MNIST-format dataset through torchvision as device tensors.

    ``train_subset``/``test_subset`` keep the first N examples (tests and smoke runs).
    Raises :class:`DataError` naming the file when data are missing or unreadable.
    """
    cls = _tv_class(name)
    root, download = _prepare_root(cls, resolve_data_dir(data_dir))
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except DataError:
            raise
        except Exception as exc:  # torchvision raises RuntimeError/URLError/AssertionError...
            raw = Path(root) / cls.__name__ / "raw"
            raise DataError(
                f"could not load {cls.__name__} ({'train' if train else 'test'} split) from {raw}: "
                f"{exc}; check the IDX files there or unset --data-dir/{DATA_ENV} to download"
            ) from exc
        x = ds.data
        y = ds.targets
        if x.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise DataError(
                f"{cls.__name__} files in {Path(root) / cls.__name__ / 'raw'} are inconsistent: "
                f"{tuple(x.shape)} images vs {tuple(y.shape)} labels"
            )
        limit = train_subset if train else test_subset
        if limit is not None:
            x, y = x[:limit], y[:limit]
        # Same scaling as transforms.ToTensor(): uint8 -> float in [0, 1].
        xf = x.reshape(x.shape[0], -1).to(device=device, dtype=torch.float32).div_(255.0)
        splits.append((xf.contiguous(), y.to(device=device, dtype=torch.long)))
    (xtr, ytr), (xte, yte) = splits
    return ImageData(cls.__name__, xtr, ytr, xte, yte)


def write_idx(path: str | os.PathLike[str], tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as an (uncompressed) IDX file, the format torchvision reads.

    Used by the tests to build a tiny MNIST stand-in when the real data are absent.
    """
    t = tensor.to(torch.uint8).contiguous()
    header = bytes([0, 0, 0x08, t.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in t.shape)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(header + t.numpy().tobytes())


# ----------------------------------------------------------------------------- graphs


def load_graph(edge_list: str | os.PathLike[str] | None = None):
    """Return a PyG ``Data`` with one-hot node features and an undirected ``edge_index``.

    ``None`` gives PyG's built-in Zachary Karate Club; otherwise ``edge_list`` is a text file with
    two integer node ids per line (``#`` comments and blank lines ignored).
    """
    from torch_geometric.data import Data
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

    if edge_list is None:
        from torch_geometric.datasets import KarateClub

        # an int index gives one graph; PyG's __getitem__ is typed for slices too
        data = cast(Data, KarateClub()[0])
        return Data(x=data.x, edge_index=data.edge_index, num_nodes=data.num_nodes)
    path = Path(edge_list)
    if not path.is_file():
        raise DataError(f"edge list file not found: {path}; pass a text file with two ids per line")
    pairs: list[tuple[int, int]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.replace(",", " ").split()
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{lineno}: expected two node ids per line, got {line.strip()!r}"
            )
        try:
            u, v = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(
                f"{path}:{lineno}: node ids must be non-negative integers, got {line.strip()!r}"
            ) from None
        if u < 0 or v < 0:
            raise ValueError(
                f"{path}:{lineno}: node ids must be non-negative, got {line.strip()!r}"
            )
        pairs.append((u, v))
    if not pairs:
        raise ValueError(f"{path}: no edges found")
    ei = torch.tensor(pairs, dtype=torch.long).t()
    n = int(ei.max()) + 1
    ei, _ = remove_self_loops(ei)
    ei = coalesce(to_undirected(ei, num_nodes=n), num_nodes=n)
    if ei.shape[1] < 20:
        raise ValueError(
            f"{path}: need at least 10 distinct undirected edges to split, got {ei.shape[1] // 2}"
        )
    return Data(x=torch.eye(n), edge_index=ei, num_nodes=n)


def write_synthetic_mnist(
    root: str | os.PathLike[str],
    n_train: int = 600,
    n_test: int = 200,
    seed: int = 0,
    name: str = "MNIST",
) -> Path:
    """Write a tiny, learnable MNIST stand-in (uncompressed IDX files) under ``root/name/raw``.

    Each class lights a different 7x7 block of the 28x28 image on top of noise, so a linear
    classifier can learn it in one epoch. For tests and smoke runs without the real data.
    """
    gen = torch.Generator().manual_seed(seed)
    raw = Path(root) / name / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = torch.randint(0, 60, (n, 28, 28), generator=gen)
        for k in range(10):
            r, c = divmod(k, 4)
            images[labels == k, r * 7 + 3 : r * 7 + 10, c * 7 : c * 7 + 7] += 180
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images.clamp_(0, 255))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)
