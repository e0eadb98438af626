"""The forms ``bench_train.py`` measures, one class each: ours on a Keras backend (with
the device augmentation, or as the exported TFLite file on LiteRT) and the reference in
PyTorch (as the paper's script runs it, compiled, or fed by its DataLoader). Each takes
the architecture, the batch size and one batch, and times ``train(steps)`` and
``infer(calls, size)`` in images per second (None: the form does not do that)."""

import os
import time

def step_clock(kind):
    import keras

    class StepClock(keras.callbacks.Callback):
        """Times the batches after the first one of a fit or predict call."""

        def __init__(self):
            super().__init__()
            self.ends = []

        def _end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def seconds(self):
            return self.ends[-1] - self.ends[0]

    setattr(StepClock, f"on_{kind}_batch_end", StepClock._end)
    return StepClock()


def images_per_second(predict, images, calls):
    """Times ``calls`` calls of ``predict`` on one batch of ``images``."""
    start = time.perf_counter()
    for _ in range(calls):
        predict(images)
    return calls * len(images) / (time.perf_counter() - start)


def keras_model(arch, batch, convs_only=False):
    """Our model of ``arch`` and its config; with ``convs_only`` (``--convs-only``), every
    activation and BatchNormalization layer replaced by an identity, as
    ``ref_torch.convs_only`` does to the reference."""
    import keras

    from cmxl_keras import config, recipe

    cfg = config.Config(**arch, batch_size=batch, aug="none")
    model = recipe.build_model(cfg)
    if convs_only:
        class Skipped(keras.layers.Layer):
            def call(self, inputs, **kwargs):  # takes the call arguments of what it replaces
                return inputs

        elementwise = (keras.layers.BatchNormalization, keras.layers.Activation,
                       keras.layers.ReLU, keras.layers.LeakyReLU)
        model = keras.models.clone_model(model, clone_function=lambda layer: (
            Skipped(name=layer.name) if isinstance(layer, elementwise)
            else layer.__class__.from_config(layer.get_config())))
    return cfg, model


class Keras:
    """Our path on the Keras backend of the process (``--frameworks keras`` runs it on
    TensorFlow, ``keras-jax`` on JAX with the compiled step training uses there). The
    batch is fed as numpy arrays, which every backend takes, so the JAX form runs where
    TensorFlow is not installed (a GPU host with only JAX). ``keras-jax-aug`` trains as
    ``cli.py train`` does under JAX: the paper's augmentation as Keras layers in front of
    the model, inside the compiled step (``pipeline = "device"``)."""

    augment = False

    def __init__(self, arch, batch, x, y, convs_only=False):
        from cmxl_keras import augment, recipe

        cfg, model = keras_model(arch, batch, convs_only)
        if self.augment:
            cfg = cfg.replace(aug="paper")
            layers = augment.keras_layers(augment.AugmentSpec.from_config(cfg), seed=0)
            model = recipe.build_model(cfg, augmentation=layers)
        self.model = recipe.compile_model(model, cfg, steps=1000)
        self.batch = batch
        self.x, self.y = x, y

    def train(self, steps):
        # Steady state inside one fit: from the end of a first step to the end of the
        # last, so fit's own start-up (a fixed cost per epoch of ~390 steps) is left out.
        import numpy as np

        clock = step_clock("train")
        self.model.fit(np.concatenate([self.x] * (steps + 1)),
                       np.concatenate([self.y] * (steps + 1)), batch_size=self.batch,
                       shuffle=False, epochs=1, verbose=0, callbacks=[clock])
        return steps * self.batch / clock.seconds()

    def infer(self, batches, size):
        # Keras' own one-batch call (its compiled predict function), as torch's forward
        # is called: a server calls the model per request, without predict()'s loop.
        return images_per_second(self.model.predict_on_batch, self.x[:size], batches)


class KerasAugmented(Keras):
    augment = True


