"""The run callback: what a training run writes as it goes (checkpoints, state, export, samples, logs).

* Each epoch: validation loss/perplexity, sample poems, checkpoint, export, trainer_state.json, TensorBoard scalars.
* ``--checkpoint-every N``: a checkpoint every N steps between epoch ends.
* A NaN/inf loss (or weights that became non-finite) stops training; the last good checkpoint stays the latest.
* ``--max-time``: the budget re-plans the decay's end and stops training (``budget.py``).

This module imports ``tf_keras`` at import time; ``loop.train`` imports it lazily, so importing the
train stage does not import TensorFlow.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import tf_keras

from . import budget as _budget
from .schedule import plan_values, replan, run_lr
from .trainer import Training, global_step, perplexity

SAMPLE_TITLES = ("春晓", "月夜", "", "秋思")  # "" = the model writes the title too


def finite_or_none(x) -> float | None:
    """``float(x)``, or None when ``x`` is None or not finite (JSON has no NaN).

    Args:
        x: a number or None.
    """
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class RunCallback(tf_keras.callbacks.Callback):
    """Checkpoints, validation report, samples, export and trainer_state.json for a run.

    Args:
        run: the RUN_DIR.
        manager: the CheckpointManager.
        training: the model, optimizer, plan and checkpointed counters (``trainer.build_training``).
        vocab: the vocabulary.
        config: the run configuration.
        total_steps: the run's total steps.
        steps_per_epoch: steps per epoch.
        history: earlier epochs' records (extended in place).
        meta: facts for the export's poetry_gpt.json.
        chief: whether this process writes files.
        echo: where progress lines go.
        budget: the ``TimeBudget`` of a ``--max-time`` run (it may stop an epoch early), or None.
        sample_poems: writes the epoch's sample poems (see ``loop.train``), or None.
    """

    def __init__(self, run, manager, training: Training, vocab, config, total_steps: int, steps_per_epoch: int,
                 history: list, meta: dict, chief: bool, echo: Callable[[str], None], budget=None,
                 sample_poems=None):
        super().__init__()
        self.run, self.manager, self.training = run, manager, training
        self.lm, self.plan, self.vocab, self.config = training.lm, training.plan, vocab, config
        self.total_steps, self.steps_per_epoch, self.history, self.meta = total_steps, steps_per_epoch, history, meta
        self.chief, self.echo, self.budget, self.sample_poems = chief, echo, budget, sample_poems
        self.new_history: list = []
        self.diverged: str | None = None
        self.diverged_step = 0
        self.last_good = manager.latest_checkpoint and Path(manager.latest_checkpoint).name
        self._epoch_start = time.perf_counter()
        self._epoch_start_step = 0
        self._writer = None

    # -- saving -------------------------------------------------------------------------------
    def _step(self) -> int:
        return global_step(self.model.optimizer)

    def _lr(self, step: int) -> float:
        return run_lr(self.config.train, step, self.total_steps, self.plan)

    def save_now(self, why: str) -> None:
        """Write a checkpoint at the current step (not after a NaN, nor of non-finite weights).

        Args:
            why: what asked for it (interval, epoch, interrupted).
        """
        if self.diverged:
            return
        step = self._step()
        if not self._weights_finite():
            # the last step's update broke the weights although its loss was finite: keep the older checkpoint
            self._stop_diverged("NaN", step)
            return
        path = self.manager.save(checkpoint_number=step)
        self.last_good = Path(path).name
        if self.chief:
            self.write_state(step)

    def export_now(self, why: str) -> None:
        """Refresh ``export/`` to the checkpoint just saved at the current step (after a Ctrl-C), so that
        ``generate --run`` uses the model the user stopped, not the last epoch end's.

        Args:
            why: what stopped training (it starts the line echoed).
        """
        step = self._step()
        if not self.chief or self.diverged or self.last_good != f"ckpt-{step}":
            return
        self._export(step)
        self.echo(f"{why.capitalize()} at step {step}: checkpoint {self.last_good} saved, export/ updated.")

    def _export(self, step: int) -> None:
        from ..model.export import save_export

        save_export(self.lm, self.vocab, self.run.export,
                    {**self.meta, "global_step": step, "epoch": int(self.training.epoch.numpy())},
                    tuning=self.training.tuning)

    def write_state(self, step: int) -> None:
        """Write trainer_state.json for ``step`` (the checkpoint, schedule, history and budget).

        Args:
            step: the global step reached.
        """
        plan = plan_values(self.plan)
        self.run.write_state({
            "global_step": step,
            "epoch": int(self.training.epoch.numpy()),
            "best_val_loss": finite_or_none(float(self.training.best_val.numpy())),
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

        return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.training.trainable)

    def _stop_diverged(self, what: str, step: int) -> None:
        self.diverged, self.diverged_step = what, step
        self.model.stop_training = True

    # -- Keras hooks --------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_start_step = self._step()

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self._stop_diverged("NaN" if math.isnan(loss) else "inf", self._step())
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
            self.plan.assign(replan(plan_values(self.plan), step, end, self.config.train.warmup_steps))
        if self.budget.should_stop(step, now):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged:
            return
        logs = logs or {}
        step = self._step()
        partial = self.budget is not None and step % self.steps_per_epoch != 0  # stopped by the time budget
        record = self._epoch_record(epoch, step, logs, partial)
        self.history.append(record)
        self.new_history.append(record)
        self.save_now("epoch")
        if self.diverged:
            return
        if self.chief:
            self._publish_epoch(epoch, step, record, logs, partial)
        if self.budget is not None:
            self.budget.epoch_ended()

    def _epoch_record(self, epoch: int, step: int, logs: dict, partial: bool) -> dict:
        """Count the epoch (and a better validation loss) in the checkpointed counters; its history record."""
        seconds = time.perf_counter() - self._epoch_start
        tokens = (step - self._epoch_start_step) * self.config.train.batch_size * self.config.model.n_ctx
        val_loss = logs.get("val_loss")
        self.training.epoch.assign(epoch + (0 if partial else 1))
        if val_loss is not None and val_loss < float(self.training.best_val.numpy()):
            self.training.best_val.assign(val_loss)
        record = {"epoch": epoch + 1, "global_step": step, "loss": finite_or_none(logs.get("loss")),
                  "val_loss": finite_or_none(val_loss),
                  "val_perplexity": perplexity(val_loss),
                  "learning_rate": self._lr(step), "seconds": round(seconds, 1),
                  "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None}
        if partial:
            record["partial"] = True
        return record

    def _publish_epoch(self, epoch: int, step: int, record: dict, logs: dict, partial: bool) -> None:
        """The chief's epoch end: export, TensorBoard scalars, samples, and the progress lines."""
        # export first: a Ctrl-C while the samples are written must not leave export/ an epoch behind
        self._export(step)
        self._log_scalars(step, record)
        samples = self._samples(epoch + 1, f"epoch-{epoch + 1:03d}-step-{step}" if partial else None)
        val_loss = logs.get("val_loss")
        ppl = record["val_perplexity"]
        val_text = (f"val loss {val_loss:.4f} (perplexity {f'{ppl:.1f}' if ppl is not None else 'too large to show'})"
                    if val_loss is not None else "no validation")
        where = f"time budget reached in epoch {epoch + 1}" if partial else f"epoch {epoch + 1}"
        self.echo(f"{where}: step {step}, loss {logs.get('loss', float('nan')):.4f}, {val_text}, "
                  f"lr {record['learning_rate']:.3g}, {record['tokens_per_second'] or 0:.0f} tokens/s; "
                  f"checkpoint {self.last_good}, export/ updated")
        for line in samples:
            self.echo(f"  {line}")

    def _samples(self, epoch: int, name: str | None = None) -> list[str]:
        """Sample poems (seeded by the epoch), saved as ``samples/NAME.txt`` (default ``epoch-NNN``)."""
        n = self.config.train.samples_per_epoch
        if n <= 0 or self.sample_poems is None:
            return []
        titles = [SAMPLE_TITLES[i % len(SAMPLE_TITLES)] for i in range(n)]
        tuned = {} if self.training.tuning is None else {"tuning": self.training.tuning}
        lines = self.sample_poems(self.lm, self.vocab, titles, genre=self.meta["genre"],
                                  n_ctx=self.config.model.n_ctx, seed=epoch, **tuned)
        from ..fsutil import atomic_write_text

        atomic_write_text(self.run.samples / f"{name or f'epoch-{epoch:03d}'}.txt", "\n".join(lines) + "\n")
        return lines
