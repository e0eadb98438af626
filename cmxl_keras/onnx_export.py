"""``model.onnx``: the exported graph for ONNX Runtime (CPUs and GPUs, Triton, TensorRT,
ONNX Runtime Web), written by Keras' own exporter (``model.export(format="onnx")``, through
tf2onnx on the TensorFlow backend) from the float32 graph the TFLite files come from
(``folding.inference_graph``: the normalization folded into the stem), behind a uint8
input ``images`` [N, H, W, 3] and one output ``probabilities`` [N, C], with the class
names in the file's metadata (``class_names``, JSON).

Where the exporter cannot map an op the graph is rewritten for the export, never the
training model: the exact GELU, which TensorFlow computes with ``Erfc`` (no ONNX
mapping in tf2onnx), is written with ``erf`` (ONNX's ``Erf``), the same function.
"""

import json
import os

from cmxl_keras.folding import inference_graph

ONNX_OPSET = 17  # ONNX Runtime 1.14 and later, TensorRT 8.6 and later
INPUT, OUTPUT = "images", "probabilities"


def _exact_gelu_layer():
    import keras

    class ExactGelu(keras.layers.Layer):
        """GELU as 0.5 x (1 + erf(x / sqrt 2)): ``Activation("gelu")``'s function, with
        ``erf`` where TensorFlow's own kernel uses ``erfc``, which ONNX does not have."""

        def call(self, x):
            return 0.5 * x * (1.0 + keras.ops.erf(x * 0.7071067811865476))

    return ExactGelu


def onnx_graph(model):
    """The Keras model that is exported: uint8 pixels in, probabilities out, the folded
    float32 graph of ``model`` with every exact GELU written with ``erf``."""
    import keras

    exact_gelu = _exact_gelu_layer()

    def rewrite(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Activation) and config["activation"] == "gelu":
            return exact_gelu(name=layer.name, dtype="float32")
        return layer.__class__.from_config(config)

    folded = inference_graph(model)
    graph = keras.models.clone_model(folded, clone_function=rewrite)
    graph.set_weights(folded.get_weights())
    images = keras.Input(model.input_shape[1:], dtype="uint8", name=INPUT)
    logits = graph(keras.ops.cast(images, "float32"))
    wrapped = keras.Model(images, keras.layers.Softmax(name=OUTPUT, dtype="float32")(logits))
    wrapped(keras.ops.zeros((1, *model.input_shape[1:]), "uint8"))  # built, as export needs
    return wrapped


def write_onnx(model, path, class_names):
    """Writes ``model.onnx`` for ``model`` (float32) to ``path``; returns its size. The
    output is renamed ``probabilities`` and the file passes ``onnx.checker``."""
    import onnx

    staging = path + ".keras-export"
    onnx_graph(model).export(staging, format="onnx", verbose=False, opset_version=ONNX_OPSET)
    exported = onnx.load(staging)
    old = exported.graph.output[0].name
    for node in exported.graph.node:
        node.output[:] = [OUTPUT if name == old else name for name in node.output]
    exported.graph.output[0].name = OUTPUT
    entry = exported.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps(list(class_names))
    onnx.checker.check_model(exported)
    onnx.save(exported, path)
    os.remove(staging)
    return os.path.getsize(path)
