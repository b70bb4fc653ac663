"""Training setup: the Keras model wrapper with our loss, the optimizer, precision, and ``build_training``.

* Loss: float32 cross-entropy of the next character; labels −100 are ignored (the
  model's logits are shifted here once: position t predicts label t+1).
* AdamW (``tf_keras``'s, its update fused into one XLA program: ``optimizer.py``), global-norm clipping,
  warm-up + cosine/linear decay on the global step.
* Precision: fp32, bf16 (mixed_bfloat16: bf16 compute, fp32 weights) or fp16 (mixed_float16
  with loss scaling); the loss in float32, from logits of the compute dtype's LM-head matmul (see README, Performance).

``build_training`` is what ``train()`` and ``scripts/bench.py`` share: the model (new or ``--init-from``),
its trainer, the optimizer and the checkpointed counters, all made in the strategy's scope.

Fine-tuning (``--tune`` other than full, ``model.peft``): the optimizer gets only ``Tuning.trainable`` (so
only they have gradients and AdamW slots), the train step's forward computes the tuning, and a checkpoint
holds ``Tuning.tuned_state`` instead of the model (the base is reloaded from ``--init-from`` on resume).
Nothing here imports TensorFlow at import time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data.datasets import eval_dataset, train_dataset
from ..data.manifest import Manifest
from ..data.vocab import CharVocab
from ..envcheck import cpu_flags
from ..errors import OptionError, PoetryGPTError
from ..model.init_from import load_init  # noqa: F401  (moved there; build_training and tests use it here)
from .distribute import distribute_options
from .optimizer import fused_adamw
from .schedule import keras_schedule

MAX_PERPLEXITY_LOSS = 80.0  # exp() overflow guard: no perplexity is reported above this loss


class TrainingDiverged(PoetryGPTError):
    """The loss became NaN or infinite."""


def resolve_precision(name: str) -> str:
    """Turn ``auto`` into fp32 / bf16 for this machine.

    Args:
        name: auto, fp32, bf16 or fp16.
    """
    if name != "auto":
        return name
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "bf16" if details.get("compute_capability", (0, 0)) >= (8, 0) else "fp32"
    flags = cpu_flags()
    return "bf16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "fp32"


def set_precision(precision: str) -> None:
    """Set the Keras mixed-precision policy (a process-wide setting, done at train time only).

    Args:
        precision: fp32, bf16 or fp16.
    """
    import tf_keras

    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    tf_keras.mixed_precision.set_global_policy(policy)


def perplexity(loss: float | None) -> float | None:
    """exp(loss); None when the loss is missing, not finite, or exp would overflow (``MAX_PERPLEXITY_LOSS``).

    Args:
        loss: a mean cross-entropy in nats, or None.
    """
    if loss is None or not math.isfinite(loss) or loss >= MAX_PERPLEXITY_LOSS:
        return None
    return math.exp(loss)


def inner_optimizer(optimizer):
    """The optimizer that holds the step and the moments (inside fp16's ``LossScaleOptimizer``).

    Args:
        optimizer: a ``make_optimizer`` result.
    """
    return optimizer.inner_optimizer if hasattr(optimizer, "inner_optimizer") else optimizer


def global_step(optimizer) -> int:
    """Steps taken so far (the optimizer's ``iterations``, which the checkpoint restores).

    Args:
        optimizer: a ``make_optimizer`` result.
    """
    return int(inner_optimizer(optimizer).iterations.numpy())


def build_lm_trainer(lm, seed: int = 0, tuning=None, parts: int = 1, boundary_id: int | None = None):
    """Wrap a ``TFGPT2LMHeadModel`` in a Keras model with our train/test steps.

    Args:
        lm: the transformers model.
        seed: the run seed; a training step's dropout masks are a function of (seed, global step,
            replica, batch part, layer), so a resumed run draws the very masks an uninterrupted one would.
        tuning: a ``model.peft.Tuning`` (its forward is computed, only ``tuning.trainable(lm)`` is
            updated), or None: every weight of ``lm`` trains.
        parts: each replica's batch is computed in this many independent parts (rows j, j+parts, …), whose
            loss sums and target counts are added (``cores.py``: side by side on a CPU's cores); 1: whole.
        boundary_id: the poem boundary id: each poem of a row attends only to itself (``TrainConfig.attention``
            ``poem``; ``fast_forward.poem_attention``), or ``None``: the row is one sequence.
    """
    import tensorflow as tf
    import tf_keras

    from ..model.fast_forward import lm_loss_terms

    class TokenMeanLoss(tf_keras.metrics.Metric):
        """Cross-entropy averaged over target tokens (not over batches): sum / count."""

        def __init__(self, name="loss"):
            # float32 state whatever the precision policy: under mixed precision the weights would
            # otherwise be AutoCastVariables, which multi-worker (sync-on-read) variables cannot read
            super().__init__(name=name, dtype=tf.float32)
            self.total = self.add_weight(name="total", initializer="zeros", dtype=tf.float32)
            self.count = self.add_weight(name="count", initializer="zeros", dtype=tf.float32)

        def update_state(self, loss_sum, count):
            self.total.assign_add(loss_sum)
            self.count.assign_add(count)

        def result(self):
            return self.total / tf.maximum(self.count, 1.0)

    class PoemLM(tf_keras.Model):
        """Keras model whose loss is the float32 next-character cross-entropy, pads ignored."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm
            self.loss_tracker = TokenMeanLoss()

        def _updated(self) -> list:
            """The variables a step updates: the tuning's, or every trainable weight."""
            return self.trainable_variables if tuning is None else tuning.trainable(self.lm)

        def call(self, input_ids, training=False):
            return self.lm(input_ids=input_ids, training=training, use_cache=False).logits

        def _loss_terms(self, batch, training):
            """(sum of next-token cross-entropies, number of targets) over the batch's ``parts``."""
            seed_of_step = self._dropout_seed() if training else None
            if parts == 1:
                return self._part_terms(batch["input_ids"], batch["labels"], training, seed_of_step)
            terms = [self._part_terms(batch["input_ids"][j::parts], batch["labels"][j::parts], training,
                                      None if seed_of_step is None
                                      else tf.random.experimental.stateless_fold_in(seed_of_step, j))
                     for j in range(parts)]
            return tf.add_n([t[0] for t in terms]), tf.add_n([t[1] for t in terms])

        def _part_terms(self, input_ids, labels, training, dropout_seed):
            """``fast_forward.lm_loss_terms`` of some rows of the batch."""
            return lm_loss_terms(self.lm, input_ids, labels, training=training, dropout=self.lm.config.resid_pdrop,
                                 seed=dropout_seed, tuning=tuning, boundary_id=boundary_id)

        def _dropout_seed(self):
            """Stateless seed of this step's dropout: (run seed, global step), the replica folded in (and the
            batch part, in ``_loss_terms``)."""
            step = tf.cast(self.optimizer.iterations, tf.int64)  # before this step's update: 0, 1, …
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), step]), replica)

        def train_step(self, batch):
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            with tf.GradientTape() as tape:
                loss_sum, count = self._loss_terms(batch, training=True)
                # packed rows have no padding: every replica's batch holds the same number of targets
                loss = loss_sum / (count * replicas)
                scaled = self.optimizer.get_scaled_loss(loss) if hasattr(self.optimizer, "get_scaled_loss") else loss
            updated = self._updated()
            grads = tape.gradient(scaled, updated)
            if hasattr(self.optimizer, "get_unscaled_gradients"):
                grads = self.optimizer.get_unscaled_gradients(grads)
            self.optimizer.apply_gradients(zip(grads, updated))
            self.loss_tracker.update_state(loss_sum, count)
            return {"loss": self.loss_tracker.result()}

        def test_step(self, batch):
            loss_sum, count = self._loss_terms(batch, training=False)
            self.loss_tracker.update_state(loss_sum, count)
            return {"loss": self.loss_tracker.result()}

        @property
        def metrics(self):
            return [self.loss_tracker]

    return PoemLM(lm)


