"""Model folders for tests: what the train stage writes, from an untrained network."""
from __future__ import annotations

import json
import os

import numpy as np

from recsys_spark.models.sequence import CONFIG_FILE, FIRST_ITEM, MODEL_FILE, VOCABULARY_DIR, ModelSpec, build_model


def write_model_dir(root, spec: ModelSpec, item_ids, version: str = "v1", text_vectors=None, seed=None) -> str:
    """A model folder as the train stage lays it out, from an untrained model (with ``seed``,
    random item biases and logit scale, as a trained model has)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model_dir = os.path.join(root, version)
    os.makedirs(os.path.join(model_dir, VOCABULARY_DIR))
    model = build_model(spec, text_vectors)
    if seed is not None:
        rng = np.random.default_rng(seed)
        head = model.get_layer("logits")
        head.item_bias.assign(rng.normal(0.0, 1.5, size=spec.n_tokens).astype(np.float32))
        head.scale.assign(np.float32(7.0))
    model.save(os.path.join(model_dir, MODEL_FILE))
    counts = np.arange(len(item_ids), 0, -1)
    q = counts / counts.sum()
    vocabulary = pa.table(
        {
            "item_id": list(item_ids),
            "count": counts.astype(np.int64),
            "index": np.arange(FIRST_ITEM, FIRST_ITEM + len(item_ids), dtype=np.int64),
            "log_q": np.log(q),
        }
    )
    pq.write_table(vocabulary, os.path.join(model_dir, VOCABULARY_DIR, "part-0.parquet"))
    with open(os.path.join(model_dir, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump({"version": version, "model": spec.to_json()}, handle)
    return model_dir
