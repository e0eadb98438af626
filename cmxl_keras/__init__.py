"""cmxl-keras: ConvMixer and ConvMixer-XL ("Activations And Augmentations: Pushing The
Limits Of Isotropic ConvNets") in Keras 3, with the paper's training recipe.

Submodules import Keras lazily where they can, so ``import cmxl_keras`` is cheap and the
Keras backend can still be chosen (``KERAS_BACKEND``) before the first model is built.
"""

__version__ = "0.1.0"
