"""What the text models read of a text: its first ``MODEL_TEXT_CHARS`` characters.

The encoders read at most 256 (MiniLM) or 512 (e5) tokens, and a token spans at most a few dozen characters, so
nothing past the first 16,384 characters reaches an embedding; the TF-IDF words are counted over the same prefix.
Every text is clipped before any tokenizing or counting, in training and in serving alike, so that a 1 MiB text
costs what a 16 KiB one does and both see the same features.
"""

from __future__ import annotations

from collections.abc import Sequence

MODEL_TEXT_CHARS = 16_384  # 32 characters for each of e5's 512 tokens


def clip_texts(texts: Sequence[str | None]) -> list[str]:
    """``texts`` with each cut to its first MODEL_TEXT_CHARS characters (None as the empty text)."""
    return [t[:MODEL_TEXT_CHARS] if t else "" for t in texts]
