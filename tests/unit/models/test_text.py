"""models.text: the encoder's precision (float32 or bfloat16) with the real all-MiniLM-L6-v2 model."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from recsys_spark.models import text as text_model
from tests.support import FIXTURES


@pytest.fixture(scope="module")
def minilm():
    model, _ = text_model.load_encoder(text_model.resolve_model("all-MiniLM-L6-v2").path, "cpu")
    return model


def _movie_texts(n: int) -> list:
    with open(FIXTURES / "ml-latest-tiny" / "movies.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:n]
    return [f"{r['title']}. {r['genres'].replace('|', ', ')}" for r in rows]


def test_bf16_vectors_agree_with_float32_and_are_unit_length(minilm):
    texts = _movie_texts(200) + ["", "x", " ".join(["a long plot about a war at sea"] * 80)]
    fp32 = text_model.encode_texts(minilm, texts, 32, "fp32")
    bf16 = text_model.encode_texts(minilm, texts, 32, "bf16")
    assert fp32.dtype == np.float32 and bf16.dtype == np.float32 and fp32.shape == bf16.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    # The same as SentenceTransformer's own float32 path with normalisation.
    plain = minilm.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(fp32, plain, atol=1e-5)
    cosine = np.sum(fp32 * bf16, axis=1)
    # bfloat16 really ran (its rounding shows) and stays within the 0.99 the issue asks (measured ~0.9995).
    assert not np.allclose(fp32, bf16, atol=1e-6)
    assert cosine.min() >= 0.99, cosine.min()
    assert cosine.mean() >= 0.999, cosine.mean()


@pytest.mark.parametrize(
    "flags, native",
    [
        ("flags : fpu sse avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),
        ("flags : fpu sse avx2 amx_bf16 amx_tile amx_int8", True),
        ("flags : fpu sse avx2 avx512f avx512bw avx512_vnni", False),
        ("flags : fp asimd bf16", False),  # an Arm core: autocast's CPU bf16 path is not this flag
    ],
)
def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\n{flags}\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    assert text_model.native_bf16("cpu") is native
    assert text_model.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert text_model.resolve_precision("fp32", "cpu") == "fp32"
    assert text_model.resolve_precision("bf16", "cpu") == "bf16"
