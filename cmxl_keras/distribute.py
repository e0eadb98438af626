"""Training on several devices or machines with TensorFlow's own tf.distribute.

``--strategy`` (config key ``strategy``):

- ``auto``: MirroredStrategy when several GPUs are visible, else the default
  (single-device) strategy;
- ``one_device``: OneDeviceStrategy on the first GPU, else the CPU;
- ``mirrored``: MirroredStrategy over every visible GPU (or, with no GPU, over the
  logical CPU devices: see ``CMXL_CPU_DEVICES``);
- ``multi_worker``: MultiWorkerMirroredStrategy, configured by the standard
  ``TF_CONFIG`` environment variable (the cluster and this process's task).

The config's ``batch_size`` is the *global* batch: Keras splits each batch across the
replicas, so the optimizer sees the same number of images per step as on one device
and the learning rate is left as configured (no linear scaling rule is applied behind
the user's back; raise ``lr_max`` yourself if you also raise the batch size).

With more than one replica the BatchNorm layers synchronize their batch statistics
across replicas (Keras' ``synchronized=True``), so a step on N devices computes what a
step on one device computes with the whole batch.

Every worker of a multi-worker run executes the same program, including the saves
(saving may read distributed variables collectively); only the chief writes into the
run folder, the other workers write into a scratch folder that is removed at the end.
"""

import json
import os

from cmxl_keras.config import STRATEGIES
from cmxl_keras.errors import ConfigError


# Splits the CPU into N logical devices before TensorFlow starts, so that the
# mirrored strategy can be tried (and tested) on a machine without GPUs.
CPU_DEVICES_ENV = "CMXL_CPU_DEVICES"


def _tensorflow_backend():
    import keras

    return keras.backend.backend() == "tensorflow"


def _split_cpu(tf):
    raw = os.environ.get(CPU_DEVICES_ENV, "").strip()
    if not raw:
        return
    try:
        count = int(raw)
        if count < 1:
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(
            f"{CPU_DEVICES_ENV}={raw!r} is not a positive integer. Set it to the number of "
            f"logical CPU devices to split the CPU into (e.g. 2), or unset it.") from None
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:  # already initialized (e.g. a second call in one process)
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise ConfigError(
                f"{CPU_DEVICES_ENV}={count}: TensorFlow had already started with "
                f"{len(tf.config.list_logical_devices('CPU'))} CPU devices. Set the variable "
                f"before the process starts.") from None


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    fix = ('Set it on every machine, for example TF_CONFIG=\'{"cluster": {"worker": '
           '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
           '(index 1 on the second machine). '
           'See docs/gpus.md, "Training on several GPUs or machines".')
    if not raw:
        raise ConfigError(f"--strategy multi_worker needs the TF_CONFIG environment variable, "
                          f"which is not set. {fix}")
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        members = cluster[task["type"]]
        address = members[int(task["index"])]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ConfigError(
            f"TF_CONFIG={raw!r} is not a valid cluster description ({type(error).__name__}: "
            f"{error}); it needs a 'cluster' of host:port lists and a 'task' with a 'type' "
            f"and an 'index' into that list. {fix}") from None
    return spec, address


def make_strategy(name, log=print):
    """The tf.distribute strategy for ``name``; ``None`` on a non-TensorFlow backend.

    Must run before TensorFlow executes anything (multi-worker and the logical CPU split
    both configure the runtime).
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r} is unknown; choose one of "
                          f"{', '.join(STRATEGIES)}.")
    if not _tensorflow_backend():
        return _keras_distribution(name, log)
    import tensorflow as tf

    if name == "multi_worker":
        spec, address = _check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log(f"strategy: multi_worker, task {spec['task']['type']} {spec['task']['index']} "
            f"({address}), {strategy.num_replicas_in_sync} replicas in the cluster")
        return strategy
    _split_cpu(tf)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "one_device":
        device = gpus[0].name if gpus else "/cpu:0"
        log(f"strategy: one_device on {device}")
        return tf.distribute.OneDeviceStrategy(device)
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    log(f"strategy: mirrored over {len(devices)} device(s): {', '.join(devices)}")
    return strategy


def _keras_distribution(name, log):
    """On JAX, ``mirrored`` (and ``auto`` with several accelerators) is Keras' own
    ``keras.distribution.DataParallel``: the model is replicated on every JAX device and
    each batch is split across them; the compiled step then computes its BatchNorm
    statistics over the whole batch by itself. Returns None (no tf.distribute strategy)."""
    import keras

    backend = keras.backend.backend()
    if name in ("auto", "mirrored") and backend == "jax":
        import jax

        devices = jax.devices()
        several_accelerators = len(devices) > 1 and devices[0].platform != "cpu"
        if name == "mirrored" or several_accelerators:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            log(f"strategy: {name}, keras.distribution.DataParallel over {len(devices)} JAX "
                f"device(s): {', '.join(str(d) for d in devices)}")
        return None
    if name in ("auto", "one_device"):
        return None
    raise ConfigError(
        f"--strategy {name} needs the TensorFlow backend (tf.distribute), but Keras runs on "
        f"{backend!r}. Use --backend tensorflow"
        + (", or --strategy mirrored, which on JAX is keras.distribution.DataParallel over "
           "this machine's devices." if backend == "jax" else "."))


def cpu_collectives():
    """Whether a Keras DataParallel distribution spans several JAX *CPU* devices (the
    virtual devices of ``--xla_force_host_platform_device_count``), whose all-reduces
    run through XLA's in-process CPU collectives."""
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None or data_parallel_devices() < 2:
        return False
    return all(d.platform == "cpu" for d in distribution.device_mesh.devices.reshape(-1))


