"""The reference's optimizer in Keras: PyTorch's AdamW, and loss scaling that counts
every step.

Both are small subclasses of Keras' own optimizers (registered, so a compiled model file
reloads with ``cmxl_keras`` imported; the models a run saves carry no optimizer).
tests/test_reference.py compares five steps of ``model.fit`` with the reference's PyTorch
loop, and tests/test_train.py the step counting under mixed precision.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cmxl_keras")
class TorchAdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with PyTorch's placement of epsilon.

    PyTorch divides by ``sqrt(v_hat) + eps`` (Adam's Algorithm 1); Keras by
    ``sqrt(v) + eps`` with the bias correction folded into the step size (the "epsilon
    hat" form), which is ``eps / sqrt(1 - beta_2**t)`` in PyTorch's terms: about 32
    times PyTorch's epsilon at the first step, decaying over thousands of steps. For a
    weight whose gradients are of the order of epsilon (a BatchNorm scale of a channel
    that barely matters, say) the two take different steps: measured 7e-4 apart on one
    such weight after five steps of the smoke model. Decoupled weight decay
    (``w -= lr * wd * w`` before the step) is Keras' own and already PyTorch's.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            raise ValueError("TorchAdamW does not implement amsgrad.")
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        bias_1 = 1 - ops.power(ops.cast(self.beta_1, dtype), step)
        bias_2 = 1 - ops.power(ops.cast(self.beta_2, dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bias_2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / bias_1), denominator))


@keras.saving.register_keras_serializable(package="cmxl_keras")
class CountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling, where a skipped step still counts as a step.

    Keras' ``LossScaleOptimizer`` skips a step whose gradients are not finite (normal in
    the first steps of float16 training, and whenever a growing scale overflows) without
    advancing ``iterations``. The one-cycle schedule, the checkpoints' step and resume
    all read ``iterations``, so each skip would leave the learning rate one step behind
    the reference (which sets the rate from its loop index, skipped or not) and make a
    resume re-run steps as a fake epoch. Here a skipped step advances the wrapped
    optimizer's ``iterations`` too, so it counts the training steps taken, applied or
    not. (Adam's bias correction then counts skipped steps as well; PyTorch's does not.
    The difference fades within a few hundred steps, and it arises where the one-cycle
    learning rate is near 0.)

    Overrides the two private methods of Keras 3's LossScaleOptimizer that handle a
    skipped step (the stateful one for TensorFlow, the stateless one for JAX);
    tests/test_train.py fails if a Keras upgrade changes them.
    """

    def save_own_variables(self, store):
        """Its own variables only (the loss scale and its step counters). Why: Keras'
        ``variables`` of a LossScaleOptimizer include the wrapped optimizer's, which that
        optimizer also saves itself (``optimizer/inner_optimizer``), so Keras' own
        ``save_own_variables`` stores every AdamW moment twice: a mixed-precision
        checkpoint of CM-XL is 99.4 MB where its state is 60 MB (measured)."""
        for i, variable in enumerate(self._variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        """Its own variables; a checkpoint written with Keras' layout (the wrapped
        optimizer's variables here as well) loads as Keras loads it."""
        if len(store.keys()) != len(self._variables):
            return super().load_own_variables(store)
        for i, variable in enumerate(self._variables):
            variable.assign(store[str(i)])

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)

    def _stateless_handle_non_finite_grads(self, optimizer_variables, trainable_variables):
        trainable, variables = super()._stateless_handle_non_finite_grads(
            optimizer_variables, trainable_variables)
        counter = self.inner_optimizer.iterations
        variables = [value + 1 if variable is counter else value
                     for variable, value in zip(self.variables, variables)]
        return trainable, variables
