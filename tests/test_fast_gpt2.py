"""The fast training forward (fast_gpt2 + fused_ops) computes what transformers' TFGPT2LMHeadModel computes."""
import numpy as np
import pytest

import poetry_gpt  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from poetry_gpt.model import fused_ops
from poetry_gpt.config import ModelConfig
from poetry_gpt.model.fast_forward import IGNORE_INDEX, gpt2_logits, lm_loss_terms
from poetry_gpt.model.gpt2 import build_model
from poetry_gpt.data.vocab import CharVocab


@pytest.fixture(scope="module")
def lm():
    vocab = CharVocab(["[PAD]", "[UNK]", "[SEP]"] + [chr(0x4E00 + i) for i in range(97)])
    model = build_model(ModelConfig(n_layer=2, n_embd=32, n_head=4, n_ctx=32), vocab, seed=7)
    # non-trivial layer-norm parameters and biases, so a wrong formula cannot hide behind 1s and 0s
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        if "ln_" in v.name or "bias" in v.name:
            v.assign(v + rng.normal(0, 0.2, v.shape).astype(np.float32))
    return model


BF16_EPS = 2.0 ** -8  # bf16 keeps 8 significant bits: one rounding moves a value by up to half of this


def _ids(batch=3, time=17, vocab=100, seed=1):
    return tf.constant(np.random.default_rng(seed).integers(3, vocab, (batch, time)), tf.int32)


def relative_error(got, ref) -> float:
    """‖got − ref‖ / ‖ref‖ (1.0 for an all-zero ``got``, whatever the scale of ``ref``)."""
    got, ref = np.asarray(tf.convert_to_tensor(got)), np.asarray(tf.convert_to_tensor(ref))
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def assert_relatively_close(got, ref, bound: float, what: str = "") -> None:
    """The error is below ``bound`` relative to the reference's norm, and no element is off by more than
    4 × ``bound`` × the largest reference value (so a few wrong elements cannot hide in the norm)."""
    got, ref = np.asarray(tf.convert_to_tensor(got)), np.asarray(tf.convert_to_tensor(ref))
    assert relative_error(got, ref) < bound, (what, relative_error(got, ref), bound)
    assert np.max(np.abs(got - ref)) < 4 * bound * np.max(np.abs(ref)), (what, np.max(np.abs(got - ref)))


def _reference_gradients(lm, ids):
    """Loss and gradients of the mean next-token cross-entropy computed by transformers (float32)."""
    with tf.GradientTape() as tape:
        logits = lm(input_ids=ids, training=False).logits[:, :-1]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids[:, 1:], logits=logits))
    return loss, tape.gradient(loss, lm.trainable_variables)


def _fast_gradients(lm, ids, dtype):
    """Loss and gradients of the same loss through fast_gpt2 with ``dtype`` matmuls."""
    with tf.GradientTape() as tape:
        s, n = lm_loss_terms(lm, ids, ids, compute_dtype=dtype)
        loss = s / n
    return loss, tape.gradient(loss, lm.trainable_variables)


def test_logits_match_transformers_fp32(lm):
    ids = _ids()
    ref = lm(input_ids=ids, training=False).logits
    got = gpt2_logits(lm, ids, compute_dtype=tf.float32)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=2e-4, rtol=1e-4)


def test_logits_bf16_close_to_fp32(lm):
    ids = _ids()
    ref = lm(input_ids=ids, training=False).logits.numpy()
    got = gpt2_logits(lm, ids, compute_dtype=tf.bfloat16).numpy()
    # a few bf16 roundings deep (measured: 0.0038 relative, about one ulp); a wrong op is off by far more
    assert_relatively_close(got, ref, 2 * BF16_EPS, "logits")


def test_loss_terms_equal_shifted_cross_entropy_with_padding_ignored(lm):
    ids = _ids(batch=2, time=12)
    labels = ids.numpy().copy()
    labels[0, 9:] = IGNORE_INDEX  # padding at the end of row 0
    labels = tf.constant(labels)
    loss_sum, count = lm_loss_terms(lm, ids, labels, compute_dtype=tf.float32)
    logits = lm(input_ids=ids).logits.numpy()[:, :-1]
    target = labels.numpy()[:, 1:]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    mask = target != IGNORE_INDEX
    expected = -np.take_along_axis(logp, np.where(mask, target, 0)[..., None], -1)[..., 0][mask].sum()
    assert int(count.numpy()) == mask.sum() == 11 + 8
    np.testing.assert_allclose(loss_sum.numpy(), expected, rtol=1e-4)


