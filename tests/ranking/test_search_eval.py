"""Search evaluation with rerank rows: per-query metrics, the rows on the real node, and the table."""

import json

import numpy as np
import pytest

from app.candidates.search import search_videos
from app.es_client import make_async_client
from ranking.candidate_eval import (RERANK_PROFILES, RERANK_WEIGHTS, SearchMetrics, evaluate_search, format_tables,
                                    rerank_mode)
from tests.app.fixture_scorer import FixtureScorer, fixture_score
from tests.app.recommend_catalog import N_VIDEOS, index_catalog, video_doc

TARGETS = ["v3", "v17", "v52"]


def test_search_metrics_count_ranks():
    metrics = SearchMetrics()
    metrics.add(["a", "b", "c"], "b")
    metrics.add([f"x{i}" for i in range(20)] + ["t"], "t")
    metrics.add([f"x{i}" for i in range(100)] + ["t"], "t")
    assert metrics.recall10 == [1.0, 0.0, 0.0]
    assert metrics.recall100 == [1.0, 1.0, 0.0]
    assert metrics.reciprocal == pytest.approx([0.5, 1 / 21, 0.0])


def test_paired_difference_per_query():
    baseline, better = SearchMetrics(), SearchMetrics()
    for ranked in (["t"], ["x", "t"], ["x"]):
        baseline.add(ranked, "t")
    for ranked in (["t"], ["t"], ["x", "t"]):
        better.add(ranked, "t")
    difference = better.paired_difference(baseline, resamples=50)
    assert difference["mrr"]["mean"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert difference["recall@10"]["mean"] == pytest.approx(1 / 3)


def test_format_tables_lists_rerank_rows():
    cell = {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 2}
    row = {"recall@10": cell, "recall@100": cell, "mrr": cell}
    paired = dict(row, vs_hybrid={"recall@10": cell, "mrr": cell})
    results = {"search": {"queries": 2, "model_version": "mlp-1", "rerank_window": 100, "rerank_degraded": 0,
                          "modes": {"hybrid": row, rerank_mode(0.25): paired}}}
    text = format_tables(results)
    assert "| hybrid | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] |  |  |" in text
    assert "| hybrid + rerank w=0.25 | " + " | ".join(["0.500 [0.400, 0.600]"] * 5) + " |" in text
    assert "model mlp-1, anonymous queries, window 100" in text


class ProfileRecordingScorer(FixtureScorer):
    """The fixture scorer, recording each profile it scores with."""

    def __init__(self, model_version):
        super().__init__(model_version)
        self.profiles = []

    def score(self, profile, candidates, request_time):
        self.profiles.append(profile)
        return super().score(profile, candidates, request_time)


class FixedVectorEncoder:
    """Encodes every query as one fixed vector."""

    def __init__(self, vector):
        self.vector = np.asarray(vector, dtype=np.float32)

    def encode(self, texts):
        return np.tile(self.vector, (len(texts), 1))


def write_tomt(data_dir):
    """Write a links.csv and a reddit-tomt validation file whose queries name three catalog videos."""
    movies = data_dir / "movielens-latest-small"
    movies.mkdir(parents=True)
    links = ["movieId,imdbId,tmdbId"] + [f"{target},{index:07d}," for index, target in enumerate(TARGETS, 1)]
    (movies / "links.csv").write_text("\n".join(links) + "\n")
    queries = data_dir / "reddit-tomt-movie-queries"
    queries.mkdir()
    records = [{"id": f"q{index}", "title": f"[TOMT] Video number {target[1:]}", "text": "about a topic",
                "imdb_url": f"https://www.imdb.com/title/tt{index:07d}/"}
               for index, target in enumerate(TARGETS, 1)]
    (queries / "validation.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.mark.es
async def test_evaluate_search_rerank_rows(settings, es, tmp_path):
    index_catalog(es, settings)
    write_tomt(tmp_path)
    rng = np.random.default_rng(7)
    encoder = FixedVectorEncoder([video_doc(i, rng) for i in range(N_VIDEOS)][40]["text_embedding"])
    scorer = ProfileRecordingScorer("fixture-v1")

    results = await evaluate_search(settings, tmp_path, encoder, resamples=50, scorer=scorer)

    modes = results["modes"]
    assert list(modes) == ["bm25", "knn", "hybrid"] + [rerank_mode(weight, profile) for profile in RERANK_PROFILES
                                                       for weight in RERANK_WEIGHTS]
    assert results["queries"] == 3
    assert results["model_version"] == "fixture-v1"
    assert results["rerank_degraded"] == 0

    # Weight 1 orders the top 100 fused hits by the fixture scores alone.
    client = make_async_client(settings)
    try:
        expected = SearchMetrics()
        for target in TARGETS:
            result = await search_videos(client, settings, encoder, f"Video number {target[1:]}\nabout a topic",
                                         k=100)
            window = [item.video_id for item in result.fused[:100]]
            by_model = sorted(window, key=lambda video_id: -np.float32(fixture_score("fixture-v1", video_id)))
            expected.add(by_model, target)
    finally:
        await client.close()
    model_row = modes[rerank_mode(1.0)]
    assert model_row["mrr"]["mean"] == pytest.approx(np.mean(expected.reciprocal))
    assert model_row["recall@10"]["mean"] == pytest.approx(np.mean(expected.recall10))
    # The window is the top 100, the same hits as the hybrid's top 100, in another order.
    assert model_row["recall@100"]["mean"] == modes["hybrid"]["recall@100"]["mean"]
    assert model_row["mrr"]["mean"] != modes["hybrid"]["mrr"]["mean"]
    assert model_row["vs_hybrid"]["mrr"]["mean"] == pytest.approx(
        model_row["mrr"]["mean"] - modes["hybrid"]["mrr"]["mean"])
    # One scoring per query and profile: empty, then the query's embedding as the query vector.
    assert scorer.profiles[0::2] == [{}] * 3
    assert scorer.profiles[1::2] == [{"query_vector": pytest.approx(encoder.vector.tolist())}] * 3
    # The fixture scores depend only on the video id, so the profile changes nothing.
    assert modes[rerank_mode(1.0, "query vector")]["mrr"] == model_row["mrr"]


def test_evaluate_rejects_skipping_everything(tmp_path, capsys):
    from app.cli import main

    code = main(["evaluate", "candidates", "--data-dir", str(tmp_path), "--skip-recall", "--skip-search"])
    assert code == 2
    assert "leave nothing to evaluate" in capsys.readouterr().out
