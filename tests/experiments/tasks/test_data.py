"""Data loading: torchvision MNIST-format sets as tensors, read-only data dirs, errors; graphs."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

from torchopt_survey.experiments import cli
from torchopt_survey.experiments.tasks.data import (
    DataError,
    load_graph,
    load_image_dataset,
    write_synthetic_mnist,
)
from torchopt_survey.experiments.tasks.karate import roc_auc, split_edges

SHARED = os.environ.get("TORCHOPT_SURVEY_DATA")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHOPT_SURVEY_CACHE", str(cache))
    monkeypatch.delenv("TORCHOPT_SURVEY_DATA", raising=False)
    return cache


def _snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*")}


def test_synthetic_idx_loads_through_torchvision(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data", n_train=50, n_test=20)
    before = _snapshot(root)
    d = load_image_dataset("mnist", root, "cpu")
    assert d.x_train.shape == (50, 784) and d.x_test.shape == (20, 784)
    assert d.x_train.dtype == torch.float32 and 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert d.y_train.dtype == torch.int64 and int(d.y_train.max()) <= 9
    assert _snapshot(root) == before  # read in place, nothing written
    sub = load_image_dataset("mnist", root, "cpu", train_subset=10, test_subset=5)
    assert torch.equal(sub.x_train, d.x_train[:10]) and sub.y_test.shape == (5,)


def test_other_mnist_format_datasets(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data", n_train=30, n_test=10, name="FashionMNIST")
    d = load_image_dataset("fashionmnist", root, "cpu")
    assert d.name == "FashionMNIST" and d.x_train.shape == (30, 784)
    with pytest.raises(DataError, match="KMNIST"):
        load_image_dataset("kmnist", root, "cpu")


@pytest.mark.skipif(
    not (SHARED and (Path(SHARED) / "MNIST" / "raw").is_dir()), reason="no shared MNIST copy"
)
def test_shared_gz_copy_is_read_only(_private_cache: Path) -> None:
    root = Path(SHARED)  # type: ignore[arg-type]
    before = _snapshot(root)
    d = load_image_dataset("mnist", root, "cpu", train_subset=1000, test_subset=500)
    assert d.x_train.shape == (1000, 784) and d.x_test.shape == (500, 784)
    assert _snapshot(root) == before
    # decompressed into the private cache, never beside the originals
    assert (_private_cache / "datasets" / "decompressed" / "MNIST" / "raw").is_dir()


def test_corrupt_gz_is_rejected_by_md5(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        with gzip.open(raw / f"{name}.gz", "wb") as fh:
            fh.write(b"not mnist")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is corrupt"):
        load_image_dataset("mnist", tmp_path / "data", "cpu")


def test_truncated_idx_names_the_file(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data", n_train=40, n_test=10)
    f = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(DataError, match="MNIST"):
        load_image_dataset("mnist", root, "cpu")


def test_cli_missing_data_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    logdir = tmp_path / "runs"
    code = cli.main(["mnist", "--data-dir", str(empty), "--logdir", str(logdir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "train-images-idx3-ubyte.gz" in err and "--data-dir" in err
    assert not logdir.exists()  # no partial result files


def test_karate_split_and_negatives() -> None:
    g = load_graph(None)
    assert g.num_nodes == 34 and g.edge_index.shape[1] == 156  # 78 undirected edges
    a = split_edges(g, 0, 0.1, 0.2)
    b = split_edges(g, 0, 0.1, 0.2)
    c = split_edges(g, 1, 0.1, 0.2)
    test_a = a[2].edge_label_index
    assert torch.equal(test_a, b[2].edge_label_index)  # fixed seed -> same split
    assert not torch.equal(test_a, c[2].edge_label_index)  # other seed -> other split
    assert int(a[2].edge_label.sum()) == 15 and a[2].edge_label.numel() == 30


def test_edge_list_parsing(tmp_path: Path) -> None:
    good = tmp_path / "g.txt"
    lines = ["# ring with chords"] + [f"{i} {(i + 1) % 20}" for i in range(20)]
    lines += [f"{i},{(i + 5) % 20}" for i in range(0, 20, 2)]
    good.write_text("\n".join(lines) + "\n")
    g = load_graph(good)
    assert g.num_nodes == 20 and g.edge_index.shape[1] == 60
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1\n1 2\n2 x\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: node ids must be"):
        load_graph(bad)
    bad.write_text("0 1\n1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected two node ids"):
        load_graph(bad)


def test_cli_edge_list_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1\nfoo\n")
    code = cli.main(["karate", "--edge-list", str(bad), "--logdir", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "bad.txt:2" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_roc_auc() -> None:
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert roc_auc(torch.tensor([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.2, 0.5, 0.1]), labels) == 0.625  # one tie counts 1/2


def test_no_stray_files_left_by_synthetic_writer(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "d", n_train=5, n_test=5)
    names = sorted(p.name for p in (root / "MNIST" / "raw").iterdir())
    assert names == sorted(["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                            "train-images-idx3-ubyte", "train-labels-idx1-ubyte"])  # fmt: skip
    shutil.rmtree(root)
