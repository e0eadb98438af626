"""Makes this Python look like the GPU host's (``python -m reproduce gpu``): TensorFlow, keras-cv and
tensorflow-datasets are not installed there. On PYTHONPATH, this hides them as a missing
package is hidden: ``import tensorflow`` raises ModuleNotFoundError and
``importlib.util.find_spec("tensorflow")`` is None (PyTorch and Keras probe both)."""

import sys

HIDDEN = {"tensorflow", "keras_cv", "tensorflow_datasets"}


class _Hiding:
    """Wraps one import finder; answers "not here" for the hidden packages."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
