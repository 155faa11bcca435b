"""Image datasets in torchvision's on-disk layout: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN.

Files are read directly in torchvision's formats (idx for MNIST, pickled batches for CIFAR,
.mat for SVHN) under ``data_dir``, so a folder torchvision downloaded works as is. Downloading
goes through torchvision (``download=true``, needs a network and ``pip install torchvision``);
reading does not need it. Missing files give one line naming the folder and the flag.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from dpresearch.data.base import ClassificationDataModule, DataError, normalizer


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format), optionally gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # type code 0x08 = unsigned byte
        raise DataError(f"{path} is not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    held, needed = len(data) - 4 - 4 * ndim, int(np.prod(shape))
    if held != needed:
        raise DataError(
            f"{path} is truncated or damaged: its header says {shape} ({needed} bytes) but it "
            f"holds {held}; download it again (dataset.download=true)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


class VisionDataModule(ClassificationDataModule):
    """Base for torchvision-layout datasets: ``data_dir`` and ``download`` as torchvision has."""

    tv_class: str  # torchvision.datasets class used to download
    mean: list[float]
    std: list[float]
    flip: bool = True

    def __init__(self, *args, data_dir: str = "data", download: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self._transform = normalizer(self.mean, self.std)

    def files_present(self) -> bool:
        raise NotImplementedError

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self._synthetic is not None or self.files_present():  # synthetic: nothing to read
            return
        where = self.data_dir.resolve()
        if not self.download:
            raise DataError(
                f"{self.name} not found in {where}; set dataset.download=true (needs a network) "
                f"or dataset.data_dir=<folder holding it>"
            )
        try:
            import torchvision.datasets as tvd
        except Exception as err:  # ImportError, or a torchvision built for another torch
            raise DataError(
                f"downloading {self.name} needs torchvision ({err}); pip install torchvision, "
                f"or put the files in {where} and set dataset.download=false"
            ) from None
        cls = getattr(tvd, self.tv_class)
        try:
            for split in self._download_splits():
                cls(str(self.data_dir), download=True, **split)
        except Exception as err:
            raise DataError(
                f"could not download {self.name} into {where} ({type(err).__name__}: {err}); "
                f"check the network, or put the files there and set dataset.download=false"
            ) from None

    def _download_splits(self) -> list[dict]:
        return [{"train": True}, {"train": False}]

    def load(self):
        self.prepare_data()
        x, y, x_test, y_test = self.read()
        for split, inputs, labels in (("training", x, y), ("test", x_test, y_test)):
            if len(inputs) != len(labels):
                raise DataError(
                    f"{self.name} in {self.data_dir.resolve()}: the {split} files hold "
                    f"{len(inputs)} images but {len(labels)} labels (truncated, or from "
                    "different versions); download them again (dataset.download=true)"
                )
            bad = [int(v) for v in np.unique(labels) if not 0 <= v < self.num_classes]
            if bad:
                raise DataError(
                    f"{self.name} in {self.data_dir.resolve()}: {split} labels {bad[:5]} are "
                    f"outside 0..{self.num_classes - 1}; the files are damaged"
                )
        return (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.asarray(y, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(x_test)),
            torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        )

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self._transform(x)

    def augmentation(self, x: torch.Tensor) -> torch.Tensor:
        """Random 4-pixel-padded crop (reflect) and, where it makes sense, horizontal flip."""
        n, _, h, w = x.shape
        if n == 0:
            return x
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
        dy = torch.randint(0, 9, (n,), device=x.device)
        dx = torch.randint(0, 9, (n,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
        if self.flip:
            flip = torch.rand(n, device=x.device) < 0.5
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return out


class MNISTDataModule(VisionDataModule):
    name = "mnist"
    tv_class = "MNIST"
    folder = "MNIST"
    num_classes = 10
    input_shape = (1, 28, 28)
    mean, std = [0.1307], [0.3081]
    flip = False

    def _raw(self) -> Path:
        return self.data_dir / self.folder / "raw"

    def _stems(self) -> list[str]:
        return [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]

    def files_present(self) -> bool:
        return all(_find(self._raw(), s) for s in self._stems())

    def read(self):
        x, y, xt, yt = (read_idx(_find(self._raw(), s)) for s in self._stems())
        return x[:, None], y, xt[:, None], yt


class FashionMNISTDataModule(MNISTDataModule):
    name = "fashion_mnist"
    tv_class = "FashionMNIST"
    folder = "FashionMNIST"
    mean, std = [0.2860], [0.3530]


class CIFAR10DataModule(VisionDataModule):
    name = "cifar10"
    tv_class = "CIFAR10"
    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    label_key = b"labels"
    num_classes = 10
    input_shape = (3, 32, 32)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]

    def files_present(self) -> bool:
        root = self.data_dir / self.folder
        return all((root / f).exists() for f in self.train_files + self.test_files)

    def _read_batches(self, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in files:
            path = self.data_dir / self.folder / name
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="bytes")
            except (pickle.UnpicklingError, EOFError, ValueError) as err:
                raise DataError(
                    f"{path} is truncated or damaged ({type(err).__name__}: {err}); "
                    "download it again (dataset.download=true)"
                ) from None
            xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry[self.label_key]))
        return np.concatenate(xs), np.concatenate(ys)

    def read(self):
        return (*self._read_batches(self.train_files), *self._read_batches(self.test_files))


class CIFAR100DataModule(CIFAR10DataModule):
    name = "cifar100"
    tv_class = "CIFAR100"
    folder = "cifar-100-python"
    train_files = ["train"]
    test_files = ["test"]
    label_key = b"fine_labels"
    num_classes = 100
    mean, std = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]


class SVHNDataModule(VisionDataModule):
    name = "svhn"
    tv_class = "SVHN"
    num_classes = 10
    input_shape = (3, 32, 32)
    mean, std = [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]
    flip = False  # digits are not mirror-symmetric

    def _download_splits(self) -> list[dict]:
        return [{"split": "train"}, {"split": "test"}]

    def files_present(self) -> bool:
        return all((self.data_dir / f).exists() for f in ("train_32x32.mat", "test_32x32.mat"))

    def _read_mat(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        from scipy.io import loadmat

        mat = loadmat(self.data_dir / name)
        x = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
        return x, y

    def read(self):
        return (*self._read_mat("train_32x32.mat"), *self._read_mat("test_32x32.mat"))
