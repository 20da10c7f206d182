import json

import pytest

from app.cli import build_parser, main
from tests.ranking.test_world_impressions import HashEmbedder, movielens  # noqa: F401


def test_parser_has_ranker_and_cf_commands():
    parser = build_parser()
    assert parser.parse_args(["train", "ranker", "--model", "lr"]).model == "lr"
    assert parser.parse_args(["train", "cf"]).algorithm == "als"
    assert parser.parse_args(["evaluate", "ranking", "--max-users", "3"]).max_users == 3


def test_train_ranker_rejects_bad_negative_keep(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "ranker", "--negative-keep", "0"])
    assert "expected a fraction in (0, 1], got 0" in capsys.readouterr().err


@pytest.fixture
def fixture_env(movielens, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr("indexing.embed.Embedder", lambda settings: HashEmbedder())
    monkeypatch.setenv("VIDREC_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("VIDREC_CF_DIMS", "4")
    return tmp_path


def test_train_ranker_writes_version(fixture_env, capsys):
    code = main(["train", "ranker", "--model", "lr", "--data-dir", str(fixture_env), "--cap", "20",
                 "--negative-keep", "0.5", "--epochs", "2"])
    assert code == 0
    folders = list((fixture_env / "models").iterdir())
    assert len(folders) == 1
    record = json.loads((folders[0] / "model.json").read_text())
    assert record["shape"]["kind"] == "lr"
    assert record["negative_keep"] == 0.5
    assert record["window"]["train"]["requests"] > 0
    assert (folders[0] / "table" / "text_embedding.npy").exists()
    assert "saved in" in capsys.readouterr().out


def test_evaluate_ranking_writes_report(fixture_env):
    output = fixture_env / "report"
    code = main(["evaluate", "ranking", "--data-dir", str(fixture_env), "--cap", "20", "--bootstrap", "50",
                 "--output-dir", str(output)])
    assert code == 0
    report = json.loads((output / "report.json").read_text())
    assert set(report["top_k"]) == {"candidates+mlp", "candidates+lr", "fused", "popularity", "collaborative"}
    assert set(report["impressions"]) == {"lr", "mlp"}
    assert (output / "reliability.png").stat().st_size > 1000
    assert (output / "metrics.png").stat().st_size > 1000


def test_train_ranker_without_data_dir(monkeypatch, capsys):
    monkeypatch.delenv("VIDREC_DATA_DIR", raising=False)
    assert main(["train", "ranker"]) == 2
    assert "pass --data-dir or set VIDREC_DATA_DIR" in capsys.readouterr().out
