"""Zero-downtime reindex: copy an index into its next version, verify it, swap the alias, keep the old one.

The server has no ``_reindex`` module, so the copy is a scan (with vectors) plus
bulk writes into the new concrete index. Steps:

1. create ``<alias>-NNNNNN+1`` with the current mapping and refresh off;
2. scan the current index and write every document into the new one; videos
   keep their stored ``text_embedding`` unless it was made by another model
   than the configured one (or ``re_embed`` is set), so no text is embedded again;
3. catch up: documents whose change time (``updated_at`` for videos and users,
   ``ingested_at`` for events) is at or after the scan's start minus a margin are
   copied again, repeated until a pass copies nothing;
4. verify: equal document counts and, for videos, a sample of kNN queries that
   each return hits;
5. swap the alias in one ``update_aliases`` call (remove from old, add to new
   with ``is_write_index``), then copy once more what changed in the old index
   between the last catch-up and the swap, without overwriting newer documents.

Writes during a reindex go through the alias to the old index until the swap
and to the new one after it; steps 3 and 5 carry the old index's writes over.
Reads never stop because the alias always points at a complete index.
NOTE: a delete in the old index during the copy (``DELETE /v1/users``) is not
carried over; delete the user again after the reindex.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from app.settings import Settings
from indexing.bulk_load import bulk_write
from indexing.indices import INDEX_NAMES, all_versions, concrete_indices, create_index, next_version
from indexing.records import format_ts

logger = logging.getLogger(__name__)

CHANGE_FIELD = {"videos": "updated_at", "users": "updated_at", "watch-events": "ingested_at",
                "impressions": "ingested_at", "search-queries": "ingested_at"}
# Clock margin for the catch-up: documents changed up to this long before the scan started are copied again.
CATCH_UP_MARGIN_MS = 5_000
MAX_CATCH_UP_PASSES = 5
KNN_SAMPLE = 5


class ReindexError(RuntimeError):
    """The reindex cannot proceed or its check failed; the message names the index and the cause."""


@dataclass
class ReindexResult:
    alias: str
    old_index: str
    new_index: str
    documents: int
    recopied: int
    embedded: int
    seconds: float


def _current_index(client: Elasticsearch, alias: str) -> str:
    indices = concrete_indices(client, alias)
    if len(indices) != 1:
        raise ReindexError(f"alias {alias} points at {indices or 'no index'}; expected exactly one index. "
                           "Run `vidrec indices create` first, or fix the alias by hand")
    return indices[0]


class _VectorPolicy:
    """Decide per video whether the stored vector is reused or the text is embedded again."""

    def __init__(self, settings: Settings, re_embed: bool):
        self.settings = settings
        self.re_embed = re_embed
        self.embedder = None
        self.embedded = 0

    def fix(self, documents: list[dict[str, Any]]) -> None:
        from indexing.embed import text_hash, video_text

        stale = [doc for doc in documents
                 if self.re_embed or not doc.get("text_embedding")
                 or doc.get("embedding_model") != self.settings.embedding_model]
        if not stale:
            return
        if self.embedder is None:
            from indexing.embed import Embedder

            self.embedder = Embedder(self.settings, show_progress=False)
        texts = [video_text(doc.get("title"), doc.get("tags"), doc.get("description"),
                            self.settings.embedding_max_chars) for doc in stale]
        vectors = self.embedder.encode(texts)
        for doc, text, vector in zip(stale, texts, vectors):
            doc.update({"text_embedding": vector.tolist(), "embedding_model": self.embedder.model_name,
                        "text_hash": text_hash(self.embedder.model_name, text)})
        self.embedded += len(stale)


def _copy(client: Elasticsearch, settings: Settings, name: str, source: str, target: str,
          query: dict[str, Any], policy: _VectorPolicy | None, op_type: str, show_progress: bool,
          description: str, seen: dict[str, Any] | None = None) -> int:
    """Copy the documents of ``source`` matching ``query`` into ``target``; return how many were written.

    ``seen`` maps each copied id to its change time; a document whose id and change time
    are already in it is skipped, so catch-up passes copy only what changed since.
    """
    field = CHANGE_FIELD[name]

    def actions() -> Iterator[dict[str, Any]]:
        batch: list[tuple[str, dict[str, Any]]] = []

        def flush() -> Iterator[dict[str, Any]]:
            if policy is not None:
                policy.fix([doc for _, doc in batch])
            for doc_id, doc in batch:
                yield {"_op_type": op_type, "_index": target, "_id": doc_id, "_source": doc}

        for hit in scan(client, index=source, query={"query": query}, size=1000,
                        source_exclude_vectors=False, preserve_order=False):
            if seen is not None:
                changed_at = hit["_source"].get(field)
                if hit["_id"] in seen and seen[hit["_id"]] == changed_at:
                    continue
                seen[hit["_id"]] = changed_at
            batch.append((hit["_id"], hit["_source"]))
            if len(batch) >= 500:
                yield from flush()
                batch = []
        if batch:
            yield from flush()

    result = bulk_write(client, actions(), settings, description=description, show_progress=show_progress,
                        require_alias=False)
    conflicts_expected = op_type == "create"
    if result.failed:
        raise ReindexError(f"copying {source} into {target} failed for {result.failed} documents; first: "
                           f"{result.failures[0] if result.failures else 'unknown'}")
    logger.debug("%s: %d written, %d existing%s", description, result.written, result.duplicates,
                 " (kept)" if conflicts_expected else "")
    return result.written


def _changed_since(name: str, since_ms: int) -> dict[str, Any]:
    return {"range": {CHANGE_FIELD[name]: {"gte": format_ts(max(0, since_ms - CATCH_UP_MARGIN_MS))}}}


def _verify(client: Elasticsearch, name: str, old: str, new: str) -> None:
    client.indices.refresh(index=[old, new])
    old_count = int(client.count(index=old).body["count"])
    new_count = int(client.count(index=new).body["count"])
    if old_count != new_count:
        raise ReindexError(f"{new} contains {new_count} documents but {old} contains {old_count}, so the alias "
                           f"was not swapped and {new} was deleted")
    if name != "videos" or new_count == 0:
        return
    sample = client.search(index=new, size=KNN_SAMPLE, query={"exists": {"field": "text_embedding"}},
                           source_includes=["text_embedding"], source_exclude_vectors=False).body["hits"]["hits"]
    for hit in sample:
        response = client.search(index=new, size=3, knn={"field": "text_embedding", "k": 3, "num_candidates": 20,
                                                          "query_vector": hit["_source"]["text_embedding"]})
        if not response.body["hits"]["hits"]:
            raise ReindexError(f"kNN check on {new} returned no hits for the vector of video {hit['_id']}; "
                               "the alias was not swapped")


def reindex(client: Elasticsearch, settings: Settings, name: str, re_embed: bool = False,
            show_progress: bool = True, on_copied: Callable[[], None] | None = None) -> ReindexResult:
    """Rebuild logical index ``name`` into its next version and swap the alias; keep the old version.

    ``on_copied`` runs after the first full copy and before the catch-up (tests use it to
    write during a reindex). Raises ReindexError, with the new index deleted, when the
    copy or the check fails.
    """
    if name not in INDEX_NAMES:
        raise ValueError(f"unknown index {name!r}; expected one of {', '.join(INDEX_NAMES)}")
    started = time.perf_counter()
    alias = settings.alias(name)
    old = _current_index(client, alias)
    new = next_version(client, alias)
    create_index(client, name, settings, new, alias=None)
    client.indices.put_settings(index=new, settings={"index": {"refresh_interval": "-1"}})
    policy = _VectorPolicy(settings, re_embed) if name == "videos" else None
    logger.info("reindex %s: copying %s into %s", alias, old, new)

    try:
        scan_started_ms = int(time.time() * 1000)
        seen: dict[str, Any] = {}
        documents = _copy(client, settings, name, old, new, {"match_all": {}}, policy, "index", show_progress,
                          f"copy {old}", seen)
        if on_copied is not None:
            on_copied()

        recopied = 0
        since_ms = scan_started_ms
        for _ in range(MAX_CATCH_UP_PASSES):
            pass_started_ms = int(time.time() * 1000)
            client.indices.refresh(index=old)
            copied = _copy(client, settings, name, old, new, _changed_since(name, since_ms), policy, "index",
                           False, f"catch up {old}", seen)
            recopied += copied
            since_ms = pass_started_ms
            if copied == 0:
                break
        client.indices.put_settings(index=new, settings={"index": {"refresh_interval": None}})
        _verify(client, name, old, new)
    except Exception:
        client.indices.delete(index=new, ignore_unavailable=True)
        raise

    client.indices.update_aliases(actions=[
        {"remove": {"index": old, "alias": alias}},
        {"add": {"index": new, "alias": alias, "is_write_index": True}},
    ])
    logger.info("reindex %s: alias moved from %s to %s", alias, old, new)

    # Writes that reached the old index between the last catch-up and the swap. Events are
    # immutable (create keeps an existing copy); videos and users are copied only when the new
    # index has no newer version.
    client.indices.refresh(index=old)
    recopied += _copy_newer(client, settings, name, old, new, since_ms, policy, seen)
    return ReindexResult(alias, old, new, documents, recopied, policy.embedded if policy else 0,
                         time.perf_counter() - started)


def _copy_newer(client: Elasticsearch, settings: Settings, name: str, old: str, new: str, since_ms: int,
                policy: _VectorPolicy | None, seen: dict[str, Any]) -> int:
    if CHANGE_FIELD[name] == "ingested_at":
        return _copy(client, settings, name, old, new, _changed_since(name, since_ms), None, "create", False,
                     f"final catch up {old}", seen)
    field = CHANGE_FIELD[name]
    hits = [hit for hit in scan(client, index=old, query={"query": _changed_since(name, since_ms)}, size=1000,
                                source_exclude_vectors=False)
            if seen.get(hit["_id"], object()) != hit["_source"].get(field)]
    if not hits:
        return 0
    current = client.mget(index=new, ids=[hit["_id"] for hit in hits], source_includes=[field]).body["docs"]
    newer = [hit for hit, doc in zip(hits, current)
             if not doc.get("found") or (doc["_source"].get(field) or "") < (hit["_source"].get(field) or "")]
    if policy is not None:
        policy.fix([hit["_source"] for hit in newer])
    actions = ({"_op_type": "index", "_index": new, "_id": hit["_id"], "_source": hit["_source"]} for hit in newer)
    return bulk_write(client, actions, settings, description=f"final catch up {old}", show_progress=False,
                      require_alias=False).written


def rollback(client: Elasticsearch, settings: Settings, name: str) -> tuple[str, str]:
    """Point the alias of ``name`` back at the previous version; return (from index, to index).

    NOTE: writes that reached the newer index after the swap are not in the older one;
    reindex again (forward) to carry them over before deleting either version.
    """
    if name not in INDEX_NAMES:
        raise ValueError(f"unknown index {name!r}; expected one of {', '.join(INDEX_NAMES)}")
    alias = settings.alias(name)
    current = _current_index(client, alias)
    older = [index for index in all_versions(client, alias) if index < current]
    if not older:
        raise ReindexError(f"{alias} has no version older than {current} to roll back to")
    previous = older[-1]
    client.indices.update_aliases(actions=[
        {"remove": {"index": current, "alias": alias}},
        {"add": {"index": previous, "alias": alias, "is_write_index": True}},
    ])
    logger.info("rollback %s: alias moved from %s to %s", alias, current, previous)
    return current, previous
