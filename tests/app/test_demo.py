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
