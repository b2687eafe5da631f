"""The MLflow pyfunc of the sequence ranker, logged as a "model from code".

MLflow saves this file with the model and runs it to build the model object (``set_model`` at
the bottom), so nothing is pickled: the model's one artifact, ``model``, is the ranker's folder
(``models/<version>``: Keras file, vocabulary, config), loaded by ``SequenceRanker.load``.
``recsys_spark.tracking.experiment`` logs it; nothing else imports this file.

``predict`` takes a frame with ``history`` (item ids, oldest -> newest) and, optionally,
``candidates`` (item ids to rank; missing or null: every vocabulary item not in the history) and
returns ``items`` (the top ``k`` item ids, best first) and ``scores`` (their P(next item)), ranked
as the score stage ranks: candidates unknown to the model are left out, ties keep the given order.
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from recsys_spark.core.schemas import SERVED_CANDIDATES, SERVED_HISTORY, SERVED_ITEMS, SERVED_K, SERVED_SCORES
from recsys_spark.models.sequence import SequenceRanker, check_model_folder, rank_candidates
from recsys_spark.tracking.experiment import MODEL_ARTIFACT

DEFAULT_K = 10


def _ids(value) -> "list[str]":
    return [] if value is None else [str(item) for item in value]


class RankerModel(PythonModel):
    """``SequenceRanker`` behind MLflow's pyfunc interface."""

    def load_context(self, context) -> None:
        folder = context.artifacts[MODEL_ARTIFACT]
        check_model_folder(folder)
        self.ranker = SequenceRanker.load(folder, threads=1)
        self.k = int((context.model_config or {}).get(SERVED_K, DEFAULT_K))

    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        k = int((params or {}).get(SERVED_K) or self.k)
        histories = [_ids(h) for h in frame[SERVED_HISTORY]]
        given = frame[SERVED_CANDIDATES] if SERVED_CANDIDATES in frame else [None] * len(frame)
        candidates = []
        for history, items in zip(histories, given):
            if items is None:
                seen = set(history)
                candidates.append([item for item in self.ranker.item_ids if item not in seen])
            else:
                candidates.append(self.ranker.known(_ids(items)))
        ranked = [rank_candidates(c, p, k) for c, p in zip(candidates, self.ranker.score(histories, candidates))]
        return pd.DataFrame({SERVED_ITEMS: [r[0] for r in ranked], SERVED_SCORES: [r[1] for r in ranked]})


mlflow.models.set_model(RankerModel())
