"""Index lifecycle: versioned indices behind aliases (``vidrec-videos`` -> ``vidrec-videos-000001``).

Every logical index is created as ``<alias>-<6-digit version>`` with the alias
marked as its write index, so readers and writers only ever name the alias and
a reindex can swap it atomically.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

from app.settings import Settings

logger = logging.getLogger(__name__)

MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "mappings"
INDEX_NAMES = ("videos", "users", "watch-events", "impressions", "search-queries")
VERSION_PATTERN = re.compile(r"^(?P<alias>.+)-(?P<version>\d{6})$")


class IndexLifecycleError(RuntimeError):
    """An index lifecycle operation cannot proceed; the message names the index and the fix."""


@dataclass(frozen=True)
class IndexRow:
    alias: str
    index: str | None
    docs: int | None  # None while the index's primary shard is not started (node recovering)
    size_bytes: int | None


def load_mapping(name: str, settings: Settings) -> dict[str, Any]:
    """Return the settings+mappings body for logical index ``name`` with vector dimensions filled in."""
    if name not in INDEX_NAMES:
        raise ValueError(f"unknown index {name!r}; expected one of {', '.join(INDEX_NAMES)}")
    text = (MAPPINGS_DIR / f"{name}.json").read_text()
    text = text.replace('"__EMBEDDING_DIMS__"', str(settings.embedding_dims))
    text = text.replace('"__CF_DIMS__"', str(settings.cf_dims))
    return json.loads(text)


def versioned_name(alias: str, version: int) -> str:
    return f"{alias}-{version:06d}"


def concrete_indices(client: Elasticsearch, alias: str) -> list[str]:
    """Return the indices the alias points at (empty when the alias does not exist)."""
    try:
        return sorted(client.indices.get_alias(name=alias).body.keys())
    except NotFoundError:
        return []


def all_versions(client: Elasticsearch, alias: str) -> list[str]:
    """Return every ``<alias>-NNNNNN`` index, oldest first, whether or not the alias points at it."""
    try:
        found = client.indices.get(index=f"{alias}-*", expand_wildcards="open,closed").body.keys()
    except NotFoundError:
        return []
    return sorted(name for name in found if VERSION_PATTERN.match(name) and name.rsplit("-", 1)[0] == alias)


def next_version(client: Elasticsearch, alias: str) -> str:
    """Return the name of the next versioned index for ``alias``."""
    versions = all_versions(client, alias)
    last = int(versions[-1].rsplit("-", 1)[1]) if versions else 0
    return versioned_name(alias, last + 1)


def create_index(client: Elasticsearch, name: str, settings: Settings, index: str, alias: str | None) -> None:
    """Create the concrete ``index`` with the mapping of ``name``; attach ``alias`` as write alias if given."""
    body = copy.deepcopy(load_mapping(name, settings))
    aliases = {alias: {"is_write_index": True}} if alias else {}
    client.indices.create(index=index, settings=body["settings"], mappings=body["mappings"], aliases=aliases)


def ensure_index(client: Elasticsearch, name: str, settings: Settings) -> tuple[str, bool]:
    """Create ``name``'s first versioned index and alias unless the alias exists.

    Returns (concrete index, created). Raises IndexLifecycleError when a concrete index
    already holds the alias name, which would make the alias impossible.
    """
    alias = settings.alias(name)
    existing = concrete_indices(client, alias)
    if existing:
        return existing[0], False
    if client.indices.exists(index=alias):
        raise IndexLifecycleError(
            f"{alias} exists as a concrete index, not an alias, so vidrec cannot put its alias there. "
            f"It was probably created by a write before `vidrec indices create`; delete it "
            f"(DELETE /{alias}) or reindex its documents, then run `vidrec indices create` again."
        )
    index = next_version(client, alias)
    create_index(client, name, settings, index, alias)
    logger.info("created index %s behind alias %s", index, alias)
    return index, True


def create_all(client: Elasticsearch, settings: Settings, names: tuple[str, ...] = INDEX_NAMES) -> list[tuple[str, str, bool]]:
    """Create every missing index; return (alias, index, created) for each name."""
    results = []
    for name in names:
        index, created = ensure_index(client, name, settings)
        results.append((settings.alias(name), index, created))
    client.cluster.health(index=[settings.alias(name) for name in names], wait_for_status="yellow", timeout="30s")
    return results


def list_indices(client: Elasticsearch, settings: Settings) -> list[IndexRow]:
    """Return alias, concrete index, document count and store size for every logical index."""
    rows = []
    for name in INDEX_NAMES:
        alias = settings.alias(name)
        indices = concrete_indices(client, alias)
        if not indices:
            rows.append(IndexRow(alias, None, 0, 0))
            continue
        for index in indices:
            body = client.indices.stats(index=index, metric=["docs", "store"]).body
            # An index whose primary shard has not started yet is absent from the stats response.
            stats = body.get("indices", {}).get(index, {}).get("primaries")
            if not stats:
                rows.append(IndexRow(alias, index, None, None))
                continue
            rows.append(IndexRow(alias, index, stats["docs"]["count"], stats["store"]["size_in_bytes"]))
    return rows


def delete_all(client: Elasticsearch, settings: Settings) -> list[str]:
    """Delete every versioned index under the prefix (tests and `vidrec indices delete --yes`)."""
    deleted = []
    for name in INDEX_NAMES:
        for index in all_versions(client, settings.alias(name)):
            client.indices.delete(index=index)
            deleted.append(index)
    return deleted


def format_size(size_bytes: int) -> str:
    size = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
