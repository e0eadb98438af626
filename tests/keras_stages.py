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


def device_draws(fields, count, seed=None, batch=128):
    """The random draws (name -> array) for ``count`` images of one stage of
    ``AugmentSpec(**fields)`` as its Keras layer draws them in training: from its own
    seeded generator, one batch of ``batch`` images a step, step after step."""
    layer = _layer(fields, seed)
    steps = [{name: np.asarray(value) for name, value in layer.draws(batch).items()}
             for _ in range(-(-count // batch))]
    return joined(layer.stage, steps, count, batch)


def joined(stage, steps, count, batch):
    """Per-step draws of ``stage`` (a list of name -> array) joined along each draw's
    batch axis (``stage.shapes`` says which) and cut to ``count`` images."""
    out = {}
    for name, shape in stage.shapes(batch).items():
        axis = shape.index(batch)
        out[name] = np.take(np.concatenate([step[name] for step in steps], axis=axis),
                            np.arange(count), axis=axis)
    return out


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