def test_gradients_match_transformers_fp32(lm):
    ids = _ids(batch=2, time=9)
    loss, fast = _fast_gradients(lm, ids, tf.float32)
    ref_loss, ref = _reference_gradients(lm, ids)
    np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=1e-5)
    for v, a, b in zip(lm.trainable_variables, fast, ref):
        a = tf.convert_to_tensor(a).numpy()
        b = tf.convert_to_tensor(b).numpy()
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-3, err_msg=v.name)


def test_every_gradient_in_bf16_matches_fp32(lm):
    """Each variable's bf16 gradient is within a few bf16 roundings of transformers' float32 one (measured:
    at most 0.009 relative), so a layer whose gradient is dropped or wrong (error ≈ 1) fails."""
    ids = _ids(batch=2, time=9)
    loss, fast = _fast_gradients(lm, ids, tf.bfloat16)
    ref_loss, ref = _reference_gradients(lm, ids)
    assert abs(float(loss) - float(ref_loss)) < BF16_EPS * float(ref_loss)
    assert len(fast) == len(ref) == 4 + 12 * 2  # embeddings, ln_f, 12 per block: none left out
    for v, a, b in zip(lm.trainable_variables, fast, ref):
        assert a is not None, v.name
        assert_relatively_close(a, b, 6 * BF16_EPS, v.name)


@pytest.mark.parametrize("settings", [{"activation_function": "relu", "n_inner": 48},
                                      {"activation_function": "gelu"}, {"activation_function": "gelu_fast"}],
                         ids=["relu-inner-48", "erf-gelu", "gelu-fast"])
def test_other_activations_and_inner_width_train_and_sample_as_transformers(settings):
    """A GPT-2 with another activation or MLP width is trained (fast path) and sampled (sampler) as transformers
    computes it."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from poetry_gpt.model.cached_gpt2 import CachedGPT2

    tf.keras.utils.set_random_seed(3)
    # weights large enough that MLP inputs reach |x| ~ 1, where the GELU approximations differ by ~1e-3
    lm = TFGPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.2, **settings))
    ids = _ids(batch=2, time=11)
    ref = lm(input_ids=ids, training=False).logits.numpy()
    got = gpt2_logits(lm, ids, compute_dtype=tf.float32).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)
    cached = CachedGPT2(lm)
    last, _ = cached.prefill(cached.weights(), ids, tf.constant([11, 11]))
    np.testing.assert_allclose(last.numpy(), ref[:, -1], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_fused_ops_match_autodiff(dtype):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0, 1.5, (6, 8)).astype(np.float32))
    y = tf.constant(rng.normal(0, 1.0, (6, 8)).astype(np.float32))
    gamma = tf.constant(rng.normal(1, 0.3, 8).astype(np.float32))
    beta = tf.constant(rng.normal(0, 0.3, 8).astype(np.float32))
    scores = tf.constant(rng.normal(0, 2, (2, 5, 5)).astype(np.float32))
    # measured: float32 ≤ 3e-7, bf16 ≤ 3.2e-3 (the inputs themselves are rounded to bf16)
    bound = 1e-6 if dtype == tf.float32 else 2 * BF16_EPS

    def ref_gelu(v):
        return 0.5 * v * (1 + tf.tanh(0.7978845608028654 * (v + 0.044715 * v ** 3)))

    def ref_ln(v, g, b):
        mean, var = tf.nn.moments(v, axes=[-1], keepdims=True)
        return (v - mean) / tf.sqrt(var + 1e-5) * g + b

    def ref_softmax(s):
        mask = tf.linalg.band_part(tf.ones([5, 5]), -1, 0)
        return tf.nn.softmax(s * 0.5 + (1 - mask) * -1e9, axis=-1)

    weights = tf.constant(rng.normal(0, 1, (6, 8)).astype(np.float32))
    sweights = tf.constant(rng.normal(0, 1, (2, 5, 5)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, y, gamma, beta, scores])
        g_fast = tf.cast(fused_ops.gelu(tf.cast(x, dtype)), tf.float32) * weights
        g_ref = ref_gelu(x) * weights
        h2, out = fused_ops.add_layer_norm(x, tf.cast(y, dtype), gamma, beta, 1e-5)
        ln_fast = tf.cast(out, tf.float32) * weights + h2 * weights * 0.3
        ln_ref = ref_ln(x + y, gamma, beta) * weights + (x + y) * weights * 0.3
        p_fast = tf.cast(fused_ops.causal_softmax(tf.cast(scores, dtype), 0.5), tf.float32) * sweights
        p_ref = ref_softmax(scores) * sweights
    for fast, ref, wrt in ((g_fast, g_ref, [x]), (ln_fast, ln_ref, [x, y, gamma, beta]), (p_fast, p_ref, [scores])):
        assert_relatively_close(fast, ref, bound)
        for i, (a, b) in enumerate(zip(tape.gradient(fast, wrt), tape.gradient(ref, wrt))):
            assert_relatively_close(a, b, bound, i)


def test_bias_gradient_is_the_float32_sum_of_a_bf16_gradient():
    """``fused_ops.bias_add``'s bias gradient is the column sum of the bf16 upstream gradient taken in float32
    (TensorFlow's own ``BiasAddGrad`` sums in bf16; a bf16 sum rounded once would be ~2e-3 off)."""
    rng = np.random.default_rng(5)
    dy = tf.cast(tf.constant(rng.normal(0.001, 0.01, (4096, 48)).astype(np.float32)), tf.bfloat16)
    y = tf.constant(rng.normal(0, 1, (4096, 48)).astype(np.float32))
    bias = tf.constant(rng.normal(0, 1, 48).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(bias)
        out = fused_ops.bias_add(tf.cast(y, tf.bfloat16), bias)
    grad = tape.gradient(out, bias, output_gradients=dy)
    assert out.dtype == tf.bfloat16 and grad.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), tf.nn.bias_add(tf.cast(y, tf.bfloat16), tf.cast(bias, tf.bfloat16)))
    exact = tf.reduce_sum(tf.cast(dy, tf.float64), axis=0)
    assert relative_error(tf.cast(grad, tf.float64), exact) < 1e-6


