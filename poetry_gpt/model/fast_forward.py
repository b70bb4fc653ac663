"""A faster training forward pass for transformers' ``TFGPT2LMHeadModel``, on the model's own variables.

The transformers layers compute GPT-2 with many small ops that are slow on a CPU: a
float causal mask multiplied in, a ``tf.pow`` GELU, a strided slice of the full
logits for the shift (its gradient scatters the whole [batch, time, vocab] tensor),
the generic sparse cross-entropy kernel. Here the same function is computed directly
from the model's weights with fewer, larger ops:

* matmuls in the compute dtype (bf16 uses AMX through oneDNN), bias adds fused;
* GPT-2's tanh GELU (``gelu_new``, also ``gelu_fast``) as one fused op; other activations of
  ``transformers.activations_tf`` (``gelu``, ``relu``, …) as transformers computes them, in float32;
* q/k/v by ``tf.split`` (no strided-slice gradients), an additive causal bias built once;
* in training, optionally, each poem of a packed row attending only to itself, its positions counted from its
  boundary (``poem_attention``): as the poem is seen when it is generated or scored, one poem a row;
* the next-token shift done on the labels, not the logits, and the cross-entropy in one
  XLA-compiled function (float32 inside, whatever the logits' dtype).

The variables are the model's own, so checkpoints and ``save_pretrained`` exports are
unchanged. With ``tuning=`` (``peft.Tuning``) the LoRA, adapter, prefix and new-embedding-row variables
are computed as well, and the model's frozen variables are read through ``tf.stop_gradient``.
``tests/test_fast_gpt2.py`` checks logits and loss against transformers (``tests/test_peft_model.py``: tuning).
"""
from __future__ import annotations

from ..data.datasets import IGNORE_INDEX

TANH_GELUS = ("gelu_new", "gelu_fast")  # the same tanh approximation of GELU: fused_ops.gelu
_CE = None


def activation(name: str):
    """The MLP activation of a GPT-2 whose config names ``name`` (as ``transformers.activations_tf``).

    Args:
        name: ``config.activation_function`` (``model.check_supported`` has refused the unsupported ones).
    """
    import tensorflow as tf
    from transformers.activations_tf import get_tf_activation

    from . import fused_ops

    if name in TANH_GELUS:
        return fused_ops.gelu
    act = get_tf_activation(name)
    return lambda x: tf.cast(act(tf.cast(x, tf.float32)), x.dtype)


