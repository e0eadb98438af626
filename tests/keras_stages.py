"""The device form's stages (Keras layers) on given images with given draws, under the
Keras backend of the process, for tests/test_reference.py: in the test process itself
(TensorFlow), and as a script under another backend.

    KERAS_BACKEND=jax python tests/keras_stages.py IN.npz OUT.npz

``IN.npz`` holds ``cases`` (JSON: per case the ``AugmentSpec`` fields of one stage and a
seed, and either the images' array name and the names of its draws, or a ``count`` of
images to draw for) and the arrays; ``OUT.npz`` gets ``out0, out1, ...`` (the images) or
``out0-NAME, ...`` (the stage's own draws, by name) and the backend's name.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _layer(fields, seed):
    from cmxl_keras import augment

    (layer,) = augment.keras_layers(augment.AugmentSpec(**fields), seed=seed)
    return layer


def device_stage(fields, images, draws, seed=None):
    """One stage of ``AugmentSpec(**fields)`` as its Keras layer, on ``images`` in
    training mode, its random draws replaced by ``draws`` (name -> array)."""
    from cmxl_keras import augment

    layer = _layer(fields, seed)
    layer.draws = lambda batch: draws
    return augment.apply_keras_layers([layer], images.astype(np.float32))


def device_draws(fields, count, seed=None):
    """The random draws (name -> array) for ``count`` images of one stage of
    ``AugmentSpec(**fields)`` as its Keras layer, from its own seeded generator."""
    return {name: np.asarray(value) for name, value in _layer(fields, seed).draws(count).items()}


def main(in_path, out_path):
    import keras

    with np.load(in_path) as loaded:
        data = dict(loaded)
    out = {"backend": np.array(keras.backend.backend())}
    for k, case in enumerate(json.loads(str(data["cases"]))):
        if "count" in case:
            drawn = device_draws(case["fields"], case["count"], case.get("seed"))
            out.update({f"out{k}-{name}": value for name, value in drawn.items()})
            continue
        draws = {name: data[f"{k}-{name}"] for name in case["draws"]}
        out[f"out{k}"] = device_stage(case["fields"], data[case["images"]], draws,
                                      case.get("seed"))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
