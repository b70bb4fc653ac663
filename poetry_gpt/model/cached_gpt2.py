"""GPT-2 with a fixed-size KV cache: the forward pass the compiled sampler runs, on a model's own variables."""
from __future__ import annotations

import math

import tensorflow as tf

#: batch-1 decode-step matmuls run as this many row-block dots (see ``CachedGPT2._linear``): faster
#: decode on few cores, where XLA's matrix-vector dot leaves a core idle (figures: README, Performance)
SPLIT = 2
NEG = -1e9  # "impossible" logit; finite so that softmax never sees inf - inf
#: ``peft`` LoRA target -> the key of its (weight, bias) in a layer of ``CachedGPT2.weights()``
_LORA_KEYS = {"c_attn": "attn", "c_proj": "proj", "c_fc": "fc", "mlp_c_proj": "fc_proj"}
#: einsums of a prefix layer (``CachedGPT2._prefixed``): query × prefix keys, weights × prefix values,
#: weights × cached values — for prefill ([B, H, T, …]) and for a step ([B, H, …])
_PREFILL_EQS = ("bhtd,hpd->bhtp", "bhtp,hpd->bhtd", "bhts,bhsd->bhtd")
_STEP_EQS = ("bhd,hpd->bhp", "bhp,hpd->bhd", "bhs,bhsd->bhd")