def make_optimizer(config: RunConfig, total_steps: int, precision: str, plan=None):
    """AdamW with the warm-up/decay schedule, clipping, and loss scaling for fp16.

    Args:
        config: the run configuration.
        total_steps: the run's total steps (end of the decay).
        precision: fp32, bf16 or fp16.
        plan: the decay plan variable of a run whose length changes (``schedule.keras_schedule``), or None.
    """
    import tf_keras

    t = config.train
    schedule = keras_schedule(t.learning_rate, t.warmup_steps, total_steps, t.schedule, t.min_lr_ratio, plan)
    opt = fused_adamw(learning_rate=schedule, weight_decay=t.weight_decay, beta_1=t.beta1, beta_2=t.beta2,
                      epsilon=1e-8, global_clipnorm=t.grad_clip or None)
    # no decay on biases and layer-norm scales/offsets (nanoGPT's rule: decay only matrices)
    opt.exclude_from_weight_decay(var_names=["bias", "ln_", "gamma", "beta"])
    if precision == "fp16":
        opt = tf_keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


@dataclass
class Training:
    """What ``fit`` needs, made by ``build_training`` in the strategy's scope.

    Args:
        lm: the transformers model.
        trainer: its Keras wrapper (``build_lm_trainer``), compiled with ``optimizer``.
        optimizer: the ``make_optimizer`` result.
        plan: the decay plan variable (``schedule.keras_schedule``), or None for the fixed schedule.
        epoch: the checkpointed epoch counter.
        best_val: the checkpointed best validation loss.
        checkpoint: what a resume restores (model — or the tuned variables —, optimizer, epoch, best
            validation loss).
        saved: what a save writes: ``checkpoint`` plus the plan, which is restored on its own
            (``loop._restore_plan``) so that a checkpoint written without one still fits.
        tuning: the ``model.peft.Tuning`` of a ``--tune`` run other than full, else None.
        trainable: the variables the optimizer updates.
    """

    lm: Any
    trainer: Any
    optimizer: Any
    plan: Any
    epoch: Any
    best_val: Any
    checkpoint: Any
    saved: Any
    tuning: Any = None
    trainable: Any = None

    def step(self) -> int:
        """The global step (the optimizer's iterations)."""
        return global_step(self.optimizer)

    def parameter_counts(self) -> tuple[int, int]:
        """``(trainable, total)`` parameters: the optimizer's variables, and the model's plus the tuning's
        added ones (the tuning's copy of new embedding rows replaces the model's rows, not counted twice)."""
        import numpy as np

        from ..model.gpt2 import count_parameters

        trainable = int(sum(np.prod(v.shape) for v in self.trainable))
        added = {} if self.tuning is None else {k: v for k, v in self.tuning.variables.items() if k != ROWS}
        return trainable, count_parameters(self.lm) + int(sum(np.prod(v.shape) for v in added.values()))


