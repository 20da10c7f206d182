"""A synthetic catalog and impression log with a planted signal, for tests and the scorer benchmark.

Videos belong to one of ``topics`` clusters of text embeddings. Each user
prefers one topic and has watched videos of it; a shown candidate of the
preferred topic is watched with probability ``p_match``, any other with
``p_other``. A model that reads the history/candidate similarity or the
history id embeddings can learn the signal; one that cannot scores near
AUC 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from app.candidates.types import CHANNELS, Candidate, ChannelHit
from ranking.feature_table import VideoFeatureTable, build_table
from ranking.features import PopularityTimeline
from ranking.training_data import ImpressionRequest

START = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
DAY_S = 86400.0


@dataclass
class SyntheticWorld:
    table: VideoFeatureTable
    requests: list[ImpressionRequest]
    popularity: PopularityTimeline
    topic_of: dict[str, int]


def make_world(videos: int = 300, users: int = 200, requests_per_user: int = 3, candidates: int = 30,
               dims: int = 32, topics: int = 4, p_match: float = 0.5, p_other: float = 0.03,
               seed: int = 0) -> SyntheticWorld:
    """Build the catalog, per-user requests over 90 days and a popularity timeline of past watches."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(topics, dims))
    records, topic_of = [], {}
    for i in range(videos):
        topic = int(rng.integers(topics))
        vector = centers[topic] + 0.6 * rng.normal(size=dims)
        vector /= np.linalg.norm(vector)
        video_id = f"v{i}"
        topic_of[video_id] = topic
        records.append({
            "video_id": video_id, "text_embedding": vector.tolist(),
            "category": f"topic{topic}" if rng.random() < 0.5 else "misc",
            "duration_s": float(rng.uniform(60, 7200)) if rng.random() < 0.9 else None,
            "published_at": (START - float(rng.uniform(1, 900)) * DAY_S) * 1000.0,
        })
    table = build_table(records, dims)
    ids_by_topic = {t: [v for v, k in topic_of.items() if k == t] for t in range(topics)}
    all_ids = list(topic_of)

    requests, watch_rows, watch_times = [], [], []
    for u in range(users):
        topic = int(rng.integers(topics))
        history = list(rng.choice(ids_by_topic[topic], size=10, replace=False))
        profile_base = {
            "user_id": f"u{u}",
            "age": int(rng.integers(15, 70)) if rng.random() < 0.8 else None,
            "gender": ["M", "F", None][int(rng.integers(3))],
            "country": ["US", "FR", None][int(rng.integers(3))],
            "region": ["CA", "NY", None][int(rng.integers(3))],
        }
        for r in range(requests_per_user):
            t = START + float(rng.uniform(0, 90)) * DAY_S
            watches = [{"video_id": v, "ts": (t - (k + 1) * 3600.0) * 1000.0, "completion": 1.0}
                       for k, v in enumerate(history)]
            for w in watches:
                watch_rows.append(table.row(w["video_id"]))
                watch_times.append(w["ts"] / 1000.0)
            vectors = np.asarray(table.text_embedding[table.rows(history)])
            shown = list(rng.choice(all_ids, size=candidates, replace=False))
            cands, labels, engagement = [], [], []
            for rank, video_id in enumerate(shown, start=1):
                channel = CHANNELS[int(rng.integers(len(CHANNELS)))]
                cands.append(Candidate(video_id, [ChannelHit(channel, rank, float(rng.uniform(0, 1)))],
                                       fused_score=1.0 / (60 + rank)))
                p = p_match if topic_of[video_id] == topic else p_other
                label = int(rng.random() < p)
                labels.append(label)
                engagement.append(float(rng.uniform(0.3, 1.0)) if label else 0.0)
            profile = dict(profile_base, recent_watches=watches, watched_ids=history,
                           history_vector=vectors.mean(axis=0).tolist(),
                           impressions=[{"video_id": shown[0], "count": 2, "last_shown": (t - DAY_S) * 1000.0}])
            requests.append(ImpressionRequest(f"u{u}", profile, t, cands, labels, engagement))
    popularity = PopularityTimeline(np.array(watch_rows, dtype=np.int64), np.array(watch_times), table.size)
    return SyntheticWorld(table=table, requests=requests, popularity=popularity, topic_of=topic_of)
