"""What running a model needs, below both training and export: whether the backend sees a
GPU, and a float32 copy of a model trained under mixed precision (what a CPU runs fast,
what is exported, and what the exports are compared with)."""


def gpu_visible():
    """Whether the Keras backend sees a GPU (a broken driver counts as none)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return jax.devices()[0].platform == "gpu"
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken driver is a CPU for our purposes
        return False


def float32_layer(layer):
    """A new layer like ``layer`` that computes in float32 (weights not copied)."""
    return layer.__class__.from_config(dict(layer.get_config(), dtype="float32"))


def float32_model(model):
    """``model`` with every layer computing in float32, same weights: what is exported
    and what the exports are compared with. A model trained under mixed precision keeps
    its float16 policy in its ``.keras`` file; served as it is, it would compute in
    float16 (slow on CPUs, and ~1e-3 off the float32 function that TFLite converts)."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    return copy
