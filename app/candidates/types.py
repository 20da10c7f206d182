"""Types shared by candidate generation, the ranking scorer and the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

# Retrieval channels, in the order their flags appear in ranking features.
CHANNELS = ("history_content", "collaborative", "query_text", "query_semantic", "popular_fresh")


class ChannelHit(NamedTuple):
    """One channel's vote for a candidate: its 1-based rank and raw score in that channel.

    A named tuple rather than a frozen dataclass, because a request builds about a thousand of them
    and a frozen dataclass's ``__init__`` is several times slower.
    """

    channel: str
    rank: int
    score: float


@dataclass
class Candidate:
    """A video found by one or more channels, with the fused (reciprocal rank fusion) score."""

    video_id: str
    sources: list[ChannelHit] = field(default_factory=list)
    fused_score: float = 0.0
