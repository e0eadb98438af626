"""cmxl-keras: ConvMixer and ConvMixer-XL ("Activations And Augmentations: Pushing The
Limits Of Isotropic ConvNets") in Keras 3, with the paper's training recipe.

Submodules import Keras lazily where they can, so ``import cmxl_keras`` is cheap and the
Keras backend can still be chosen (``KERAS_BACKEND``) before the first model is built.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow's CPU allocator hands big tensors to glibc, which maps and unmaps every
# buffer over 32 MB (a batch-128 activation of these models is 33.5 MB): each training
# step then page-faults its whole working set again. TensorFlow's own BFC allocator
# keeps the memory: CM-Vanilla's training step at batch 128 on 2 CPU cores went from
# 5.8 s to 2.9 s (bench/RESULTS.md). Read when TensorFlow makes its first CPU
# allocation, so it must be set before TensorFlow runs anything; set it to "false"
# to opt out.
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