ROWS = "embedding_rows"  # the tuning variable of the new embedding rows (``model.peft``)


def require_base(config: RunConfig, init_from) -> None:
    """Refuse ``--tune`` other than full without a model to tune.

    Args:
        config: the run configuration.
        init_from: the ``--init-from`` folder, or None.
    """
    if config.tune.method != "full" and init_from is None:
        raise OptionError(f"--tune {config.tune.method}: needs --init-from BASE (the trained model to tune); "
                          "pass a run's export/ folder, or drop --tune to train a new model")


def make_tuning(lm, config: RunConfig, base_vocab_size: int | None):
    """The ``model.peft.Tuning`` of a ``--tune`` run (None for full: every weight trains).

    Args:
        lm: the base model (``load_init``).
        config: the run configuration (``tune``, and the seed of the added variables).
        base_vocab_size: ids below it are the base's (None: the vocabulary was not extended).
    """
    from ..model.peft import Tuning

    if config.tune.method == "full":
        return None
    return Tuning(lm, config.tune, base_vocab_size=base_vocab_size, seed=config.train.seed)


def build_training(config: RunConfig, vocab: CharVocab, strategy, total_steps: int, precision: str,
                   init_from: str | Path | None = None, use_plan: bool = False,
                   base_vocab_size: int | None = None, batch_parts: int = 1) -> Training:
    """Build the model, its trainer and optimizer, and the checkpointed counters in ``strategy``'s scope.

    The precision policy must be set before (``set_precision``): the model's layers take it when made.

    Args:
        config: the run configuration.
        vocab: the DATA_DIR's vocabulary.
        strategy: the ``tf.distribute`` strategy (``distribute.make_strategy``).
        total_steps: the run's total steps (end of the decay).
        precision: the resolved precision (fp32, bf16 or fp16).
        init_from: an HF GPT-2 folder to fine-tune from (``load_init``), or None for a new model.
        use_plan: lay the decay over a plan variable (a run whose length changes: ``--max-time``).
        base_vocab_size: with ``--tune``: ids below it are the base's, the rows above are new (None: the
            vocabulary was not extended).
        batch_parts: parts each replica's batch is computed in (``cores.use_cores``; ``build_lm_trainer``).
    """
    import tensorflow as tf

    from ..model.gpt2 import build_model

    t = config.train
    require_base(config, init_from)
    with strategy.scope():
        lm = load_init(init_from, vocab, config) if init_from is not None else build_model(config.model, vocab,
                                                                                             seed=t.seed)
        tuning = make_tuning(lm, config, base_vocab_size)
        trainable = lm.trainable_variables if tuning is None else tuning.trainable(lm)
        trainer = build_lm_trainer(lm, seed=t.seed, tuning=tuning, parts=batch_parts,
                                   boundary_id=vocab.sep_id if t.attention == "poem" else None)
        plan = (tf.Variable([0.0, t.warmup_steps, total_steps], dtype=tf.float64, trainable=False, name="lr_plan")
                if use_plan else None)
        optimizer = make_optimizer(config, total_steps, precision, plan)
        trainer.compile(optimizer=optimizer)
        inner_optimizer(optimizer).build(trainable)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best_val = tf.Variable(float("inf"), dtype=tf.float32, trainable=False, name="best_val_loss")
        # a tuned run's checkpoint holds only what it changes: the base is reloaded from --init-from
        weights = {"model": lm} if tuning is None else {"tuned": tuning.tuned_state(lm)}
        checkpoint = tf.train.Checkpoint(**weights, optimizer=optimizer, epoch=epoch, best_val_loss=best_val)
        saved = checkpoint if plan is None else tf.train.Checkpoint(**weights, optimizer=optimizer, epoch=epoch,
                                                                     best_val_loss=best_val, lr_plan=plan)
    return Training(lm, trainer, optimizer, plan, epoch, best_val, checkpoint, saved, tuning, trainable)


