"""Training: Keras ``fit`` of ``TFGPT2LMHeadModel`` on packed poems, with exact resume.

* Loss: float32 cross-entropy of the next character; labels −100 are ignored (the
  model's logits are shifted here once: position t predicts label t+1).
* AdamW (``tf_keras``), global-norm clipping, warm-up + cosine/linear decay on the global step.
* Precision: fp32, bf16 (mixed_bfloat16: bf16 compute, fp32 weights) or fp16 (mixed_float16
  with loss scaling); the loss in float32, from logits of the compute dtype's LM-head matmul (see README, Performance).
* A checkpoint (``tf.train.CheckpointManager``) holds model, optimizer (moments and step),
  epoch and best validation loss; resuming restores it, checks the restore matched, and
  continues the data stream at the same batch (see ``records.train_dataset``).
* Each epoch: validation loss/perplexity, sample poems, checkpoint, export, trainer_state.json.
* A NaN/inf loss stops training; the last good checkpoint stays the latest.
* ``max_time`` (``--max-time``): the decay is planned to end at the deadline (``budget.py``), the plan
  kept in a checkpointed variable; ``--epochs`` is then no limit, and the run ends with a final
  validation, checkpoint, export and samples at the step reached.
* Ctrl-C saves a checkpoint and refreshes ``export/`` at the step reached.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..config import RunConfig
from ..envcheck import cpu_flags
from . import budget as _budget
from .budget import TimeBudget, format_duration
from ..errors import OptionError, PoetryGPTError, RunDirError
from ..data.records import batches_per_pass, eval_dataset, train_dataset
from .distribute import (check_global_batch, check_same_start, checkpoint_managers, distribute_options, is_chief, make_strategy)
from ..run_dir import RunDir, check_resume_compatible, data_manifest, data_record, export_meta, open_run
from .schedule import keras_schedule, lr_at, replan
from ..data.vocab import CharVocab

SAMPLE_TITLES = ("春晓", "月夜", "", "秋思")  # "" = the model writes the title too
MAX_PERPLEXITY_LOSS = 80.0  # exp() overflow guard: report perplexity as inf above this
PLAN_KEY = "lr_plan/.ATTRIBUTES/VARIABLE_VALUE"  # the decay plan's name in a checkpoint


class TrainingDiverged(PoetryGPTError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a ``train`` call did.

    Args:
        run_dir: the RUN_DIR.
        global_step: steps done in total.
        epoch: epochs done in total.
        history: per-epoch records (loss, val_loss, …) of this call.
        restored_step: the step resumed from (0 for a fresh run).
        seconds: wall time of fitting.
        tokens_per_second: trained tokens per second over this call (all packed tokens are useful).
        budget: with ``max_time``: the budget, planned and reached steps (``TimeBudget.record``); else None.
    """

    run_dir: Path
    global_step: int
    epoch: int
    history: list
    restored_step: int
    seconds: float
    tokens_per_second: float
    budget: dict | None = None


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
    """Set the Keras mixed-precision policy (a process-wide setting, done at train time only)."""
    import tf_keras

    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    tf_keras.mixed_precision.set_global_policy(policy)


def build_lm_trainer(lm, seed: int = 0):
    """Wrap a ``TFGPT2LMHeadModel`` in a Keras model with our train/test steps.

    Args:
        lm: the transformers model.
        seed: the run seed; a training step's dropout masks are a function of (seed, global step,
            replica, layer), so a resumed run draws the very masks an uninterrupted one would.
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

        def call(self, input_ids, training=False):
            return self.lm(input_ids=input_ids, training=training, use_cache=False).logits

        def _loss_terms(self, batch, training):
            """(sum of next-token cross-entropies, number of targets); see fast_gpt2.lm_loss_terms."""
            return lm_loss_terms(self.lm, batch["input_ids"], batch["labels"], training=training,
                                 dropout=self.lm.config.resid_pdrop, seed=self._dropout_seed() if training else None)

        def _dropout_seed(self):
            """Stateless seed of this step's dropout: (run seed, global step), the replica folded in."""
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
            grads = tape.gradient(scaled, self.trainable_variables)
            if hasattr(self.optimizer, "get_unscaled_gradients"):
                grads = self.optimizer.get_unscaled_gradients(grads)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
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
    opt = tf_keras.optimizers.AdamW(learning_rate=schedule, weight_decay=t.weight_decay, beta_1=t.beta1,
                                    beta_2=t.beta2, epsilon=1e-8, global_clipnorm=t.grad_clip or None)
    # no decay on biases and layer-norm scales/offsets (nanoGPT's rule: decay only matrices)
    opt.exclude_from_weight_decay(var_names=["bias", "ln_", "gamma", "beta"])
    if precision == "fp16":
        opt = tf_keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