class KerasDevice(Keras):
    """Ours under JAX with the batch already on the device, as the reference's GPU
    tensors are (the model-only figure on equal footing): Keras' own compiled training
    step (``model.train_function``, what ``fit`` runs) called on the model's state with
    device arrays, no host copy or state sync per step; inference is the model's
    stateless call, compiled, on the device batch. JAX only."""

    def __init__(self, arch, batch, x, y, convs_only=False):
        super().__init__(arch, batch, x, y, convs_only)
        self._on_device()

    @classmethod
    def of(cls, compiled, batch, x, y):
        """The form around a compiled Keras model of one's own (bench_variants.py)."""
        form = cls.__new__(cls)
        form.model, form.batch, form.x, form.y = compiled, batch, x, y
        form._on_device()
        return form

    def _on_device(self):
        import jax

        model, self.state = self.model, None
        self.x_dev, self.y_dev = jax.device_put(self.x), jax.device_put(self.y)
        self.forward = jax.jit(lambda trainable, other, images: model.stateless_call(
            trainable, other, images, training=False)[0])

    def _build(self):
        """The model, optimizer and compiled step built by one ordinary step (in the
        first, timed apart call: its compile time), then the state the step carries."""
        model = self.model
        model.train_on_batch(self.x, self.y)
        model.make_train_function()
        self.state = ([v.value for v in model.trainable_variables],
                      [v.value for v in model.non_trainable_variables],
                      [v.value for v in model.optimizer.variables],
                      [v.value for v in model.metrics_variables])

    def train(self, steps):
        import jax

        if self.state is None:
            self._build()
        batch = (self.x_dev, self.y_dev, None)
        start = time.perf_counter()
        for _ in range(steps):
            logs, self.state = self.model.train_function(self.state, iter([batch]))
        jax.block_until_ready(logs)
        return steps * self.batch / (time.perf_counter() - start)

    def infer(self, batches, size):
        if self.state is None:
            self._build()
        images = self.x_dev[:size]
        trainable, other = self.state[0], self.state[1]
        return images_per_second(
            lambda x: self.forward(trainable, other, x).block_until_ready(), images, batches)


class KerasTFLite:
    """Our model as deployed for inference: ``folding.inference_graph`` (BatchNorm and
    the input normalization folded), written as the SavedModel ``cli.py export`` writes
    and converted to the fp32 TFLite file, run by LiteRT (XNNPACK, one thread per core)
    on uint8 images. Inference only; the weights are the freshly built model's."""

    def __init__(self, arch, batch, x, y, convs_only=False):
        import tempfile

        from cmxl_keras import folding, inference, savedmodel, tflite

        folded = folding.inference_graph(keras_model(arch, batch, convs_only)[1])
        self.folder = tempfile.TemporaryDirectory(prefix="bench-tflite-")
        saved = os.path.join(self.folder.name, "saved_model")
        savedmodel.write_saved_model(folded, saved, serving=False)
        path = os.path.join(self.folder.name, inference.TFLITE_FILES["tflite"])
        with open(path, "wb") as f:
            f.write(tflite.convert_tflite(saved, "tflite"))
        self.run = inference.TFLiteRunner(path)
        self.x = x.astype("uint8")

    def train(self, steps):
        return None

    def infer(self, batches, size):
        return images_per_second(self.run, self.x[:size], batches)


