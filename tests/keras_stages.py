"""The device form's stages (Keras layers) on given images with given draws, under the
Keras backend of the process, for tests/test_reference.py: in the test process itself
(TensorFlow), and as a script under another backend.

    KERAS_BACKEND=jax python tests/keras_stages.py IN.npz OUT.npz

``IN.npz`` holds ``cases`` (JSON: per case the ``AugmentSpec`` fields of one stage, the
images' array name, the names of its draws and a seed) and the arrays; ``OUT.npz`` gets
``out0, out1, ...`` and the backend's name.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def device_stage(fields, images, draws=None, seed=None):
    """One stage of ``AugmentSpec(**fields)`` as its Keras layer, on ``images`` in
    training mode; its random draws replaced by ``draws`` (name -> array) if given."""
    from cmxl_keras import augment

    spec = augment.AugmentSpec(**fields)
    (layer,) = augment.keras_layers(spec, seed=seed)
    if draws:
        layer.draws = lambda batch: draws
    return augment.apply_keras_layers([layer], images.astype(np.float32))


def main(in_path, out_path):
    import keras

    with np.load(in_path) as loaded:
        data = dict(loaded)
    out = {"backend": np.array(keras.backend.backend())}
    for k, case in enumerate(json.loads(str(data["cases"]))):
        draws = {name: data[f"{k}-{name}"] for name in case["draws"]}
        out[f"out{k}"] = device_stage(case["fields"], data[case["images"]], draws,
                                      case.get("seed"))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
