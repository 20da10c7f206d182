"""ONNX Runtime encoder for a BERT-style sentence-transformers model (mean pooling, L2 normalization).

The transformer is exported once with ``torch.onnx.export`` into
``cache_dir/onnx/<key>/model.onnx``, optionally quantized to int8 weights with
``onnxruntime.quantization.quantize_dynamic``, and run on the CPU. The pipeline
repeats all-MiniLM-L6-v2's sentence-transformers modules: transformer, mean
pooling over the attention mask, L2 normalization. bench/embedding.py measures its
speed and its agreement with plain sentence-transformers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _export(model_path: str, target: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tokenizer(["an example", "a second, longer example sentence"], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    torch.onnx.export(Wrapped(model), (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
                      str(partial), input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                    "last_hidden_state": axes})
    os.replace(partial, target)


class OnnxEncoder:
    """Encode texts with ONNX Runtime; ``quantized`` uses int8 weights (dynamic quantization).

    ``max_seq_length`` truncates in tokens, like sentence-transformers' setting of the
    same name (256 for all-MiniLM-L6-v2).
    """

    def __init__(self, model_path: str, cache_dir: Path, quantized: bool = False, max_seq_length: int = 256):
        import onnxruntime
        from transformers import AutoTokenizer

        key = hashlib.sha256(str(Path(model_path).resolve()).encode()).hexdigest()[:16]
        folder = cache_dir / "onnx" / key
        fp32 = folder / "model.onnx"
        if not fp32.exists():
            logger.info("exporting %s to ONNX at %s", model_path, fp32)
            _export(model_path, fp32)
        path = fp32
        if quantized:
            path = folder / "model-int8.onnx"
            if not path.exists():
                from onnxruntime.quantization import QuantType, quantize_dynamic

                partial = path.with_suffix(".partial")
                quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
                os.replace(partial, path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.max_seq_length = max_seq_length
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Return float32 (len(texts), dims) L2-normalized vectors, batching texts sorted by length."""
        order = np.argsort([-len(text) for text in texts], kind="stable")
        result: list[np.ndarray] = [np.empty(0)] * len(texts)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer([texts[row] for row in rows], padding=True, truncation=True,
                                   max_length=self.max_seq_length, return_tensors="np")
            inputs = {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = self.session.run(None, inputs)[0]
            mask = inputs["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            for row, vector in zip(rows, pooled):
                result[row] = vector.astype(np.float32)
        return np.stack(result) if texts else np.zeros((0, 0), dtype=np.float32)
