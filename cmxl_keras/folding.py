"""The exported graph: the model's affine layers folded (in float32: ``runtime``'s copy).

``inference_graph`` is what the TFLite files are converted from: the same function with
the input normalization folded into the stem convolution and every BatchNormalization
made a per-channel 1x1 depthwise convolution. In float this changes only rounding
(~1e-5 on the probabilities); in int8 it removes two requantizations per
BatchNormalization and gives its per-channel scale int8 weights of its own.
"""

import numpy as np

from cmxl_keras.runtime import float32_layer


def inference_graph(model):
    """A copy of ``model`` that computes the same function with its affine layers folded.

    - The Normalization layer in front of a ``valid``-padded stem Conv2D (the builder's
      ``normalize`` -> ``stem_conv``) is folded into that convolution: without padding,
      conv(a * x + b) is exactly a convolution of x with kernel W * a and a new bias.
    - Every BatchNormalization (inference mode: y = s * x + t per channel) becomes a 1x1
      DepthwiseConv2D with kernel s and bias t.

    Why by hand: the TFLite converter keeps a BatchNormalization that follows an
    activation (ConvMixer's act -> BN order, which cannot fold into a convolution) as a
    MUL and an ADD. In int8 both constants then share one per-tensor scale and the
    activation is rounded twice; a depthwise convolution has per-channel int8 weights and
    one rounding. Scale and shift are read from float32 copies of the layers (their
    outputs on zeros and ones), so any centering/scaling options are honoured. The copy
    computes in float32 whatever the model's dtype policy: a model trained with mixed
    precision exports float32 TFLite files.
    """
    import keras

    def affine(layer, channels, **kwargs):
        probe, zeros = float32_layer(layer), np.zeros((1, 1, 1, channels), np.float32)
        probe(zeros, **kwargs)  # builds it
        probe.set_weights(layer.get_weights())
        shift = np.asarray(probe(zeros, **kwargs), np.float64).reshape(-1)
        scale = np.asarray(probe(zeros + 1, **kwargs), np.float64).reshape(-1) - shift
        return scale, shift

    stem_fold = None
    names = {layer.name for layer in model.layers}
    if {"normalize", "stem_conv"} <= names:
        norm, conv = model.get_layer("normalize"), model.get_layer("stem_conv")
        if (conv.padding == "valid" and conv.input is norm.output
                and isinstance(norm, keras.layers.Normalization)):
            scale, shift = affine(norm, conv.kernel.shape[2])
            kernel, bias = (np.asarray(w, np.float64) for w in conv.get_weights())
            stem_fold = [(kernel * scale[None, None, :, None]).astype(np.float32),
                         (bias + np.einsum("hwio,i->o", kernel, shift)).astype(np.float32)]

    class FoldedBatchNorm(keras.layers.DepthwiseConv2D):
        def call(self, inputs, mask=None, training=None):  # BatchNormalization's signature
            return super().call(inputs)

    folded = {}

    def clone(layer):
        rank = len(getattr(layer.input, "shape", ()) or ())
        if (isinstance(layer, keras.layers.BatchNormalization) and rank == 4
                and layer.axis % rank == rank - 1):
            folded[layer.name] = affine(layer, layer.input.shape[-1], training=False)
            return FoldedBatchNorm(1, use_bias=True, name=layer.name, dtype="float32")
        if stem_fold and layer.name == "normalize":
            return keras.layers.Identity(name=layer.name, dtype="float32")
        return float32_layer(layer)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in copy.layers:
        if layer.name in folded:
            scale, shift = folded[layer.name]
            layer.set_weights([scale.reshape(1, 1, -1, 1).astype(np.float32),
                               shift.astype(np.float32)])
        elif layer.name == "stem_conv" and stem_fold:
            layer.set_weights(stem_fold)
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy
