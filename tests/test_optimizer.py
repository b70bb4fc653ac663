"""The fused AdamW (``poetry_gpt/train/optimizer.py``) against tf_keras's own AdamW."""
import numpy as np
import pytest

import poetry_gpt  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras

from poetry_gpt.train.optimizer import fused_adamw

SETTINGS = dict(learning_rate=1e-2, weight_decay=0.1, beta_1=0.9, beta_2=0.99, epsilon=1e-8, global_clipnorm=1.0)
SHAPES = {"h/c_fc/weight": (12, 7), "h/c_fc/bias": (7,), "h/ln_1/gamma": (12,), "wte/weight": (9, 12)}


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [tf.Variable(rng.normal(0, 0.5, shape).astype(np.float32), name=name) for name, shape in SHAPES.items()]


def _optimizer(make, variables):
    opt = make(**SETTINGS)
    opt.exclude_from_weight_decay(var_names=["bias", "ln_", "gamma", "beta"])
    opt.build(variables)
    return opt


def _gradients(step, seed=1):
    """Gradients whose global norm is far above the clip norm at even steps and below it at odd ones."""
    rng = np.random.default_rng(seed + step)
    size = 3.0 if step % 2 == 0 else 0.01
    return [tf.constant(rng.normal(0, size, shape).astype(np.float32)) for shape in SHAPES.values()]


def _train(make, steps=6, sparse=False):
    variables = _variables()
    opt = _optimizer(make, variables)

    @tf.function
    def apply(grads):
        if sparse:  # the embedding's gradient as rows (an embedding lookup), a row repeated
            rows = tf.constant([0, 3, 3, 8])
            grads = grads[:3] + [tf.IndexedSlices(tf.gather(grads[3], rows), rows, tf.constant(SHAPES["wte/weight"]))]
        opt.apply_gradients(zip(grads, variables))

    for step in range(steps):
        apply(_gradients(step))
    return variables, opt


def _slots(opt, variables):
    index = [opt._index_dict[opt._var_key(v)] for v in variables]  # tf_keras keeps the slots in these lists
    return [(opt._momentums[i].numpy(), opt._velocities[i].numpy()) for i in index]


def _assert_close(fused, stock, rtol=2e-6):
    for f, s in zip(fused, stock):
        np.testing.assert_allclose(np.asarray(f), np.asarray(s), rtol=rtol, atol=1e-8)


def _stock(**kwargs):
    return tf_keras.optimizers.AdamW(**kwargs)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_the_fused_update_equals_tf_keras_adamw(sparse):
    fused_vars, fused = _train(fused_adamw, sparse=sparse)
    stock_vars, stock = _train(_stock, sparse=sparse)
    assert fused.fused and not stock.jit_compile
    start = _variables()
    moved = [np.abs(f.numpy() - s.numpy()).max() for f, s in zip(fused_vars, start)]
    assert min(moved) > 1e-3  # every variable was updated
    _assert_close([v.numpy() for v in fused_vars], [v.numpy() for v in stock_vars])
    for (fm, fv), (sm, sv) in zip(_slots(fused, fused_vars), _slots(stock, stock_vars)):
        _assert_close([fm, fv], [sm, sv])
    assert int(fused.iterations) == int(stock.iterations) == 6


def test_weight_decay_reaches_only_the_matrices():
    """With zero gradients only the decay moves a weight: the matrices shrink by lr·wd each step, the bias and
    the layer-norm scale stay."""
    variables = _variables()
    start = [v.numpy() for v in variables]
    opt = _optimizer(fused_adamw, variables)
    opt.apply_gradients(zip([tf.zeros(s) for s in SHAPES.values()], variables))
    factor = 1 - SETTINGS["learning_rate"] * SETTINGS["weight_decay"]
    for (name, _), before, var in zip(SHAPES.items(), start, variables):
        expected = before * factor if name.endswith("weight") else before
        np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6)


def test_checkpoints_move_between_the_fused_and_the_stock_optimizer(tmp_path):
    fused_vars, fused = _train(fused_adamw, steps=3)
    path = tf.train.Checkpoint(optimizer=fused, v=fused_vars).write(str(tmp_path / "ckpt"))
    stock_vars = _variables(seed=5)
    stock = _optimizer(_stock, stock_vars)
    tf.train.Checkpoint(optimizer=stock, v=stock_vars).read(path).assert_consumed()
    assert int(stock.iterations) == 3
    for (fm, fv), (sm, sv) in zip(_slots(fused, fused_vars), _slots(stock, stock_vars)):
        np.testing.assert_array_equal(fm, sm)
        np.testing.assert_array_equal(fv, sv)


def test_two_fused_optimizers_update_only_their_own_variables():
    """Two models of the same shapes in one process: each program captures its own variables."""
    first, second = _variables(seed=0), _variables(seed=2)
    opt_a, opt_b = _optimizer(fused_adamw, first), _optimizer(fused_adamw, second)
    second_before = [v.numpy() for v in second]
    opt_a.apply_gradients(zip(_gradients(0), first))
    for before, var in zip(second_before, second):
        np.testing.assert_array_equal(var.numpy(), before)
    opt_b.apply_gradients(zip(_gradients(1), second))
    reference, ref_opt = _variables(seed=2), None
    ref_opt = _optimizer(_stock, reference)
    ref_opt.apply_gradients(zip(_gradients(1), reference))
    _assert_close([v.numpy() for v in second], [v.numpy() for v in reference])


def test_under_a_distribution_strategy_the_stock_update_runs():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        variables = _variables()
        opt = _optimizer(fused_adamw, variables)
    assert not opt.fused

    @tf.function
    def step(grads):
        strategy.run(lambda g: opt.apply_gradients(zip(g, variables)), args=(grads,))

    step(_gradients(0))
    reference = _variables()
    _optimizer(_stock, reference).apply_gradients(zip(_gradients(0), reference))
    _assert_close([v.numpy() for v in variables], [v.numpy() for v in reference])