def training_data(manifest: Manifest, config: RunConfig, vocab: CharVocab, strategy, start_step: int = 0):
    """The training stream (packed rows, ``datasets.train_dataset``) from ``start_step``, ready for ``strategy``.

    Args:
        manifest: the DATA_DIR's manifest.
        config: the run configuration (batch size, context, seed).
        vocab: the DATA_DIR's vocabulary.
        strategy: the ``tf.distribute`` strategy.
        start_step: the global step the stream continues at (a resume reads on from there).
    """
    t = config.train
    data = train_dataset(manifest, t.batch_size, config.model.n_ctx, seed=t.seed, start_step=start_step,
                         pad_id=vocab.pad_id, sep_id=vocab.sep_id)
    return distribute_options(data, strategy)


def validation_data(manifest: Manifest, config: RunConfig, vocab: CharVocab, strategy):
    """The validation split (``datasets.eval_dataset``), ready for ``strategy``.

    Args:
        manifest: the DATA_DIR's manifest.
        config: the run configuration (batch size, context).
        vocab: the DATA_DIR's vocabulary.
        strategy: the ``tf.distribute`` strategy.
    """
    data = eval_dataset(manifest, config.train.batch_size, config.model.n_ctx, pad_id=vocab.pad_id,
                        sep_id=vocab.sep_id)
    return distribute_options(data, strategy)