class CachedGPT2:
    """A ``TFGPT2LMHeadModel``'s forward pass with a fixed-size KV cache.

    The weights are read from the model's variables at call time, so reloading or
    training the model is seen by already-compiled programs.

    A ``peft.Tuning`` is computed too, its variables also read at call time: LoRA products and new embedding
    rows are merged into the weights by ``weights()`` (once per program call, not per token); adapters run
    after each MLP; a layer's prefix slots are attended beside the cache in the same softmax (the cache keeps
    its ``[B, H, n_ctx, Dh]`` shape, so real tokens keep the whole ``n_ctx`` context).

    Args:
        model: a built ``TFGPT2LMHeadModel``.
        compute_dtype: ``tf.float32`` or ``tf.bfloat16`` for the matmuls (logits stay float32).
        split: row blocks per decode-step matmul (1 = plain dots).
        tuning: a ``peft.Tuning`` of ``model``, or ``None``.
    """

    def __init__(self, model, compute_dtype=tf.float32, split: int = SPLIT, tuning=None):
        from transformers.activations_tf import get_tf_activation

        cfg = model.config
        self.n_layer, self.n_head, self.n_embd = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.head_dim = cfg.n_embd // cfg.n_head
        self.n_ctx = cfg.n_positions
        self.vocab_size = cfg.vocab_size
        self.eps = cfg.layer_norm_epsilon
        self.act = get_tf_activation(cfg.activation_function)
        self.adapter_act = get_tf_activation("gelu_new")
        self.dtype = compute_dtype
        self.split = split
        self.tuning = tuning
        t = model.transformer
        self._vars = {
            "wte": t.wte.embeddings, "wpe": t.wpe.embeddings,
            "ln_f": (t.ln_f.gamma, t.ln_f.beta),
            "h": [dict(ln_1=(b.ln_1.gamma, b.ln_1.beta), ln_2=(b.ln_2.gamma, b.ln_2.beta),
                       attn=(b.attn.c_attn.weight, b.attn.c_attn.bias),
                       proj=(b.attn.c_proj.weight, b.attn.c_proj.bias),
                       fc=(b.mlp.c_fc.weight, b.mlp.c_fc.bias),
                       fc_proj=(b.mlp.c_proj.weight, b.mlp.c_proj.bias)) for b in t.h],
        }

    def cache_spec(self, batch: int) -> list:
        """The cache's shape, as ``prefill`` returns it: per layer ``(K, V)``, each ``[batch, H, n_ctx, Dh]``.

        Args:
            batch: rows.
        """
        spec = tf.TensorSpec([batch, self.n_head, self.n_ctx, self.head_dim], self.dtype)
        return [(spec, spec)] * self.n_layer

    def weights(self) -> dict:
        """The weights as tensors in the compute dtype (call inside the compiled function, once)."""
        cast = lambda v: tf.cast(v, self.dtype)  # noqa: E731
        w = tf.nest.map_structure(cast, self._vars)
        if self.tuning is not None:
            self._tune_weights(w, cast)
        return w

    def _tune_weights(self, w, cast) -> None:
        """Put the tuning into ``w`` (``weights()``): new embedding rows and LoRA (``wte``'s too) merged (in
        float32), adapter and prefix tensors added to their layers (prefix as [H, P, Dh])."""
        tu = self.tuning
        if tu.changes_embedding:
            w["wte"] = cast(tu.embedding())
        for i, layer in enumerate(w["h"]):
            tuned = tu.layer(i)
            for target, (A, B) in tuned.get("lora", {}).items():
                key = _LORA_KEYS[target]
                W, b = self._vars["h"][i][key]
                layer[key] = (cast(W + tu.cfg.lora_scale * tf.matmul(A, B)), layer[key][1])
            if "adapter" in tuned:
                down, d, up, u = (cast(v) for v in tuned["adapter"])
                layer["adapter"] = ((down, d[None]), (up, u[None]))  # biases as Conv1D's [1, n]
            if "prefix" in tuned:
                layer["prefix"] = tuple(tf.transpose(self._heads(cast(v)), [1, 0, 2]) for v in tuned["prefix"])

    # pieces -----------------------------------------------------------------------
    def _ln(self, x, gb):
        x32 = tf.cast(x, tf.float32)
        mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
        y = (x32 - mean) * tf.math.rsqrt(var + self.eps)
        return tf.cast(y, self.dtype) * gb[0] + gb[1]

    def _linear(self, x, wb):
        W, b = wb
        K, P = W.shape[0], self.split
        if x.shape.rank == 2 and x.shape[0] == 1 and P > 1 and K % P == 0:
            # a batch-1 decode step ([1, K] @ [K, N]) only streams W, and XLA runs the matrix-vector
            # dot on one core; as P dots over row blocks of W (a free reshape) it uses P cores.
            # (From batch 2 on XLA takes its matrix-matrix path, which the split slows down.)
            xs = tf.transpose(tf.reshape(x, [-1, P, K // P]), [1, 0, 2])  # [P, B, K/P]
            return tf.reduce_sum(tf.matmul(xs, tf.reshape(W, [P, K // P, -1])), axis=0) + b[0]
        return tf.matmul(x, W) + b[0]

    def _heads(self, x):  # [..., D] -> [..., H, Dh]
        return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.n_head, self.head_dim]], 0))

    def _logits(self, w, x):
        x = self._ln(x, w["ln_f"])
        V, P = self.vocab_size, self.split
        if x.shape[0] == 1 and P > 1 and V % P == 0:  # row blocks of the embedding, as in _linear
            blocks = tf.matmul(tf.broadcast_to(x[None], [P, *x.shape]), tf.reshape(w["wte"], [P, V // P, -1]),
                               transpose_b=True)  # [P, B, V/P]
            return tf.cast(tf.reshape(tf.transpose(blocks, [1, 0, 2]), [-1, V]), tf.float32)
        return tf.cast(tf.matmul(x, w["wte"], transpose_b=True), tf.float32)

    def _mlp(self, layer, x):
        m = self._linear(self.act(self._linear(self._ln(x, layer["ln_2"]), layer["fc"])), layer["fc_proj"])
        if "adapter" in layer:  # Houlsby adapter: m + gelu_new(m D + d) U + u
            down, up = layer["adapter"]
            m = m + self._linear(self.adapter_act(self._linear(m, down)), up)
        return m

    def _prefixed(self, prefix, scores, q, v, eqs):
        """Attention over a layer's prefix slots and the masked ``scores`` [..., S] (float32, scaled) in one
        softmax: the prefix's share of the output plus the cache's.

        Args:
            prefix: ``(key, value)`` [H, P, Dh].
            scores, q, v: the pass's scaled masked scores, queries and values (cache or prompt).
            eqs: ``_PREFILL_EQS`` or ``_STEP_EQS``.
        """
        pk, pv = prefix
        P = pk.shape[1]
        pscores = tf.cast(tf.einsum(eqs[0], q, pk), tf.float32) * (1.0 / math.sqrt(self.head_dim))
        probs = tf.cast(self._softmax(tf.concat([pscores, scores], axis=-1)), self.dtype)
        return tf.einsum(eqs[1], probs[..., :P], pv) + tf.einsum(eqs[2], probs[..., P:], v)

    @staticmethod
    def _softmax(scores):
        scores = scores - tf.reduce_max(scores, axis=-1, keepdims=True)
        e = tf.exp(scores)
        return e / tf.reduce_sum(e, axis=-1, keepdims=True)

    # passes -----------------------------------------------------------------------
    def prefill(self, w, ids, lengths):
        """Run right-padded prompts; return the logits after each last real token and the cache.

        Args:
            w: ``weights()``.
            ids: ``[B, T]`` int32 token ids, each row's prompt followed by padding.
            lengths: ``[B]`` int32 real lengths (≥ 1).

        Returns:
            ``(logits [B, V] float32, cache)`` where ``cache`` is a list of ``(K, V)`` per
            layer, each ``[B, H, n_ctx, Dh]``.
        """
        T = ids.shape[1]
        x = tf.gather(w["wte"], ids) + w["wpe"][:T][None]
        causal = tf.linalg.band_part(tf.ones([T, T], tf.bool), -1, 0)
        scale = 1.0 / math.sqrt(self.head_dim)
        pad = [[0, 0], [0, 0], [0, self.n_ctx - T], [0, 0]]
        cache = []
        for layer in w["h"]:
            qkv = self._linear(self._ln(x, layer["ln_1"]), layer["attn"])
            q, k, v = [tf.transpose(self._heads(t), [0, 2, 1, 3]) for t in tf.split(qkv, 3, axis=-1)]  # [B, H, T, Dh]
            scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) * scale
            if "prefix" in layer:
                a = self._prefixed(layer["prefix"], tf.where(causal, scores, NEG), q, v, _PREFILL_EQS)
            else:
                probs = tf.cast(self._softmax(tf.where(causal, scores, NEG)), self.dtype)
                a = tf.matmul(probs, v)
            a = tf.reshape(tf.transpose(a, [0, 2, 1, 3]), tf.shape(x))
            x = x + self._linear(a, layer["proj"])
            x = x + self._mlp(layer, x)
            cache.append((tf.pad(k, pad), tf.pad(v, pad)))
        last = tf.gather(x, lengths - 1, batch_dims=1)
        return self._logits(w, last), cache

    def step(self, w, tokens, positions, cache, view: int | None = None):
        """Run one token per row at its own position, updating the cache in place.

        Args:
            w: ``weights()``.
            tokens: ``[B]`` int32 ids.
            positions: ``[B]`` int32 positions (< n_ctx); also the cache slot written.
            cache: as returned by ``prefill``.
            view: attend over the first ``view`` cache slots only (a Python int; every position must be
                below it); ``None`` = all ``n_ctx``. Slots past every position are masked anyway, so a
                shorter view gives the same result for less work (``decode_views``).

        Returns:
            ``(logits [B, V], cache)``.
        """
        S = view or self.n_ctx
        x = tf.gather(w["wte"], tokens) + tf.gather(w["wpe"], positions)
        visible = (tf.range(S)[None, :] <= positions[:, None])[:, None, :]  # [B, 1, S]
        B, H = tokens.shape[0], self.n_head
        slot = tf.stack([tf.repeat(tf.range(B), H), tf.tile(tf.range(H), [B]), tf.repeat(positions, H)], axis=1)
        slot = tf.reshape(slot, [B, H, 3])  # (row, head, position) of each new key / value
        scale = 1.0 / math.sqrt(self.head_dim)
        new_cache = []
        for layer, (K, V) in zip(w["h"], cache):
            qkv = self._linear(self._ln(x, layer["ln_1"]), layer["attn"])
            q, k, v = [self._heads(t) for t in tf.split(qkv, 3, axis=-1)]  # [B, H, Dh]
            K = tf.tensor_scatter_nd_update(K, slot, k)
            V = tf.tensor_scatter_nd_update(V, slot, v)
            Kv, Vv = (K, V) if S == self.n_ctx else (K[:, :, :S], V[:, :, :S])
            scores = tf.cast(tf.einsum("bhd,bhsd->bhs", q, Kv), tf.float32) * scale
            if "prefix" in layer:
                a = self._prefixed(layer["prefix"], tf.where(visible, scores, NEG), q, Vv, _STEP_EQS)
            else:
                probs = tf.cast(self._softmax(tf.where(visible, scores, NEG)), self.dtype)
                a = tf.einsum("bhs,bhsd->bhd", probs, Vv)
            a = tf.reshape(a, tf.shape(x))
            x = x + self._linear(a, layer["proj"])
            x = x + self._mlp(layer, x)
            new_cache.append((K, V))
        return self._logits(w, x), new_cache