def gpt2_hidden(lm, input_ids, training: bool = False, compute_dtype=None, dropout: float = 0.0, seed=None,
                tuning=None, boundary_id: int | None = None):
    """Final hidden states (after ``ln_f``) of a ``TFGPT2LMHeadModel``, flattened to [batch*time, width].

    Args:
        lm: a built ``TFGPT2LMHeadModel``.
        input_ids: int32 [batch, time], time ≤ the model context; attention is causal only (no padding mask:
            padding at the end of a row cannot influence earlier positions).
        training: apply dropout when ``dropout`` > 0.
        compute_dtype: dtype of the matmuls (e.g. ``tf.bfloat16``); default: the Keras policy's compute dtype.
        dropout: dropout rate on embeddings, attention weights and residual branches.
        seed: int [2] tensor: the dropout masks are a function of it (stateless dropout, each site's seed
            folded in from it), so a step can be replayed exactly; ``None`` draws one from the global generator.
        tuning: a ``peft.Tuning`` (its LoRA, adapters, prefixes and new embedding rows are computed, and frozen
            variables get no gradient), or ``None``: the model alone.
        boundary_id: the poem boundary id: each poem of a packed row attends only to itself and its positions
            count from its boundary (``poem_attention``); ``None``: the row is one sequence. A row holding one poem
            from its start gets the same result either way.
    """
    import tensorflow as tf
    import tf_keras

    from . import fused_ops

    tr = lm.transformer
    cfg = lm.config
    if compute_dtype is None:
        compute_dtype = tf.as_dtype(tf_keras.mixed_precision.global_policy().compute_dtype)
    n_head, eps, width = cfg.n_head, cfg.layer_norm_epsilon, cfg.n_embd
    head = width // n_head
    shape = tf.shape(input_ids)
    batch, time = shape[0], shape[1]
    drop = dropout if training and dropout > 0 else 0.0
    act = activation(cfg.activation_function)

    def c(v):
        return tf.cast(v, compute_dtype)

    read = (lambda v: v) if tuning is None else tuning.reader()

    def dense(x, conv, lora=None):
        y = fused_ops.bias_add(tf.matmul(x, c(read(conv.weight))), tf.reshape(read(conv.bias), [-1]))
        if lora is None:
            return y
        return y + tf.matmul(tf.matmul(x, c(lora[0] * tuning.cfg.lora_scale)), c(lora[1]))

    def query_key_value(x):
        """[batch*time, 3·width] → q, k, v [batch, head, time, head size], from one transpose (not three)."""
        return tf.unstack(tf.transpose(tf.reshape(x, [batch, time, 3, n_head, head]), [2, 0, 3, 1, 4]))

    if drop and seed is None:
        seed = tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int32)

    def dropped(x, site):
        if not drop:
            return x
        return tf.nn.experimental.stateless_dropout(x, drop, tf.random.experimental.stateless_fold_in(seed, site))

    emb = tr.wte.embeddings if tuning is None else tuning.embedding(read)
    if boundary_id is None:
        visible, wpe = None, read(tr.wpe.embeddings)[:time][None]  # the causal past of the row
    else:
        visible, positions = poem_attention(input_ids, boundary_id)
        wpe = tf.gather(read(tr.wpe.embeddings), positions)
    h = tf.gather(emb, input_ids) + wpe  # float32 residual stream
    h = tf.reshape(dropped(h, 0), [batch * time, width])  # dropout sites: 0, then 3i+1 … 3i+3 in layer i
    blocks = list(tr.h)
    x = fused_ops.layer_norm(h, read(blocks[0].ln_1.gamma), read(blocks[0].ln_1.beta), eps, compute_dtype)
    for i, block in enumerate(blocks):
        tuned = {} if tuning is None else tuning.layer(i)
        lora = tuned.get("lora", {})
        q, k, v = query_key_value(dense(x, block.attn.c_attn, lora.get("c_attn")))
        if "prefix" in tuned:
            pk, pv = (tf.transpose(tf.reshape(c(t), [1, -1, n_head, head]), [0, 2, 1, 3]) for t in tuned["prefix"])
            y = _prefix_attention(q, k, v, pk, pv, head ** -0.5, lambda w: dropped(w, 3 * i + 1), visible)
        else:
            w = dropped(fused_ops.causal_softmax(tf.matmul(q, k, transpose_b=True), head ** -0.5, visible), 3 * i + 1)
            y = tf.matmul(w, v)
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [batch * time, width])
        y = dropped(dense(y, block.attn.c_proj, lora.get("c_proj")), 3 * i + 2)
        h, x = fused_ops.add_layer_norm(h, y, read(block.ln_2.gamma), read(block.ln_2.beta), eps)
        m = dense(act(dense(x, block.mlp.c_fc, lora.get("c_fc"))), block.mlp.c_proj, lora.get("mlp_c_proj"))
        if "adapter" in tuned:
            m = m + _adapter(m, tuned["adapter"])
        m = dropped(m, 3 * i + 3)
        ln = blocks[i + 1].ln_1 if i + 1 < len(blocks) else tr.ln_f
        h, x = fused_ops.add_layer_norm(h, m, read(ln.gamma), read(ln.beta), eps)
    return x


def poem_attention(input_ids, boundary_id: int):
    """Which keys each position sees when every poem attends only to itself, and each token's position in its poem.

    Args:
        input_ids: int32 [batch, time]; a poem starts at each ``boundary_id`` (the tokens before a row's first
            boundary form a poem of their own).
        boundary_id: the poem boundary id.

    Returns:
        ``(visible, positions)``: bool [batch, 1, time, time] (key ≤ query, same poem) and int32 [batch, time].
    """
    import tensorflow as tf

    poem = tf.cumsum(tf.cast(tf.equal(input_ids, boundary_id), tf.int32), axis=1)
    time = tf.shape(input_ids)[1]
    causal = tf.linalg.band_part(tf.ones([time, time], tf.bool), -1, 0)
    visible = tf.logical_and(tf.equal(poem[:, :, None], poem[:, None, :]), causal)
    positions = tf.reduce_sum(tf.cast(visible, tf.int32), axis=-1) - 1
    return visible[:, None], positions


def _prefix_attention(q, k, v, pk, pv, scale: float, drop, visible=None):
    """Attention of every query over a layer's prefix slots and its causal past, in one softmax (float32).

    Args:
        q, k, v: [batch, head, time, head_dim] in the compute dtype.
        pk, pv: the prefix keys and values, [1, head, prefix, head_dim].
        scale: 1/sqrt(head_dim).
        drop: the attention-weight dropout (``w -> w``).
        visible: which of the row's keys each query sees, bool [batch, 1, time, time] (``poem_attention``), or
            ``None``: its causal past. The prefix slots are seen by every query.
    """
    import tensorflow as tf

    P = pk.shape[2]
    scores = tf.concat([tf.matmul(q, pk, transpose_b=True), tf.matmul(q, k, transpose_b=True)], axis=-1)
    shape = tf.shape(scores)
    if visible is None:
        visible = tf.linalg.band_part(tf.ones(shape[-2:], tf.bool), -1, P)  # key j ≤ query i + P: prefix + past
    else:
        visible = tf.pad(visible, [[0, 0], [0, 0], [0, 0], [P, 0]], constant_values=True)  # prefix: all see it
    scores = tf.where(visible, tf.cast(scores, tf.float32) * scale, -1e9)
    w = drop(tf.cast(tf.nn.softmax(scores, axis=-1), q.dtype))
    return tf.matmul(w[..., :P], pv) + tf.matmul(w[..., P:], v)