def perplexity(loss: float) -> float:
    """exp(loss), guarded against overflow."""
    return math.exp(loss) if loss < MAX_PERPLEXITY_LOSS else float("inf")


def train(data_dir: str | os.PathLike | None, run_dir: str | os.PathLike, config: RunConfig,
          overwrite: bool = False, init_from: str | os.PathLike | None = None,
          echo: Callable[[str], None] = print, verbose: int = 1, own_entries: tuple[str, ...] = (),
          inputs: Sequence[tuple[str, str | os.PathLike]] = (), max_time: float | None = None,
          started: float | None = None, sample_poems: Callable[..., list[str]] | None = None) -> TrainResult:
    """Train (or resume training) a poem model.

    Args:
        data_dir: a DATA_DIR from ``prepare`` (None on resume: the run's recorded DATA_DIR).
        run_dir: the RUN_DIR to create or continue.
        config: the resolved configuration (preset + overrides, or the stored one on resume).
        overwrite: start over in a non-empty RUN_DIR.
        init_from: an HF GPT-2 folder (TF weights or safetensors) to fine-tune from.
        echo: where progress lines go.
        verbose: Keras progress-bar verbosity (0 silent, 1 bar, 2 one line per epoch).
        own_entries: entries of a new RUN_DIR that are not foreign (``pipeline``'s ``data/``).
        inputs: more ``(option, path)`` inputs (``pipeline``'s RAW files) that ``--overwrite`` keeps in
            place like ``data_dir`` and ``init_from`` when they lie inside RUN_DIR.
        max_time: a time budget in seconds (``--max-time``): train until it is spent, the decay planned to
            end there (``--epochs`` is then no limit); None: train ``--epochs``.
        started: ``budget.clock()`` when the budget began (default: now); ``pipeline`` counts its prepare.
        sample_poems: writes the sample poems of each epoch end (``samples/``), called as
            ``sample_poems(lm, vocab, titles, genre=, n_ctx=, seed=)``; the CLI passes
            ``poetry_gpt.generate.samples.sample_poems``. None: no samples (training never imports the
            later generate stage itself).
    """
    from ..envcheck import require_compatible

    started = _budget.clock() if started is None else started
    _check_max_time(max_time, config.train.strategy)
    require_compatible()
    import tensorflow as tf

    from ..model.gpt2 import build_model, count_parameters

    chief = is_chief(config.train.strategy)  # a non-chief worker of a cluster only reads RUN_DIR (distribute.py)
    # everything is read before --overwrite empties RUN_DIR (which keeps inputs that lie inside it)
    if data_dir is None and (overwrite or not RunDir(Path(run_dir)).exists()):
        raise RunDirError(f"--data: needed for a new run ({run_dir} holds no run yet"
                          f"{', and --overwrite starts one' if overwrite else ''})")
    manifest = data_manifest(RunDir(Path(run_dir)), data_dir)
    vocab = manifest.load_vocab()
    given = [("--data", data_dir), ("--init-from", init_from), *inputs]
    inputs = [(option, path) for option, path in given if path is not None]
    run, resuming = open_run(run_dir, "train" if chief else "worker", overwrite, own_entries, inputs)
    changes = check_resume_compatible(run, config, manifest) if resuming else []
    if chief:
        _check_disk_space(run.path, config)

    precision = resolve_precision(config.train.precision)
    set_precision(precision)
    strategy = make_strategy(config.train.strategy)
    t = config.train
    check_global_batch(strategy, t.batch_size)
    n_ctx = config.model.n_ctx
    per_pass = batches_per_pass(manifest, t.batch_size, n_ctx)
    if per_pass < 1:
        raise RunDirError(f"--data {manifest.path}: the training split ({manifest.poems('train')} poems, "
                          f"{manifest.tokens('train')} characters) is smaller than one batch of {t.batch_size}×{n_ctx} "
                          "tokens; add poems or lower --batch-size")
    steps_per_epoch = t.steps_per_epoch or per_pass
    total_steps = steps_per_epoch * t.epochs
    # a run whose length changes lays its decay over a plan variable; one trained so keeps it on resume
    use_plan = max_time is not None or (resuming and _has_lr_plan(run.checkpoints))

    with strategy.scope():
        if init_from is not None:
            lm = _load_init(init_from, vocab, config)
        else:
            lm = build_model(config.model, vocab, seed=t.seed)
        trainer = build_lm_trainer(lm, seed=t.seed)
        plan = (tf.Variable([0.0, t.warmup_steps, total_steps], dtype=tf.float64, trainable=False, name="lr_plan")
                if use_plan else None)
        optimizer = make_optimizer(config, total_steps, precision, plan)
        trainer.compile(optimizer=optimizer)
        inner = optimizer.inner_optimizer if hasattr(optimizer, "inner_optimizer") else optimizer
        inner.build(lm.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best_val = tf.Variable(float("inf"), dtype=tf.float32, trainable=False, name="best_val_loss")
        ckpt = tf.train.Checkpoint(model=lm, optimizer=optimizer, epoch=epoch_var, best_val_loss=best_val)
        # the plan is saved with the rest but restored on its own: a checkpoint written without one still fits
        saved = ckpt if plan is None else tf.train.Checkpoint(model=lm, optimizer=optimizer, epoch=epoch_var,
                                                                best_val_loss=best_val, lr_plan=plan)

    # a non-chief saves into a temporary folder (deleted at exit) but resumes from the chief's checkpoints
    manager, source = checkpoint_managers(saved, run.checkpoints, chief, t.keep_checkpoints)
    ckpt_dir = str(run.checkpoints)
    restored_step = 0
    # the manager lists checkpoints from its state file; if that file is lost, look at the files themselves
    candidates = list(source.checkpoints) or _checkpoint_files(Path(ckpt_dir))
    if resuming and candidates:
        restored_step, restored_path = _restore(ckpt, candidates, ckpt_dir, optimizer, echo, partial=plan is not None)
        if plan is not None:
            _restore_plan(plan, restored_path)
        lr = lr_at(restored_step, t.learning_rate, t.warmup_steps, total_steps, t.schedule, t.min_lr_ratio,
                   _plan_values(plan))
        echo(f"Resumed {run.path} from {Path(restored_path).name}: step {restored_step}, "
             f"epoch {int(epoch_var.numpy())}, best val loss {float(best_val.numpy()):.4f}, "
             f"learning rate {lr:.3g}.")
        if changes:
            echo("Changed on resume: " + "; ".join(changes) + ".")
    elif resuming:
        recorded = run.read_state().get("global_step") or 0
        if chief and recorded > 0:
            raise RunDirError(f"--run {run.path}: trainer_state.json records step {recorded} but {run.checkpoints} "
                              "holds no checkpoint; put the checkpoints back or start over with --overwrite")
        echo(f"{run.path} holds no checkpoint yet; starting at step 0.")
    check_same_start(strategy, restored_step)  # a cluster's workers must all start from the chief's checkpoint
    if chief:
        run.write_run(config, manifest, {"precision": precision, "steps_per_epoch": steps_per_epoch,
                                         "init_from": str(init_from) if init_from else None})
        vocab.save(run.path)

    start_epoch = restored_step // steps_per_epoch
    if start_epoch >= t.epochs and max_time is None:
        echo(f"Nothing to do: {run.path} has already trained {start_epoch} of --epochs {t.epochs} epoch(s); "
             "pass a larger --epochs to train more.")
        if chief and run.export_step() != restored_step:
            from ..model.export import save_export

            save_export(lm, vocab, run.export, export_meta(data_record(manifest), n_ctx, restored_step, start_epoch))
            echo(f"export/ brought up to step {restored_step}.")
        return TrainResult(run.path, restored_step, start_epoch, [], restored_step, 0.0, 0.0)

    state = run.read_state() if resuming else {}
    history = [h for h in state.get("history", []) if (h.get("global_step") or 0) <= restored_step]
    meta = export_meta(data_record(manifest), n_ctx)
    budget = (TimeBudget(max_time, started, restored_step, steps_per_epoch,
                         -(-manifest.poems("valid") // t.batch_size))
              if max_time is not None else None)
    callback = _RunCallback(run, manager, ckpt, epoch_var, best_val, lm, vocab, config, manifest, total_steps,
                            steps_per_epoch, history, meta, chief, echo, precision, budget=budget, plan=plan,
                            sample_poems=sample_poems)
    val = distribute_options(eval_dataset(manifest, t.batch_size, n_ctx, pad_id=vocab.pad_id, sep_id=vocab.sep_id),
                             strategy)
    params = count_parameters(lm)
    length = (f"{t.epochs} epoch(s) × {steps_per_epoch} steps" if budget is None else
              f"for {format_duration(max_time)} (until {time.strftime('%H:%M:%S', time.localtime(budget.deadline_wall))}"
              f", the decay planned to end there), epochs of {steps_per_epoch} steps")
    echo(f"Training {params / 1e6:.2f}M parameters ({config.model.n_layer} layers, width {config.model.n_embd}, "
         f"context {n_ctx}) on {manifest.poems('train')} poems: {length} of "
         f"{t.batch_size}×{n_ctx} tokens, {precision}, {strategy.num_replicas_in_sync} replica(s).")

    def fit(first_epoch: int, end_epoch: int, steps: int, step: int) -> int:
        """Keras ``fit`` from global step ``step`` over epochs [first_epoch, end_epoch); the step reached."""
        data = train_dataset(manifest, t.batch_size, n_ctx, seed=t.seed, start_step=step,
                             pad_id=vocab.pad_id, sep_id=vocab.sep_id)
        trainer.fit(distribute_options(data, strategy), epochs=end_epoch, initial_epoch=first_epoch,
                    steps_per_epoch=steps, validation_data=val, callbacks=[callback], verbose=verbose)
        return int(inner.iterations.numpy())

    start = time.perf_counter()
    step = restored_step
    try:
        if budget is not None:
            # one epoch a call (the next starts where this one stopped) until the budget stops one
            budget.begin(_budget.clock())
            first = True
            while first or not (callback.diverged or budget.should_stop(step, _budget.clock())):
                first = False
                step = fit(step // steps_per_epoch, step // steps_per_epoch + 1,
                           steps_per_epoch - step % steps_per_epoch, step)
        else:
            # a run stopped inside an epoch first finishes that epoch's remaining steps
            segments = []
            if restored_step % steps_per_epoch:
                segments.append((start_epoch, start_epoch + 1, steps_per_epoch - restored_step % steps_per_epoch))
                start_epoch += 1
            if start_epoch < t.epochs:
                segments.append((start_epoch, t.epochs, steps_per_epoch))
            for first_epoch, end_epoch, steps in segments:
                step = fit(first_epoch, end_epoch, steps, step)
                if callback.diverged:
                    break
    except KeyboardInterrupt:
        callback.save_now("interrupted")
        callback.export_now("interrupted")
        raise
    seconds = time.perf_counter() - start
    if budget is not None and chief and not callback.diverged and callback.last_good == f"ckpt-{step}":
        callback._write_state(step)  # the budget's final record: why it stopped, the time it took
    if callback.diverged:
        kept = (f"the last good checkpoint ({callback.last_good}) is kept; resume with a lower --learning-rate"
                if callback.last_good else "no checkpoint was written before it; start over (--overwrite) "
                                           "with a lower --learning-rate")
        raise TrainingDiverged(f"--run {run.path}: the loss became {callback.diverged} at step "
                               f"{callback.diverged_step}; training stopped and {kept}")
    done = int(inner.iterations.numpy())
    trained = (done - restored_step) * t.batch_size * n_ctx
    return TrainResult(run.path, done, int(epoch_var.numpy()), callback.new_history, restored_step, seconds,
                       trained / seconds if seconds > 0 else 0.0, budget.record(done) if budget else None)


def _check_max_time(max_time: float | None, strategy: str) -> None:
    """Refuse a budget that is not positive, or one with a multi-worker strategy (each worker would plan
    its own schedule from its own clock)."""
    if max_time is None:
        return
    if not max_time > 0:
        raise OptionError(f"--max-time: must be more than zero, got {max_time} s")
    if strategy == "multi-worker" or (strategy == "auto" and os.environ.get("TF_CONFIG")):
        raise OptionError("--max-time: not available with a multi-worker strategy (each worker would plan its own "
                          "schedule); set the length with --epochs and --steps-per-epoch")


def _has_lr_plan(directory: Path) -> bool:
    """Whether the newest checkpoint in ``directory`` holds a decay plan (a ``--max-time`` run wrote it)."""
    import tensorflow as tf

    files = _checkpoint_files(directory)
    latest = tf.train.latest_checkpoint(str(directory)) or (files[-1] if files else None)
    try:
        return latest is not None and tf.train.load_checkpoint(latest).has_tensor(PLAN_KEY)
    except Exception:  # a damaged checkpoint: _restore reports it
        return False


def _restore_plan(plan, path: str) -> None:
    """Load the decay plan saved in checkpoint ``path``; without one (the run trained without --max-time so
    far) ``plan`` keeps the fixed schedule ``(0, warmup, total)``, which is where that run's decay stands."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    if reader.has_tensor(PLAN_KEY):
        plan.assign(reader.get_tensor(PLAN_KEY))


def _plan_values(plan) -> tuple[float, float, float] | None:
    """The plan variable's ``(p0, s0, end)``, or None without one."""
    return None if plan is None else tuple(float(x) for x in plan.numpy())


def _checkpoint_files(directory: Path) -> list[str]:
    """Checkpoint prefixes (``…/ckpt-N``) found on disk in a RUN_DIR's ``checkpoints/``, oldest first."""
    run = RunDir(directory.parent)
    return [str(run.checkpoint_prefix(step)) for step in run.checkpoint_steps()]


def _restore(ckpt, paths, directory, optimizer, echo, partial: bool = False) -> tuple[int, str]:
    """Restore the newest checkpoint of ``paths`` (oldest first); return ``(step, path)``.

    A checkpoint that fails to restore is skipped (for an older one) only when its files are
    damaged. An intact one that does not fit this model (another version of the code, another
    shape or set of variables) stops the search: restoring an older one would lose its progress,
    and the next saves would delete it. ``partial``: the checkpoint may hold more than ``ckpt`` (the decay
    plan, restored on its own), which is not to be warned about.
    """
    inner = optimizer.inner_optimizer if hasattr(optimizer, "inner_optimizer") else optimizer
    damaged = []
    for path in reversed(paths):
        try:
            status = ckpt.restore(path)
            status.assert_existing_objects_matched()
            if partial:
                status.expect_partial()
            step = int(inner.iterations.numpy())
            expected = int(path.rsplit("-", 1)[-1])
            if step != expected:
                raise ValueError(f"optimizer step {step} != checkpoint number {expected}")
        except Exception as exc:  # a damaged file raises OpError, IndexError, ValueError, …
            name, reason = Path(path).name, _first_line(exc)
            problem = _checkpoint_damage(path)
            if problem is None:
                raise RunDirError(f"{directory}: {name} is intact but does not fit this model ({reason}); it was "
                                  "written by another version of poetry_gpt or TensorFlow, or for a model of another "
                                  "shape or set of variables: resume with the version and --config that wrote it, "
                                  "or train in another --run (this run's checkpoints are fine; keep them)") from None
            damaged.append(f"{name}: {problem}")
            continue
        if damaged:
            echo(f"Skipped unreadable checkpoint(s): {'; '.join(damaged)}")
        return step, path
    raise RunDirError(f"{directory}: no readable checkpoint, the files are damaged ({'; '.join(damaged)}); "
                      "put back checkpoints/ from a copy, or start over with --overwrite")


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _checkpoint_damage(path: str) -> str | None:
    """Why a checkpoint's files are damaged (each tensor is read, so its checksum is checked), or
    None when they all read back intact."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as exc:  # OpError, IndexError, … for truncated or garbled files
        return _first_line(exc)
    return None


def _load_init(init_from, vocab: CharVocab, config: RunConfig):
    """Load an HF GPT-2 folder for fine-tuning, refusing mismatched vocabularies or shapes and settings that
    the training and sampling paths do not compute (``model.check_supported``); its dropout becomes the run's."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from ..fsutil import read_json
    from ..model.gpt2 import check_agreement, check_supported

    path = Path(init_from)
    if not (path / "config.json").is_file():
        raise RunDirError(f"--init-from {path}: not a GPT-2 checkpoint folder (no config.json); pass a folder "
                          "written by save_pretrained, e.g. a run's export/")
    try:
        model_type = read_json(path / "config.json").get("model_type")
    except (OSError, ValueError, AttributeError):
        raise RunDirError(f"--init-from {path}: config.json is not readable JSON; pass a folder written by "
                          "save_pretrained, e.g. a run's export/") from None
    if model_type != "gpt2":
        raise RunDirError(f"--init-from {path}: config.json describes a {model_type!r} model, not GPT-2; pass a GPT-2 "
                          "folder, e.g. a run's export/")
    has_tf = (path / "tf_model.h5").is_file()
    has_pt = any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()
    if not (has_tf or has_pt):
        raise RunDirError(f"--init-from {path}: no weights (tf_model.h5 or *.safetensors) in the folder")
    try:
        gpt2 = GPT2Config.from_pretrained(str(path))
        check_supported(gpt2, f"--init-from {path}")
        # the fast training path applies one rate everywhere: the run's --dropout, not the folder's
        gpt2.resid_pdrop = gpt2.embd_pdrop = gpt2.attn_pdrop = config.model.dropout
        lm = TFGPT2LMHeadModel.from_pretrained(str(path), from_pt=not has_tf, config=gpt2)
    except RunDirError:
        raise
    except Exception as exc:
        raise RunDirError(f"--init-from {path}: not loadable as GPT-2 ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if (path / "vocab.txt").is_file() and CharVocab.load(path).hash != vocab.hash:
        raise RunDirError(f"--init-from {path}: its vocabulary differs from the DATA_DIR's; prepare the data with "
                          f"`poetry-gpt prepare RAW --vocab {path}`")
    check_agreement(lm, vocab, str(path))
    c = lm.config
    if (c.n_layer, c.n_embd, c.n_head) != (config.model.n_layer, config.model.n_embd, config.model.n_head) \
            or c.n_positions < config.model.n_ctx:
        raise RunDirError(f"--init-from {path}: model shape (layers {c.n_layer}, width {c.n_embd}, heads {c.n_head}, "
                          f"context {c.n_positions}) differs from --config; pick the matching preset")
    return lm


def _check_disk_space(path: Path, config: RunConfig) -> None:
    """Fail early when the RUN_DIR cannot be written or the disk cannot hold a few checkpoints."""
    import shutil as _sh

    probe = path / ".write-test"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"--run {path}: cannot write there ({exc.strerror}); choose a writable folder") from None
    m = config.model
    params = 12 * m.n_layer * m.n_embd ** 2 + 10000 * m.n_embd
    need = params * 4 * 3 * (config.train.keep_checkpoints + 2)  # weights + 2 Adam moments per checkpoint/export
    free = _sh.disk_usage(path).free
    if free < need:
        raise RunDirError(f"--run {path}: only {free / 1e6:.0f} MB free, checkpoints need about {need / 1e6:.0f} MB; "
                          "free some space or choose another disk")


def _RunCallback(*args, **kwargs):
    """Build the run callback (a ``tf_keras`` Callback; the class is made lazily so importing
    this module does not import TensorFlow)."""
    import tf_keras

    class RunCallback(tf_keras.callbacks.Callback):
        """Checkpoints, validation report, samples, export and trainer_state.json for a run.

        Args:
            run: the RUN_DIR.
            manager: the CheckpointManager.
            ckpt: the Checkpoint.
            epoch_var: the checkpointed epoch counter.
            best_val: the checkpointed best validation loss.
            lm: the transformers model.
            vocab: its vocabulary.
            config: the run configuration.
            manifest: the DATA_DIR manifest.
            total_steps: the run's total steps.
            steps_per_epoch: steps per epoch.
            history: earlier epochs' records (extended in place).
            meta: facts for the export's poetry_gpt.json.
            chief: whether this process writes files.
            echo: where progress lines go.
            precision: the resolved precision.
            budget: the ``TimeBudget`` of a ``--max-time`` run (it may stop an epoch early), or None.
            plan: the decay plan variable (``schedule.replan``), or None for the fixed schedule.
            sample_poems: writes the epoch's sample poems (see ``train``), or None.
        """

        def __init__(self, run, manager, ckpt, epoch_var, best_val, lm, vocab, config, manifest, total_steps,
                     steps_per_epoch, history, meta, chief, echo, precision, budget=None, plan=None,
                     sample_poems=None):
            super().__init__()
            self.budget, self.plan, self.sample_poems = budget, plan, sample_poems
            self.run, self.manager, self.ckpt = run, manager, ckpt
            self.epoch_var, self.best_val, self.lm, self.vocab = epoch_var, best_val, lm, vocab
            self.config, self.manifest, self.total_steps = config, manifest, total_steps
            self.steps_per_epoch, self.history, self.meta = steps_per_epoch, history, meta
            self.chief, self.echo, self.precision = chief, echo, precision
            self.new_history: list = []
            self.diverged: str | None = None
            self.diverged_step = 0
            self.last_good = manager.latest_checkpoint and Path(manager.latest_checkpoint).name
            self._epoch_start = time.perf_counter()
            self._epoch_start_step = 0
            self._writer = None

        # -- helpers -------------------------------------------------------------------------
        def _step(self) -> int:
            opt = self.model.optimizer
            return int((opt.inner_optimizer if hasattr(opt, "inner_optimizer") else opt).iterations.numpy())

        def _lr(self, step: int) -> float:
            t = self.config.train
            return lr_at(step, t.learning_rate, t.warmup_steps, self.total_steps, t.schedule, t.min_lr_ratio,
                         _plan_values(self.plan))

        def save_now(self, why: str) -> None:
            """Write a checkpoint at the current step (not after a NaN, nor of non-finite weights)."""
            if self.diverged:
                return
            step = self._step()
            if not self._weights_finite():
                # the last step's update broke the weights although its loss was finite: keep the older checkpoint
                self.diverged, self.diverged_step = "NaN", step
                self.model.stop_training = True
                return
            path = self.manager.save(checkpoint_number=step)
            self.last_good = Path(path).name
            if self.chief:
                self._write_state(step)

        def export_now(self, why: str) -> None:
            """Refresh ``export/`` to the checkpoint just saved at the current step (after a Ctrl-C), so that
            ``generate --run`` uses the model the user stopped, not the last epoch end's."""
            step = self._step()
            if not self.chief or self.diverged or self.last_good != f"ckpt-{step}":
                return
            self._export(step)
            self.echo(f"{why.capitalize()} at step {step}: checkpoint {self.last_good} saved, export/ updated.")

        def _export(self, step: int) -> None:
            from ..model.export import save_export

            save_export(self.lm, self.vocab, self.run.export,
                        {**self.meta, "global_step": step, "epoch": int(self.epoch_var.numpy())})

        def _write_state(self, step: int) -> None:
            plan = _plan_values(self.plan)
            self.run.write_state({
                "global_step": step,
                "epoch": int(self.epoch_var.numpy()),
                "best_val_loss": _finite_or_none(float(self.best_val.numpy())),
                "learning_rate": self._lr(step),
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps if plan is None else int(plan[2]),
                "latest_checkpoint": self.last_good,
                "history": self.history,
                **({"lr_plan": {"progress": plan[0], "from_step": int(plan[1]), "end_step": int(plan[2])}}
                   if plan else {}),
                **({"time_budget": self.budget.record(step)} if self.budget else {}),
            })

        def _log_scalars(self, step: int, record: dict) -> None:
            """Append the epoch's figures to the TensorBoard event file in logs/ (x axis: global step).

            Written with TensorFlow's own summary ops, so the ``tensorboard`` package is needed only to
            look at them (Keras' TensorBoard callback fails without it).
            """
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(self.run.logs))
            meta = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
                data_class=summary_pb2.DATA_CLASS_SCALAR)
            with self._writer.as_default():
                for key in ("loss", "val_loss", "val_perplexity", "learning_rate", "tokens_per_second"):
                    value = record.get(key)
                    if value is not None and math.isfinite(value):
                        tf.summary.write(key, tf.constant(value, tf.float32), step=step, metadata=meta)
            self._writer.flush()

        def _weights_finite(self) -> bool:
            import tensorflow as tf

            return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.lm.trainable_variables)

        # -- Keras hooks ---------------------------------------------------------------------
        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_start = time.perf_counter()
            self._epoch_start_step = self._step()

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss):
                self.diverged = "NaN" if math.isnan(loss) else "inf"
                self.diverged_step = self._step()
                self.model.stop_training = True
                return
            every = self.config.train.checkpoint_every
            step = self._step()
            if every and step % every == 0 and step % self.steps_per_epoch:
                self.save_now("interval")
            if self.budget is not None:
                self._follow_budget(step)

        def _follow_budget(self, step: int) -> None:
            """Re-plan the decay's end from the measured step rate, and stop at the planned step or the deadline."""
            now = _budget.clock()
            end = self.budget.after_step(step, now)
            if end is not None and self.plan is not None:
                self.plan.assign(replan(_plan_values(self.plan), step, end, self.config.train.warmup_steps))
            if self.budget.should_stop(step, now):
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.diverged:
                return
            logs = logs or {}
            step = self._step()
            seconds = time.perf_counter() - self._epoch_start
            steps_done = step - self._epoch_start_step
            tokens = steps_done * self.config.train.batch_size * self.config.model.n_ctx
            val_loss = logs.get("val_loss")
            partial = self.budget is not None and step % self.steps_per_epoch != 0  # stopped by the time budget
            self.epoch_var.assign(epoch + (0 if partial else 1))
            if val_loss is not None and val_loss < float(self.best_val.numpy()):
                self.best_val.assign(val_loss)
            record = {"epoch": epoch + 1, "global_step": step, "loss": _finite_or_none(logs.get("loss")),
                      "val_loss": _finite_or_none(val_loss),
                      "val_perplexity": perplexity(val_loss) if val_loss is not None else None,
                      "learning_rate": self._lr(step), "seconds": round(seconds, 1),
                      "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None}
            if partial:
                record["partial"] = True
            self.history.append(record)
            self.new_history.append(record)
            self.save_now("epoch")
            if self.diverged:
                return
            if self.chief:
                # export first: a Ctrl-C while the samples are written must not leave export/ an epoch behind
                self._export(step)
                self._log_scalars(step, record)
                samples = self._samples(epoch + 1, f"epoch-{epoch + 1:03d}-step-{step}" if partial else None)
                val_text = (f"val loss {val_loss:.4f} (perplexity {record['val_perplexity']:.1f})"
                            if val_loss is not None else "no validation")
                where = f"time budget reached in epoch {epoch + 1}" if partial else f"epoch {epoch + 1}"
                self.echo(f"{where}: step {step}, loss {logs.get('loss', float('nan')):.4f}, {val_text}, "
                          f"lr {record['learning_rate']:.3g}, {record['tokens_per_second'] or 0:.0f} tokens/s; "
                          f"checkpoint {self.last_good}, export/ updated")
                for line in samples:
                    self.echo(f"  {line}")
            if self.budget is not None:
                self.budget.epoch_ended()

        def _samples(self, epoch: int, name: str | None = None) -> list[str]:
            """Sample poems (seeded by the epoch), saved as ``samples/NAME.txt`` (default ``epoch-NNN``)."""
            n = self.config.train.samples_per_epoch
            if n <= 0 or self.sample_poems is None:
                return []
            titles = [SAMPLE_TITLES[i % len(SAMPLE_TITLES)] for i in range(n)]
            lines = self.sample_poems(self.lm, self.vocab, titles, genre=self.meta["genre"],
                                 n_ctx=self.config.model.n_ctx, seed=epoch)
            from ..fsutil import atomic_write_text

            atomic_write_text(self.run.samples / f"{name or f'epoch-{epoch:03d}'}.txt", "\n".join(lines) + "\n")
            return lines

    return RunCallback(*args, **kwargs)


def _finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
