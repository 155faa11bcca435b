"""Datasets load through the real code path, from tiny files in torchvision's formats."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from dpresearch.data import DataError, PoissonSampling
from dpresearch.data.digits import DigitsDataModule
from dpresearch.data.mnist1d import MNIST1DDataModule
from dpresearch.data.vision import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root: Path, folder: str, n: int = 40, n_test: int = 10, gz: bool = False):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    xt, yt = rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)
    write_idx(raw / "train-images-idx3-ubyte", x, gz)
    write_idx(raw / "train-labels-idx1-ubyte", y, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", xt, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", yt, gz)
    return x, y, xt, yt


def make_cifar(root: Path, folder: str, train: list[str], test: list[str], key: bytes, k: int):
    d = root / folder
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    labels = {}
    for name in train + test:
        data = rng.integers(0, 256, (8, 3072), dtype=np.uint8)
        ys = rng.integers(0, k, 8).tolist()
        labels[name] = (data, ys)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, key: ys, b"batch_label": b"x"}, f)
    return labels


def module(cls, root: Path, **kw):
    dm = cls(data_dir=str(root), val_fraction=0.25, **kw)
    dm.attach_sampler(PoissonSampling(expected_batch_size=4), seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "cls,folder", [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]
)
def test_mnist_idx_files_load(tmp_path, cls, folder, gz) -> None:
    x, y, xt, yt = make_mnist(tmp_path, folder, gz=gz)
    dm = module(cls, tmp_path)
    assert dm.num_train + len(dm.val_set) == 40 and len(dm.test_set) == 10
    xb, yb = dm.test_set.__getitems__(list(range(10)))
    assert xb.shape == (10, 1, 28, 28) and xb.dtype == torch.float32
    assert torch.equal(yb, torch.tensor(yt))
    # Pixels are normalized from the stored bytes.
    mean, std = cls.mean[0], cls.std[0]
    torch.testing.assert_close(xb[3, 0], (torch.tensor(xt[3]).float() / 255 - mean) / std)


def test_cifar10_pickles_load(tmp_path) -> None:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    labels = make_cifar(tmp_path, "cifar-10-batches-py", train, ["test_batch"], b"labels", 10)
    dm = module(CIFAR10DataModule, tmp_path)
    assert dm.num_train + len(dm.val_set) == 40 and len(dm.test_set) == 8
    xb, yb = dm.test_set.__getitems__(list(range(8)))
    assert xb.shape == (8, 3, 32, 32)
    assert yb.tolist() == labels["test_batch"][1]
    raw = torch.tensor(labels["test_batch"][0][0].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(
        xb[0, 1], (raw[1] - CIFAR10DataModule.mean[1]) / CIFAR10DataModule.std[1]
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape[1:] == (3, 32, 32)


def test_cifar100_uses_fine_labels(tmp_path) -> None:
    labels = make_cifar(tmp_path, "cifar-100-python", ["train"], ["test"], b"fine_labels", 100)
    dm = module(CIFAR100DataModule, tmp_path)
    assert dm.test_set.y.tolist() == labels["test"][1]


def test_svhn_mat_files_load_with_label_10_as_0(tmp_path) -> None:
    rng = np.random.default_rng(2)
    for name, n in (("train_32x32.mat", 12), ("test_32x32.mat", 6)):
        y = rng.integers(1, 11, (n, 1))
        y[0] = 10
        savemat(
            tmp_path / name, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": y}
        )
    dm = module(SVHNDataModule, tmp_path)
    assert dm.test_set.x.shape == (6, 3, 32, 32)
    assert dm.test_set.y[0] == 0 and dm.test_set.y.max() <= 9


@pytest.mark.parametrize("cls", [MNISTDataModule, CIFAR10DataModule, SVHNDataModule])
def test_missing_files_offline_is_one_line_naming_folder_and_flag(tmp_path, cls) -> None:
    with pytest.raises(DataError) as err:
        module(cls, tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message
    assert str((tmp_path / "nowhere").resolve()) in message
    assert "dataset.download=true" in message


def test_download_failure_is_one_line(tmp_path, monkeypatch) -> None:
    """With download=true and no torchvision (or no network) the error stays one line."""
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(DataError) as err:
        module(CIFAR10DataModule, tmp_path, download=True)
    assert "\n" not in str(err.value) and "torchvision" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_digits_splits_are_fixed_by_seed_and_test_never_moves() -> None:
    dms = []
    for seed in (0, 0, 1):
        dm = DigitsDataModule(split_seed=seed)
        dm.attach_sampler(PoissonSampling(expected_batch_size=64), seed=0)
        dm.setup("fit")
        dms.append(dm)
    assert torch.equal(dms[0].val_set.x, dms[1].val_set.x)
    assert not torch.equal(dms[0].val_set.x, dms[2].val_set.x)
    assert torch.equal(dms[0].test_set.x, dms[2].test_set.x)  # test split independent of seed
    total = dms[0].num_train + len(dms[0].val_set) + len(dms[0].test_set)
    assert total == 1797


def test_mnist1d_is_generated_offline() -> None:
    dm = MNIST1DDataModule()
    dm.attach_sampler(PoissonSampling(expected_batch_size=64), seed=0)
    dm.setup("fit")
    assert dm.num_train + len(dm.val_set) == 4000 and len(dm.test_set) == 1000
    assert dm.train_set.x.shape[1:] == (1, 40)


def test_augmentation_keeps_shape_and_changes_images() -> None:
    dm = CIFAR10DataModule(data_dir="unused")
    x = torch.randn(16, 3, 32, 32)
    out = dm.augmentation(x)
    assert out.shape == x.shape and not torch.equal(out, x)


def test_damaged_image_files_are_refused_naming_them(tmp_path) -> None:
    make_mnist(tmp_path / "a", "MNIST", n=60)
    raw = tmp_path / "a" / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(50))  # 60 images, 50 labels
    with pytest.raises(DataError, match=r"training files hold 60 images but 50 labels"):
        module(MNISTDataModule, tmp_path / "a")
    make_mnist(tmp_path / "b", "MNIST")
    images = tmp_path / "b" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # cut short
    with pytest.raises(DataError, match=rf"{images} is truncated or damaged"):
        module(MNISTDataModule, tmp_path / "b")
    train = [f"data_batch_{i}" for i in range(1, 6)]
    make_cifar(tmp_path / "c", "cifar-10-batches-py", train, ["test_batch"], b"labels", 10)
    batch = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{batch} is truncated or damaged"):
        module(CIFAR10DataModule, tmp_path / "c")


@pytest.mark.parametrize("fraction", [-0.2, 0.0, 1.0])
def test_digits_test_fraction_must_leave_a_test_set(fraction) -> None:
    with pytest.raises(ValueError, match=r"dataset.test_fraction must be in \(0, 1\), got"):
        DigitsDataModule(test_fraction=fraction)