def test_the_models_bias_gradients_in_bf16_are_float32_sums(lm):
    """Under bf16 every dense layer's bias gradient is a float32 sum: nearly all its values carry more bits than
    bf16 holds (a bf16 sum, as ``BiasAddGrad``'s, has none)."""
    _, fast = _fast_gradients(lm, _ids(batch=4, time=32), tf.bfloat16)
    biases = [(v.name, g.numpy().ravel()) for v, g in zip(lm.trainable_variables, fast)
              if "bias" in v.name and "ln_" not in v.name]
    assert len(biases) == 4 * 2  # c_attn, c_proj, c_fc, mlp c_proj in each of the 2 blocks
    for name, g in biases:
        as_bf16 = tf.cast(tf.cast(g, tf.bfloat16), tf.float32).numpy()
        assert np.mean(g != as_bf16) > 0.9, name


def _packed_row():
    """A row as training packs it: the end of a poem, two whole poems after ``[SEP]`` (id 2), a poem's start."""
    rng = np.random.default_rng(3)
    poem = lambda n: [int(t) for t in rng.integers(3, 100, n)]  # noqa: E731
    return poem(4) + [2] + poem(9) + [2] + poem(12) + [2] + poem(3)


def test_poem_attention_computes_each_poem_as_if_alone(lm):
    """With ``boundary_id``, every poem of a packed row gets the logits transformers gives it alone (positions
    from 0, nothing of the other poems seen), and the summed loss is the poems' losses added."""
    from helpers import loss_poem_by_poem

    row = _packed_row()
    ids = tf.constant([row], tf.int32)
    logits = gpt2_logits(lm, ids, compute_dtype=tf.float32, boundary_id=2).numpy()[0]
    starts = [0] + [i for i, t in enumerate(row) if t == 2] + [len(row)]
    for a, b in zip(starts[:-1], starts[1:]):
        alone = lm(input_ids=tf.constant([row[a:b]], tf.int32)).logits.numpy()[0]
        np.testing.assert_allclose(logits[a:b], alone, atol=2e-5, rtol=0)
    whole_row = gpt2_logits(lm, ids, compute_dtype=tf.float32).numpy()[0]
    assert np.abs(whole_row[starts[2]:] - logits[starts[2]:]).max() > 1e-2  # the default sees the whole row
    loss_sum, count = lm_loss_terms(lm, ids, ids, compute_dtype=tf.float32, boundary_id=2)
    assert int(count) == len(row) - 1
    assert float(loss_sum) == pytest.approx(float(loss_poem_by_poem(lm, row, 2)), rel=1e-5)


def test_poem_attention_gradients_are_the_poems_gradients(lm):
    """The gradient of a packed row's loss under poem attention is the sum of its poems' gradients, each poem
    computed alone by transformers (float32): the masked softmax's and the position gather's gradients."""
    from helpers import loss_poem_by_poem

    row = _packed_row()
    with tf.GradientTape() as tape:
        fast, _ = lm_loss_terms(lm, tf.constant([row], tf.int32), tf.constant([row], tf.int32),
                                compute_dtype=tf.float32, boundary_id=2)
    got = tape.gradient(fast, lm.trainable_variables)
    with tf.GradientTape() as tape:
        total = loss_poem_by_poem(lm, row, 2)
    ref = tape.gradient(total, lm.trainable_variables)
    for v, g, r in zip(lm.trainable_variables, got, ref):
        assert_relatively_close(tf.convert_to_tensor(g), tf.convert_to_tensor(r), 1e-5, v.name)