def _adapter(m, weights):
    """A Houlsby adapter's branch ``gelu_new(m @ D + d) @ U + u`` in ``m``'s dtype (``weights`` = (D, d, U, u),
    float32; the biases' gradients summed in float32, ``fused_ops.bias_add``)."""
    import tensorflow as tf

    from . import fused_ops

    down, d, up, u = weights
    hidden = fused_ops.gelu(fused_ops.bias_add(tf.matmul(m, tf.cast(down, m.dtype)), d))
    return fused_ops.bias_add(tf.matmul(hidden, tf.cast(up, m.dtype)), u)


def head_logits(lm, h, tuning=None):
    """The tied LM head: [N, vocab] logits of hidden states ``h`` [N, width], as ``h.dtype``'s matmul gives them.

    Args:
        lm: the ``TFGPT2LMHeadModel`` (its ``wte`` is the head).
        h: final hidden states from ``gpt2_hidden``.
        tuning: the ``peft.Tuning`` given to ``gpt2_hidden`` (its embedding is the head), or ``None``.
    """
    import tensorflow as tf

    emb = lm.transformer.wte.embeddings if tuning is None else tuning.embedding(tuning.reader())
    return tf.matmul(h, tf.cast(emb, h.dtype), transpose_b=True)


def gpt2_logits(lm, input_ids, training: bool = False, compute_dtype=None, dropout: float = 0.0, seed=None,
                tuning=None, boundary_id: int | None = None):
    """Logits [batch, time, vocab] (float32) of a ``TFGPT2LMHeadModel`` (arguments: see ``gpt2_hidden``)."""
    import tensorflow as tf

    logits = head_logits(lm, gpt2_hidden(lm, input_ids, training, compute_dtype, dropout, seed, tuning, boundary_id),
                         tuning)
    shape = tf.shape(input_ids)
    return tf.cast(tf.reshape(logits, [shape[0], shape[1], -1]), tf.float32)


def _cross_entropy():
    """Summed cross-entropy of [N, V] logits against [N] labels (−100 ignored), compiled with XLA."""
    global _CE
    if _CE is None:
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def ce(logits, labels):
            logits = tf.cast(logits, tf.float32)
            valid = labels != IGNORE_INDEX
            safe = tf.where(valid, labels, 0)
            per_token = tf.reduce_logsumexp(logits, axis=-1) - tf.gather(logits, safe, batch_dims=1)
            mask = tf.cast(valid, tf.float32)
            return tf.reduce_sum(per_token * mask), tf.reduce_sum(mask)

        _CE = ce
    return _CE


def lm_loss_terms(lm, input_ids, labels, training: bool = False, compute_dtype=None, dropout: float = 0.0,
                  seed=None, tuning=None, boundary_id: int | None = None):
    """Sum of next-token cross-entropies and the number of predicted tokens.

    Position t predicts ``labels[t+1]`` (the shift is done on the labels, so the model's
    logits are never sliced); the last position and labels of −100 are ignored.

    Args:
        lm: a built ``TFGPT2LMHeadModel``.
        input_ids: int32 [batch, time].
        labels: int32 [batch, time], usually ``input_ids`` with −100 on padding.
        training: training mode (dropout).
        compute_dtype: matmul dtype (default: the Keras policy's).
        dropout: dropout rate.
        seed: the dropout seed (see ``gpt2_hidden``).
        tuning: a ``peft.Tuning`` or ``None`` (see ``gpt2_hidden``).
        boundary_id: each poem attends only to itself (see ``gpt2_hidden``), or ``None``.

    Returns:
        ``(loss_sum, count)``, both float32 scalars.
    """
    import tensorflow as tf

    logits = head_logits(lm, gpt2_hidden(lm, input_ids, training, compute_dtype, dropout, seed, tuning, boundary_id),
                         tuning)
    batch = tf.shape(labels)[0]
    target = tf.concat([labels[:, 1:], tf.fill([batch, 1], tf.constant(IGNORE_INDEX, labels.dtype))], axis=1)
    return _cross_entropy()(logits, tf.reshape(target, [-1]))
