import numpy as np

import persona_dspy  # noqa: F401
from persona_dspy.memory.embedder import DIM, OnnxEmbedder


def test_shape_dtype_and_unit_norm(embedder: OnnxEmbedder) -> None:
    vecs = embedder.embed(["hello world", "a somewhat longer sentence about embeddings", "x"])
    assert vecs.shape == (3, DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_empty_input() -> None:
    embedder = OnnxEmbedder()
    assert embedder.embed([]).shape == (0, DIM)
    assert embedder._session is None  # no model I/O until there is something to embed


def test_paraphrase_closer_than_unrelated(embedder: OnnxEmbedder) -> None:
    a, b, c = embedder.embed(
        [
            "How do I reset my password?",
            "What is the procedure to change my password?",
            "The cat slept on the warm windowsill all afternoon.",
        ]
    )
    assert float(a @ b) > 0.6 > float(a @ c)


def test_batching_and_padding_do_not_change_vectors(embedder: OnnxEmbedder) -> None:
    texts = ["short", "a much longer sentence that forces padding of the short one in the batch", "mid length text"]
    together = embedder.embed(texts, batch_size=64)
    alone = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_long_text_is_truncated_not_rejected(embedder: OnnxEmbedder) -> None:
    assert embedder.embed(["word " * 5000]).shape == (1, DIM)


def test_length_sorted_batches_keep_the_input_order(embedder: OnnxEmbedder) -> None:
    texts = ["a long text " * 40, "tiny", "a medium sized sentence here", "x y", "another fairly long one " * 10]
    batched = embedder.embed(texts, batch_size=2)
    for text, vec in zip(texts, batched):
        np.testing.assert_allclose(vec, embedder.embed([text])[0], atol=1e-4)
