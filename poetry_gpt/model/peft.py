"""Parameter-efficient fine-tuning: the extra variables of a tuned GPT-2 and which of its own variables train.

Methods (``--tune``), all on a base ``TFGPT2LMHeadModel`` whose own weights stay as they are unless said
(bitfit, adapter and prefix also train the embedding update described after the list):

* ``full`` — every variable of the model trains; no extra variables.
* ``bitfit`` — of the model's own weights only the biases train, in place: the four ``Conv1D`` biases of every block (``c_attn``,
  attention ``c_proj``, ``c_fc``, MLP ``c_proj``) and the layer-norm offsets (``beta`` of ``ln_1``, ``ln_2``,
  ``ln_f``), as in Ben Zaken et al. (2021), which train every bias term including the layer norms'.
* ``adapter`` — Houlsby adapters in every block, after the feed-forward and before its residual add:
  ``m = mlp(ln_2(h)); m = m + (gelu_new(m @ D + d) @ U + u); h = h + dropout(m)``. ``D`` [width, size] ~
  N(0, initializer_range), ``d`` = 0, ``U`` [size, width] = 0, ``u`` = 0: a fresh adapter is the identity.
* ``prefix`` — per layer ``prefix.key`` / ``prefix.value`` [prefix_length, width] (the heads side by side, as
  ``c_attn`` lays out k and v): every query attends to all prefix slots plus its causal past, in one softmax;
  positions (``wpe``) of real tokens are unchanged. Initialised from the base model's own keys/values of
  ``prefix_length`` tokens drawn with ``seed`` from the (base) vocabulary (Li & Liang found activations of real
  tokens train better than random vectors). This is the one method whose fresh state is not exactly the base
  model: the prefix slots always take part of each softmax.
* ``lora`` — for each target matrix ``W`` [in, out] (Conv1D layout): ``W_eff = W + (alpha/rank)·A·B``, ``A``
  [in, rank] ~ U(−1/√in, 1/√in) (PEFT's kaiming-uniform with a=√5), ``B`` [rank, out] = 0: a fresh LoRA is the
  base model exactly. Targets: ``c_attn``, ``c_proj`` (attention), ``c_fc``, ``mlp_c_proj``, and ``wte``: the
  tied input/head embedding [vocab, width] gets ``(alpha/rank)·A·B`` with ``A`` [vocab, r] = 0 and ``B``
  [r, width] ~ N(0, initializer_range), ``r`` = ``lora_embedding_rank`` (the scale stays the blocks'
  ``alpha/rank``; PEFT's embedding LoRA zeroes the per-token side too). It lets the
  output distribution over characters move (a new genre's words), which the blocks' LoRA alone barely can.

The embedding update of bitfit, adapter and prefix: with ``embedding_rank`` r > 0 (the default; ``--embedding-rank``)
they also train ``lora.wte.A`` [vocab, r] = 0 and ``lora.wte.B`` [r, width] ~ N(0, initializer_range), the same
update of the tied embedding as LoRA's on ``wte`` (scale ``lora_alpha / lora_rank``), drawn after the method's own
initialisation. The papers of these methods train the task's head beside them; an LM's head is its embedding.

New embedding rows: when ``base_vocab_size`` < the model's vocabulary (an ``--extend-vocab`` run) and the method
is not ``full``, rows ≥ base are the separate variable ``embedding_rows`` (initialised from the grown ``wte``'s
rows), trained under every method; the input embedding and the tied head use ``concat(wte[:base], rows)``, so the
base rows stay bit-identical. ``full`` trains the whole ``wte`` (no separate variable).

Where it is computed: ``fast_forward.gpt2_hidden(..., tuning=)`` (training: frozen model variables are read
through ``tf.stop_gradient``, so gradients reach only ``trainable()``; LoRA as ``x·A·B`` so no full-size weight
gradient is formed) and ``cached_gpt2.CachedGPT2(..., tuning=)`` (sampling: LoRA and the new rows are merged into
the weights at ``weights()`` time, read from the variables at call time; adapters and prefixes run in
prefill/step; the prefix is attended separately, so the KV cache keeps its shape and the real tokens' context
budget stays ``n_ctx``).

``TuneConfig`` is ``config.TuneSettings``: its values are checked when it is made (``OptionError`` naming
the option). ``merge(lm)`` may be given another copy of the base (e.g. a freshly loaded one for export): it
writes the bitfit biases, LoRA products and new rows into it and leaves this Tuning's variables unchanged, so do
not use this Tuning on the merged model afterwards (LoRA would count twice).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..config import LORA_TARGETS, TUNE_METHODS, TuneSettings, recorded_tune  # noqa: F401  (re-exported)
from ..errors import OptionError, RunDirError

FORMAT = 1  # tuning.npz layout version
_HEADER = "__header__"
#: how a model is tuned: ``config.TuneSettings`` (the run's ``tune`` section) owns the fields and their checks
TuneConfig = TuneSettings
EMBEDDING_TARGET = "wte"  # the one --lora-targets name that is not a block's matrix


def conv_layers(block) -> dict:
    """A block's four ``Conv1D`` layers by the names ``--lora-targets`` uses."""
    return {"c_attn": block.attn.c_attn, "c_proj": block.attn.c_proj, "c_fc": block.mlp.c_fc,
            "mlp_c_proj": block.mlp.c_proj}