class Torch:
    compiled = False

    def __init__(self, arch, batch, x, y, convs_only=False):
        import torch

        from reproduce import ref_torch

        torch.manual_seed(0)
        # On a GPU host the reference runs on the GPU, as the paper's script does.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = ref_torch.build(**arch)
        if convs_only:
            ref_torch.convs_only(self.model)
        self.model = self.model.to(device)
        # torch.compile (inductor, C++ on the CPU) compiles the model that the step and the
        # prediction call run; the optimizer step stays as the paper runs it.
        # dynamic=False: each batch size gets its own static graph (compiled in the
        # warm-up), as fast as a model compiled for that size alone.
        model = torch.compile(self.model, dynamic=False) if self.compiled else self.model
        amp = PRECISION != "float32"  # fp16 autocast + GradScaler, on a GPU only
        self.step = ref_torch.make_train_step(model, parameters=self.model.parameters(),
                                              amp=amp)
        self.predict = ref_torch.make_predict(model, amp=amp)
        self.x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)  # NCHW, as theirs
        self.y = torch.from_numpy(y.astype("int64")).to(device)
        self.batch = batch

    def train(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.step(self.x, self.y)
        return steps * self.batch / (time.perf_counter() - start)

    def infer(self, batches, size):
        return images_per_second(self.predict, self.x[:size], batches)


class TorchCompiled(Torch):
    compiled = True


class TorchTuned(Torch):
    """The reference as a competent PyTorch user trains it on a GPU: ``cudnn.benchmark``,
    channels_last tensors, ``torch.compile`` (inductor), AdamW with its fused CUDA kernel,
    fp16 autocast with GradScaler, the inputs already on the device, and no read-back per
    step (the loss is read once, after the timed steps). On a CPU the same code runs
    without the CUDA-only parts (no fusion, no autocast): a rehearsal."""

    def __init__(self, arch, batch, x, y, convs_only=False):
        import torch

        from reproduce import ref_torch

        torch.manual_seed(0)
        cuda = torch.cuda.is_available()
        device = "cuda" if cuda else "cpu"
        torch.backends.cudnn.benchmark = True
        self.model = ref_torch.build(**arch)
        if convs_only:
            ref_torch.convs_only(self.model)
        self.model = self.model.to(device, memory_format=torch.channels_last)
        model = torch.compile(self.model, dynamic=False)
        amp = cuda and PRECISION != "float32"
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.005, weight_decay=0.01,
                                      fused=cuda)
        criterion = torch.nn.CrossEntropyLoss()
        scaler = torch.amp.GradScaler("cuda", enabled=amp)

        def step(images, labels):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss = criterion(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return loss

        self.step = step
        self.predict = ref_torch.make_predict(model, amp=amp)
        self.x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(
            device, memory_format=torch.channels_last)
        self.y = torch.from_numpy(y.astype("int64")).to(device)
        self.batch = batch

    def train(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.step(self.x, self.y)
        loss.item()  # waits for the last step, on a GPU too
        return steps * self.batch / (time.perf_counter() - start)


class TorchLoader(Torch):
    """The paper's input path: its ``train.py`` transforms (RandomResizedCrop, flip,
    RandAugment, ColorJitter, ToTensor, Normalize, RandomErasing) on PIL images in a
    ``DataLoader`` with ``--workers`` worker processes, shuffled, each batch copied to the
    device before the step, as that script does. The images are the batch's, cycled.
    Training only (the script evaluates from the same loaders without augmentation)."""

    def __init__(self, arch, batch, x, y, convs_only=False):
        super().__init__(arch, batch, x, y, convs_only)
        import torch
        from PIL import Image

        from reproduce import ref_torch

        # The loader normalizes, so the step runs the network without the model's own
        # normalization (``net``), as the paper's network has none.
        self.step = ref_torch.make_train_step(self.model.net, amp=PRECISION != "float32")
        self.device = self.x.device
        images = [Image.fromarray(image) for image in x.astype("uint8")]
        labels = [int(label) for label in y]
        transform = ref_torch.paper_train_transform()

        class Cycled(torch.utils.data.Dataset):
            def __len__(self):
                return 1 << 20

            def __getitem__(self, index):
                return transform(images[index % len(images)]), labels[index % len(labels)]

        self.dataset = Cycled()

    def train(self, steps):
        # A fresh loader, as each epoch of the script starts one; timed from the end of
        # the first step (the workers' start-up left out, like fit's in ours).
        import torch

        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch,
                                             shuffle=True, num_workers=WORKERS)
        start = None
        for i, (images, labels) in enumerate(loader):
            self.step(images.to(self.device), labels.to(self.device))
            if i == 0:
                start = time.perf_counter()
            if i == max(steps, 1):
                break
        return max(steps, 1) * self.batch / (time.perf_counter() - start)

    def infer(self, batches, size):
        return None


# A framework form is ``name`` or ``name+allocator``.
RUNNERS = {"keras": Keras, "keras-jax": Keras, "keras-jax-aug": KerasAugmented,
           "keras-jax-device": KerasDevice,
           "keras-tflite": KerasTFLite, "torch": Torch, "torch-compile": TorchCompiled,
           "torch-tuned": TorchTuned, "torch-loader": TorchLoader}
# Set from the command line in each worker (bench_train.py's --precision, --workers).
PRECISION = "float32"
WORKERS = 8