def check_cpu_collectives(jit_compile):
    """An eager (uncompiled) step under DataParallel over CPU devices is refused: see
    ``OneCollectiveProgramInFlight``."""
    if cpu_collectives() and not jit_compile:
        raise ConfigError(
            "jit_compile=false with keras.distribution.DataParallel over JAX CPU devices: "
            "an uncompiled step runs each op as its own all-reduce program, and XLA's CPU "
            "collectives deadlock when several are in flight. Use --set jit_compile=auto "
            "(compiled on JAX).")


def collective_callbacks():
    """The callbacks a run under DataParallel over CPU devices needs (else none)."""
    if not cpu_collectives():
        return []
    import jax
    import keras

    class OneCollectiveProgramInFlight(keras.callbacks.Callback):
        """Waits for each compiled train and test step to finish before the next starts.

        XLA's in-process CPU collectives (jaxlib 0.10.2) deadlock when several programs
        with all-reduces are in flight at once: with JAX's asynchronous dispatch one
        device starts the next program's all-reduce while the other is still in the
        previous one, and each waits for a partner that never arrives (0 % CPU, then
        XLA's collective timeout). Measured: 1,000 back-to-back sums of an array
        sharded over 2 CPU devices hang within seconds every time; with each waited for,
        5 x 5,000 never did. One compiled step is one program, so waiting at each
        step's end keeps one in flight. (GPUs order their collectives on streams and
        need none of this.)"""

        def on_train_batch_end(self, batch, logs=None):
            jax.block_until_ready(logs)

        def on_test_batch_end(self, batch, logs=None):
            jax.block_until_ready(logs)

    return [OneCollectiveProgramInFlight()]


def data_parallel_devices():
    """How many devices a Keras DataParallel distribution splits each batch over (1 if
    none is set)."""
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    return int(distribution.device_mesh.shape[0])


def replicas(strategy):
    return strategy.num_replicas_in_sync if strategy is not None else 1


def task(strategy):
    """``(task_type, task_id)`` of this process, ``(None, None)`` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the run folder: the chief task, else worker 0 of a
    cluster without a chief, else the only process."""
    task_type, task_id = task(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker" or task_id != 0:
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return "chief" not in cluster


def scope(strategy):
    """The strategy's scope, or a no-op context on other backends."""
    import contextlib

    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def prepare_model(model, strategy):
    """Works around two Keras 3 bugs under MultiWorkerMirroredStrategy; returns ``model``.

    Written here because no Keras release fixes them (keras-team/keras#20585: the
    TensorFlow tutorial's multi-worker example fails on Keras 3);
    tests/test_distribute.py runs two workers through this.

    1. Before the first step, Keras' TensorFlow trainer reads one distributed batch to
       build the metrics and optimizer symbolically, and reduces that batch across
       replicas eagerly. Under this strategy the eager collective fails ("Attempt to
       convert a value (PerReplica...) to a Tensor"). Only the batch's shapes matter
       there: the build is given the local replica's part instead.
    2. After each step Keras averages the per-replica logs with
       ``strategy.reduce("MEAN", value, axis=0)``, which fails on the scalar loss and
       metrics ("Invalid reduction dimension 0 for input with 0 dimensions"). The steps
       return each scalar as a 1-element vector, which that reduction averages into the
       same scalar.
    """
    if strategy is None:
        return model
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model
    original = model._maybe_symbolic_build

    def local_part(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local_part, next(batches))
                break
        return original(data_batch=data_batch)

    def vector_logs(step):
        def wrapped(data):
            return tf.nest.map_structure(
                lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data))

        return wrapped

    model._maybe_symbolic_build = symbolic_build
    model.train_step = vector_logs(model.train_step)
    model.test_step = vector_logs(model.test_step)
    return model
