"""The pretrained text encoder: a text's vector does not depend on the batch it
is encoded in (texts are batched by length, padding masked), in either
precision, bfloat16 vectors are float32's to within rounding, int8 (the
query path's) ranks a catalogue for a query nearly as float32 does, and the
traced graph computes what the eager model does at every length."""

import numpy as np
import pytest

from training.text_encoder import TextEncoder

TEXTS = ["Heart Kiss Part 2. Romance. A romance story of summer and paris.",
         "Orbit.", "A quiet documentary about the ocean, its history and its makers, "
         "told by the people who sailed it for forty years.", "Bunny Castle. Animation."]
# bfloat16 keeps 8 bits of mantissa: a component moves by ~1e-3 with the batch
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-3}


@pytest.fixture(scope="module")
def encoders():
    first = TextEncoder(precision="float32")
    second = TextEncoder(precision="bfloat16")
    return {"float32": first, "bfloat16": second}


@pytest.mark.parametrize("precision", sorted(TOLERANCE))
def test_vectors_do_not_depend_on_the_batch_or_its_order(encoders, precision):
    encoder, atol = encoders[precision], TOLERANCE[precision]
    together = encoder.encode(TEXTS, batch_size=2)
    alone = np.vstack([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=atol)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert together.shape == (4, encoder.dim) and abs(together[0] @ together[1]) < 0.99
    np.testing.assert_allclose(encoder.encode(TEXTS[::-1], batch_size=3), together[::-1],
                               atol=atol)


def test_bfloat16_vectors_are_float32_ones_to_within_rounding(encoders):
    exact = encoders["float32"].encode(TEXTS)
    rounded = encoders["bfloat16"].encode(TEXTS)
    cosines = (exact * rounded).sum(axis=1)
    assert cosines.min() > 0.9999
    # and the rounding is there at all: the two paths are not the same computation
    assert np.abs(exact - rounded).max() > 1e-6


def test_int8_ranks_items_for_queries_within_a_tolerance_of_float32(encoders):
    from orchestration.sources.generator import GENRES, GeneratorConfig, generate
    from training.text_encoder import item_texts

    items = encoders["float32"].encode(item_texts(generate(
        GeneratorConfig(users=50, items=400, events=500)).items))
    queries = [g.lower() for g in GENRES] + ["funny romantic story", "a scary night",
                                             "space adventure for children"]
    exact = encoders["float32"].encode(queries)
    quantised = TextEncoder(precision="int8").encode(queries)
    cosines = (exact * quantised).sum(axis=1)
    assert cosines.mean() > 0.93 and cosines.min() > 0.85
    assert cosines.max() < 0.9999  # the int8 path is not the float one
    top = [np.argsort(-(q @ items.T), kind="stable")[:10] for q in (exact, quantised)]
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(*top, strict=True)]
    assert np.mean(overlap) >= 0.8 and min(overlap) >= 0.6


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_the_traced_encoder_is_the_eager_one_at_every_length(precision):
    eager = TextEncoder(precision=precision)
    traced = TextEncoder(precision=precision, traced=True)
    # one token past the trace's example length and up to the truncation limit
    texts = ["x", "comedy", "a romance in paris with a dog"] + TEXTS + ["word " * 300]
    assert len(eager.tokenizer(texts[-1], truncation=True, max_length=512)["input_ids"]) > 128
    alone = np.vstack([traced.encode([t]) for t in texts])
    np.testing.assert_allclose(alone, eager.encode(texts, batch_size=1), atol=1e-5)
    if precision == "float32":  # int8 scales activations per batch, so only float32
        # a padded batch through the graph: the mask is an input, not a traced constant
        np.testing.assert_allclose(traced.encode(texts, batch_size=4), alone, atol=1e-5)


def test_token_ids_are_the_tokenizers_own(encoders):
    """The Rust backend called directly gives each text the ids the Hugging Face
    tokenizer gives it: special tokens, truncation at 128, an empty text."""
    from training.text_encoder import MAX_TOKENS

    encoder = encoders["float32"]
    texts = TEXTS + ["", "Ça va? Crème brûlée, naïve café.", "word " * 300]
    ids, lengths = encoder.token_ids(texts)
    want = encoder.tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    assert lengths.tolist() == [len(w) for w in want] and lengths[-1] == MAX_TOKENS
    assert ids.tolist() == [i for w in want for i in w]
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_a_traced_bfloat16_encoder_is_refused():
    with pytest.raises(ValueError, match="traced"):
        TextEncoder(precision="bfloat16", traced=True)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="float16"):
        TextEncoder(precision="float16")
