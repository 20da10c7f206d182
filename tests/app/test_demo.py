import pytest

from app.cli import build_parser
from app.demo import run_demo


def test_demo_without_dataset_says_where(settings, capsys, tmp_path):
    args = build_parser().parse_args(["demo"])
    code = run_demo(args, settings.model_copy(update={"data_dir": None}))
    assert code == 2
    error = capsys.readouterr().err
    assert "No dataset folder given" in error
    assert "ml-latest-small" in error


def test_demo_with_wrong_folder_rejected(settings, capsys, tmp_path):
    args = build_parser().parse_args(["demo", str(tmp_path)])
    assert run_demo(args, settings) == 2
    assert f"{tmp_path} has no movies.csv and ratings.csv" in capsys.readouterr().err


def write_model_record(model_dir, version, created_at):
    import json

    folder = model_dir / version
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"version": version, "created_at": created_at,
                                                   "shape": {"kind": "mlp"}}))


def test_demo_reuses_model_its_state_names(settings, tmp_path, monkeypatch):
    from app import demo

    write_model_record(settings.model_dir, "mlp-old", "2026-01-01T00:00:00Z")
    write_model_record(settings.model_dir, "mlp-other-prefix", "2026-02-01T00:00:00Z")
    monkeypatch.setattr(demo.subprocess, "call", lambda *a, **k: pytest.fail("must not train again"))
    state = {"ranker_model": "mlp-old"}
    assert demo.train_ranker(settings, tmp_path, state, tmp_path / "state.json") == "mlp-old"


def test_demo_trains_when_only_other_models_exist(settings, tmp_path, monkeypatch):
    from app import demo

    write_model_record(settings.model_dir, "mlp-other-prefix", "2026-02-01T00:00:00Z")

    def fake_training(command, **kwargs):
        write_model_record(settings.model_dir, "mlp-new", "2026-03-01T00:00:00Z")
        return 0

    monkeypatch.setattr(demo.subprocess, "call", fake_training)
    state: dict = {}
    version = demo.train_ranker(settings, tmp_path, state, tmp_path / "state.json")
    assert version == "mlp-new"
    assert state["ranker_model"] == "mlp-new"
    assert (tmp_path / "state.json").exists()


@pytest.mark.es
def test_replay_clock_is_day_after_last_watch(settings, es):
    from datetime import datetime, timezone

    from app import demo
    from indexing import indices

    indices.create_all(es, settings)
    assert demo.replay_clock(settings) is None
    for number, stamp in enumerate(["2018-09-20T08:00:00Z", "2018-09-24T03:00:00Z", "2017-01-01T00:00:00Z"]):
        es.index(index=settings.alias("watch-events"), id=f"e{number}", refresh=True,
                 document={"event_id": f"e{number}", "@timestamp": stamp, "user_id": "u1", "video_id": f"v{number}"})
    assert demo.replay_clock(settings) == datetime(2018, 9, 25, 3, tzinfo=timezone.utc)