def model_variables(lm) -> dict:
    """A ``TFGPT2LMHeadModel``'s variables by stable names (``wte``, ``h.0.c_attn.bias``, ``ln_f.beta`` …)."""
    t = lm.transformer
    out = {"wte": t.wte.embeddings, "wpe": t.wpe.embeddings}
    for i, block in enumerate(t.h):
        for ln in ("ln_1", "ln_2"):
            out[f"h.{i}.{ln}.gamma"], out[f"h.{i}.{ln}.beta"] = getattr(block, ln).gamma, getattr(block, ln).beta
        for name, conv in conv_layers(block).items():
            out[f"h.{i}.{name}.weight"], out[f"h.{i}.{name}.bias"] = conv.weight, conv.bias
    out["ln_f.gamma"], out["ln_f.beta"] = t.ln_f.gamma, t.ln_f.beta
    return out


def _is_bias(name: str) -> bool:
    return name.endswith(".bias") or name.endswith(".beta")


class Tuning:
    """The extra variables of a tuned model and which of the model's own variables train.

    Args:
        lm: the base ``TFGPT2LMHeadModel`` (built; its vocabulary already grown for ``--extend-vocab``).
        cfg: the method and sizes (checked here).
        base_vocab_size: ids below it are the base's; ``None`` (or the model's size): no new rows.
        seed: seed of the random initialisations (adapter ``D``, LoRA ``A``, the prefix's token draw).

    Attributes:
        variables: the new variables by stable name (``embedding_rows``, ``h.{i}.adapter.{down,up}.{kernel,bias}``,
            ``h.{i}.prefix.{key,value}``, ``h.{i}.lora.{target}.{A,B}``), float32.
    """

    def __init__(self, lm, cfg: TuneConfig, base_vocab_size: int | None = None, seed: int = 0):
        import numpy as np

        vocab = lm.config.vocab_size
        if base_vocab_size is not None and not 0 < base_vocab_size <= vocab:
            raise RunDirError(f"the base vocabulary has {base_vocab_size} tokens but the model only {vocab}; "
                              "the run's vocabulary must extend the base's")
        self.cfg, self.method, self._lm = cfg, cfg.method, lm
        self.base_vocab_size = base_vocab_size if base_vocab_size is not None and base_vocab_size < vocab else None
        self.n_layer = lm.config.n_layer
        self.variables: dict = {}
        rng = np.random.default_rng(seed)
        if self.method != "full" and self.base_vocab_size is not None:
            self._add("embedding_rows", lm.transformer.wte.embeddings.numpy()[self.base_vocab_size:])
        if self.method == "adapter":
            self._init_adapters(lm, rng)
        elif self.method == "lora":
            self._init_lora(lm, rng)
        elif self.method == "prefix":
            self._init_prefix(lm, rng)
        if self.method != "lora" and cfg.embedding_update_rank:  # LoRA draws it first, in _init_lora
            self._init_embedding_update(lm, rng)

    # construction ------------------------------------------------------------------
    def _add(self, name: str, value) -> None:
        import numpy as np
        import tensorflow as tf

        self.variables[name] = tf.Variable(np.asarray(value, np.float32), trainable=True,
                                           name=name.replace(".", "_"))

    def _init_adapters(self, lm, rng) -> None:
        import numpy as np

        width, size = lm.config.n_embd, self.cfg.adapter_size
        std = lm.config.initializer_range
        for i in range(self.n_layer):
            self._add(f"h.{i}.adapter.down.kernel", rng.normal(0.0, std, (width, size)))
            self._add(f"h.{i}.adapter.down.bias", np.zeros(size))
            self._add(f"h.{i}.adapter.up.kernel", np.zeros((size, width)))
            self._add(f"h.{i}.adapter.up.bias", np.zeros(width))

    def _init_embedding_update(self, lm, rng) -> None:
        """``lora.wte.A`` = 0 and ``lora.wte.B`` ~ N(0, initializer_range) at ``cfg.embedding_update_rank``."""
        import numpy as np

        rank = self.cfg.embedding_update_rank
        self._add(f"lora.{EMBEDDING_TARGET}.A", np.zeros((lm.config.vocab_size, rank)))
        self._add(f"lora.{EMBEDDING_TARGET}.B", rng.normal(0.0, lm.config.initializer_range,
                                                            (rank, lm.config.n_embd)))

    def _init_lora(self, lm, rng) -> None:
        import numpy as np

        rank = self.cfg.lora_rank
        if self.cfg.embedding_update_rank:
            self._init_embedding_update(lm, rng)
        for i, block in enumerate(lm.transformer.h):
            convs = conv_layers(block)
            for target in self.block_targets:
                n_in, n_out = convs[target].weight.shape
                bound = 1.0 / np.sqrt(n_in)
                self._add(f"h.{i}.lora.{target}.A", rng.uniform(-bound, bound, (n_in, rank)))
                self._add(f"h.{i}.lora.{target}.B", np.zeros((rank, n_out)))

    def _init_prefix(self, lm, rng) -> None:
        import tensorflow as tf

        from .cached_gpt2 import CachedGPT2

        P, n_ctx = self.cfg.prefix_length, lm.config.n_positions
        if P > n_ctx:
            raise OptionError(f"--prefix-length: must be ≤ the model's context {n_ctx}, got {P}")
        ids = rng.integers(0, self.base_vocab_size or lm.config.vocab_size, (1, P))
        net = CachedGPT2(lm, tf.float32)
        _, cache = net.prefill(net.weights(), tf.constant(ids, tf.int32), tf.constant([P], tf.int32))
        for i, (K, V) in enumerate(cache):  # [1, H, n_ctx, Dh] -> [P, H*Dh]
            for name, kv in (("key", K), ("value", V)):
                self._add(f"h.{i}.prefix.{name}", tf.reshape(tf.transpose(kv[0, :, :P], [1, 0, 2]), [P, -1]))

    # what trains and what is stored ----------------------------------------------------
    def trainable(self, lm) -> list:
        """The variables the optimizer gets: ``full`` → ``lm.trainable_variables``; ``bitfit`` → the model's
        biases (module docstring) and ``variables`` (new rows, embedding update); others → ``variables``.

        Args:
            lm: the model this Tuning was made for (or its copy with the same structure).
        """
        if self.method == "full":
            return list(lm.trainable_variables)
        if self.method == "bitfit":
            own = [v for name, v in model_variables(lm).items() if _is_bias(name)]
            return own + list(self.variables.values())
        return list(self.variables.values())

    def tuned_state(self, lm) -> dict:
        """Everything a tuned checkpoint must store, by stable name: the whole model for ``full``, the biases
        and ``variables`` for ``bitfit``, ``variables`` otherwise.

        Args:
            lm: the model this Tuning was made for.
        """
        if self.method == "full":
            return model_variables(lm)
        if self.method == "bitfit":
            own = {name: v for name, v in model_variables(lm).items() if _is_bias(name)}
            return {**own, **self.variables}
        return dict(self.variables)

    def n_trainable(self, lm) -> int:
        """Number of trainable parameters (``trainable(lm)``'s sizes)."""
        import numpy as np

        return int(sum(np.prod(v.shape) for v in self.trainable(lm)))

    # the forward pass's view (fast_forward, cached_gpt2) -------------------------------------
    def reader(self):
        """``read(variable) -> tensor`` for the training forward: frozen variables through ``tf.stop_gradient``
        (so no gradient reaches them), trainable ones as they are."""
        import tensorflow as tf

        if self.method == "full":
            return lambda v: v
        train = {v.ref() for v in self.trainable(self._lm)}
        return lambda v: v if v.ref() in train else tf.stop_gradient(v)

    @property
    def block_targets(self) -> tuple:
        """The LoRA targets inside the blocks (``lora_targets`` without ``wte``); () for other methods."""
        return tuple(t for t in self.cfg.lora_targets if t != EMBEDDING_TARGET) if self.method == "lora" else ()

    @property
    def changes_embedding(self) -> bool:
        """The embedding differs from the base's ``wte``: new rows, or an embedding update (LoRA's on ``wte``)."""
        return "embedding_rows" in self.variables or f"lora.{EMBEDDING_TARGET}.A" in self.variables

    def embedding(self, read=lambda v: v, wte=None, update: bool = True):
        """The [vocab, width] input/head embedding: ``concat(wte[:base], embedding_rows)`` (or ``wte``), plus
        the update ``(alpha/rank)·A·B`` (LoRA on ``wte``, or the other methods' embedding update).

        Args:
            read: ``reader()`` (training) or the identity (sampling).
            wte: the base embedding to start from (default: this Tuning's model's ``wte``).
            update: add the low-rank update (False: the base rows and the new rows only, as an unmerged export
                stores them beside the tuning file that holds the update).
        """
        import tensorflow as tf

        wte = read(self._lm.transformer.wte.embeddings if wte is None else wte)
        rows = self.variables.get("embedding_rows")
        emb = wte if rows is None else tf.concat([wte[:self.base_vocab_size], rows], axis=0)
        A = self.variables.get(f"lora.{EMBEDDING_TARGET}.A") if update else None
        if A is not None:
            emb = emb + self.cfg.lora_scale * tf.matmul(A, self.variables[f"lora.{EMBEDDING_TARGET}.B"])
        return emb

    def layer(self, i: int) -> dict:
        """Layer ``i``'s tuned pieces: ``{"lora": {target: (A, B)}, "adapter": (D, d, U, u),
        "prefix": (key, value)}``, each present only for its method (variables, float32)."""
        v, p = self.variables, f"h.{i}."
        if self.method == "lora":
            return {"lora": {t: (v[f"{p}lora.{t}.A"], v[f"{p}lora.{t}.B"]) for t in self.block_targets}}
        if self.method == "adapter":
            return {"adapter": tuple(v[f"{p}adapter.{n}"] for n in ("down.kernel", "down.bias", "up.kernel",
                                                                     "up.bias"))}
        if self.method == "prefix":
            return {"prefix": (v[f"{p}prefix.key"], v[f"{p}prefix.value"])}
        return {}

    # merge / save / load -------------------------------------------------------------------------
    def merge(self, lm) -> None:
        """Write the tuning into ``lm``'s own variables (a plain GPT-2 then computes the tuned model).

        ``lm`` is the model this Tuning was made for or another copy of the same base (e.g. freshly loaded for
        export). This Tuning's variables are left as they are: do not use it with the merged model afterwards.

        Raises:
            OptionError: for ``adapter`` and ``prefix``, which plain GPT-2 cannot express.
        """
        import tensorflow as tf

        if self.method in ("adapter", "prefix"):
            raise OptionError(f"--tune {self.method}: cannot be merged into a plain GPT-2; export the base "
                              "with the tuning file (Tuning.save) instead")
        if self.method == "full":
            return
        own = model_variables(lm)
        if self.method == "bitfit":
            for name, v in model_variables(self._lm).items():
                if _is_bias(name) and own[name] is not v:
                    own[name].assign(v)
        for i in range(self.n_layer):
            for target, (A, B) in self.layer(i).get("lora", {}).items():
                W = own[f"h.{i}.{target}.weight"]
                W.assign(W + self.cfg.lora_scale * tf.matmul(A, B))
        if self.changes_embedding:
            own["wte"].assign(self.embedding(wte=own["wte"]))

    def header(self) -> dict:
        """What ``save`` records besides the arrays: format, method and sizes, vocabulary sizes."""
        cfg = asdict(self.cfg)
        cfg["lora_targets"] = list(cfg["lora_targets"])
        return {"format": FORMAT, "tune": cfg, "base_vocab_size": self.base_vocab_size,
                "vocab_size": self._lm.config.vocab_size, "n_layer": self.n_layer}

    def save(self, path) -> None:
        """Write ``tuned_state`` and ``header()`` to ONE ``.npz`` file, atomically.

        Args:
            path: the file (e.g. ``export/tuning.npz``); its folder must exist.
        """
        import os

        import numpy as np

        path = Path(path)
        arrays = {name: v.numpy() for name, v in self.tuned_state(self._lm).items()}
        arrays[_HEADER] = np.array(json.dumps(self.header()))
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path, lm) -> "Tuning":
        """The Tuning saved in ``path``, for ``lm`` (the same base); ``bitfit`` biases are written into ``lm``.

        Args:
            path: a file written by ``save``.
            lm: the base model.

        Raises:
            RunDirError: unreadable file, or a model whose shape does not match it.
        """
        import numpy as np

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
            head = json.loads(str(arrays.pop(_HEADER)))
        except (OSError, ValueError, KeyError) as e:
            raise RunDirError(f"{path}: not a readable tuning file ({e}); export the run again") from None
        if head.get("format") != FORMAT or head.get("vocab_size") != lm.config.vocab_size:
            raise RunDirError(f"{path}: made for a model with a vocabulary of {head.get('vocab_size')} tokens "
                              f"(format {head.get('format')}), not this one's {lm.config.vocab_size}")
        tune = dict(recorded_tune(head["tune"]), lora_targets=tuple(head["tune"]["lora_targets"]))
        tuning = cls(lm, TuneConfig(**tune), head.get("base_vocab_size"))
        tuning.assign(arrays, str(path))
        return tuning

    def assign(self, arrays: dict, source: str) -> None:
        """Set ``tuned_state`` from ``arrays`` (name → array), checking names and shapes.

        Args:
            arrays: the stored values.
            source: where they came from, for the message.
        """
        state = self.tuned_state(self._lm)
        missing = sorted(set(state) - set(arrays))
        if missing:
            raise RunDirError(f"{source}: lacks {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}; it "
                              f"was not saved for this --tune {self.method} model")
        for name, var in state.items():
            if tuple(arrays[name].shape) != tuple(var.shape):
                raise RunDirError(f"{source}: {name} has shape {tuple(arrays[name].shape)}, the model needs "
                                  f"{tuple(var.shape)}; it was saved for another model")
        for name, var in state.items():
            var.assign(arrays[name])
