"""Versioned model directories under ``settings.model_dir``.

Each trained model is one directory named ``<kind>-<UTC time>-<hash>``:

- ``model.pt``: the state dict (id and location embeddings, linear layers);
- ``model.json``: the model shape, the kept fraction of training negatives,
  the training configuration and window, metrics, code version, creation time;
- ``features.json``: feature configuration, vocabularies and normalization
  statistics fitted on the training split;
- ``table/``: the video feature table the model was trained with.

``resolve_version`` accepts a directory name, ``latest`` (the newest of any
kind) or ``latest-mlp`` / ``latest-lr``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ranking.feature_table import VideoFeatureTable
from ranking.features import FeatureEncoder
from ranking.models import ModelShape, Ranker

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class ModelNotFoundError(LookupError):
    """No model directory matches the requested version."""


def code_version() -> str:
    """Return the git commit of this checkout (with ``-dirty`` for local changes), or "unknown"."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def save_model(model_dir: Path, model: Ranker, encoder: FeatureEncoder, negative_keep: float,
               meta: dict[str, Any]) -> Path:
    """Write a new version directory and return its path."""
    created = datetime.now(timezone.utc)
    state = model.state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().numpy().tobytes())
    name = f"{model.shape.kind}-{created.strftime('%Y%m%dT%H%M%SZ')}-{digest.hexdigest()[:8]}"
    folder = model_dir / name
    folder.mkdir(parents=True, exist_ok=False)

    torch.save(state, folder / "model.pt")
    (folder / "features.json").write_text(json.dumps(encoder.to_dict()))
    encoder.table.save(folder / "table")
    shape = asdict(model.shape)
    shape["hidden"] = list(shape["hidden"])
    record = {"version": name, "created_at": created.isoformat(), "code_version": code_version(),
              "shape": shape, "negative_keep": negative_keep, **meta}
    (folder / "model.json").write_text(json.dumps(record, indent=2, default=str))
    logger.info("saved ranking model version=%s path=%s", name, folder)
    return folder


def list_versions(model_dir: Path) -> list[dict[str, Any]]:
    """Return the model.json of every version in ``model_dir``, oldest first."""
    records = []
    if model_dir.is_dir():
        for path in model_dir.glob("*/model.json"):
            records.append(json.loads(path.read_text()))
    return sorted(records, key=lambda r: (r["created_at"], r["version"]))


def resolve_version(model_dir: Path, version: str = "latest") -> Path:
    """Return the directory of ``version``: a name, ``latest``, ``latest-mlp`` or ``latest-lr``."""
    if version.startswith("latest"):
        kind = version.partition("-")[2] or None
        records = [r for r in list_versions(model_dir) if kind is None or r["shape"]["kind"] == kind]
        if not records:
            raise ModelNotFoundError(f"no ranking model{f' of kind {kind}' if kind else ''} in {model_dir}: "
                                     "train one with `vidrec train ranker`")
        return model_dir / records[-1]["version"]
    folder = model_dir / version
    if not (folder / "model.json").is_file():
        raise ModelNotFoundError(f"ranking model version {version!r} not found in {model_dir}")
    return folder


def load_model(model_dir: Path, version: str = "latest") -> tuple[Ranker, FeatureEncoder, dict[str, Any]]:
    """Load weights, encoder (with its feature table, memory-mapped) and model.json of a version."""
    folder = resolve_version(model_dir, version)
    record = json.loads((folder / "model.json").read_text())
    table = VideoFeatureTable.load(folder / "table")
    encoder = FeatureEncoder.from_dict(json.loads((folder / "features.json").read_text()), table)
    shape_fields = dict(record["shape"])
    shape_fields["hidden"] = tuple(shape_fields["hidden"])
    model = Ranker(ModelShape(**shape_fields), torch.from_numpy(encoder.video_matrix()),
                   torch.from_numpy(encoder.table_id_index))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    model.eval()
    logger.info("loaded ranking model version=%s", record["version"])
    return model, encoder, record
