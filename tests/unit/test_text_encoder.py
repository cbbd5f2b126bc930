"""The pretrained text encoder: a text's vector does not depend on the batch it
is encoded in (texts are batched by length, padding masked)."""

import numpy as np

from training.text_encoder import TextEncoder


def test_vectors_do_not_depend_on_the_batch_or_its_order():
    encoder = TextEncoder()
    texts = ["Heart Kiss Part 2. Romance. A romance story of summer and paris.",
             "Orbit.", "A quiet documentary about the ocean, its history and its makers, "
             "told by the people who sailed it for forty years.", "Bunny Castle. Animation."]
    together = encoder.encode(texts, batch_size=2)
    alone = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert together.shape == (4, encoder.dim) and abs(together[0] @ together[1]) < 0.99
    np.testing.assert_allclose(encoder.encode(texts[::-1], batch_size=3), together[::-1],
                               atol=1e-5)
