"""Learning-rate schedule on the global step: linear warm-up, then cosine / linear / constant / wsd.

``wsd`` (warm-up, stable, decay) holds the peak rate and decays linearly to the final rate over the
last ``WSD_COOLDOWN`` of the decay span only: a model trained briefly still gains from the peak rate
for most of its steps, and the short cool-down at the end gives the low-rate gain. With ``--max-time``
the plan's re-estimates then only move when the cool-down starts, not the rate of the stable part.

Defined on ``optimizer.iterations``, which the checkpoint restores, so a resumed run
continues the schedule where it stopped instead of warming up again.

A run whose length changes as it goes (``train --max-time``) lays the decay over a *plan*
``(p0, s0, end)``: the decay's progress is ``p0`` at step ``s0`` and grows linearly to 1 at step
``end``. The fixed schedule is the plan ``(0, warmup, total)``. Re-planning at step s keeps the
progress reached at s and only changes how fast the rest goes (``replan``), so the learning rate
stays continuous; the plan is a ``tf.Variable`` that the checkpoint holds.
"""
from __future__ import annotations

import math

#: the share of the decay span (after warm-up) over which ``wsd`` cools down to the final rate
WSD_COOLDOWN = 0.2


def decay_shape(progress, schedule: str, cos=math.cos, minimum=min):
    """The decay's factor (1 at its start, 0 at its end) at ``progress``, for Python floats or tensors.

    Args:
        progress: the decay's progress in [0, 1] (``progress_at``).
        schedule: "cosine", "linear" or "wsd".
        cos: the cosine to use (``math.cos`` or ``tf.cos``).
        minimum: the element-wise minimum to use (``min`` or ``tf.minimum``).
    """
    if schedule == "cosine":
        return 0.5 * (1.0 + cos(math.pi * progress))
    if schedule == "wsd":
        return minimum(1.0, (1.0 - progress) / WSD_COOLDOWN)
    return 1.0 - progress


def progress_at(step: int, plan: tuple[float, float, float]) -> float:
    """The decay's progress (0 at its start, 1 at its end) at ``step`` under ``plan``.

    Args:
        step: the global step.
        plan: ``(p0, s0, end)``: progress ``p0`` at step ``s0``, 1 at step ``end``.
    """
    p0, s0, end = plan
    return min(1.0, max(0.0, p0 + (1.0 - p0) * (step - s0) / max(1.0, end - s0)))


def replan(plan: tuple[float, float, float], step: int, end: int, warmup: int) -> tuple[float, float, float]:
    """The plan that keeps ``plan``'s progress at ``step`` (or at the end of warm-up, if later) and ends at ``end``.

    Args:
        plan: the plan in force.
        step: the global step now.
        end: the step at which the decay should now end.
        warmup: warm-up steps.
    """
    start = max(step, warmup)
    return (progress_at(start, plan), float(start), float(max(end, start + 1)))


def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str, min_ratio: float,
          plan: tuple[float, float, float] | None = None) -> float:
    """The learning rate at ``step`` (plain Python; the Keras schedule below computes the same).

    Args:
        step: the global step (0-based: the step about to be taken).
        peak: the peak rate reached after warm-up.
        warmup: warm-up steps.
        total: total steps of the run (decay ends there, then stays at the minimum).
        schedule: "cosine", "linear", "constant" or "wsd".
        min_ratio: the final rate as a share of the peak.
        plan: ``(p0, s0, end)`` of a re-planned decay (``total`` is then unused); None: ``(0, warmup, total)``.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or (plan is None and total <= warmup):
        return peak
    shape = decay_shape(progress_at(step, plan or (0.0, warmup, total)), schedule)
    return peak * (min_ratio + (1.0 - min_ratio) * shape)


def keras_schedule(peak: float, warmup: int, total: int, schedule: str, min_ratio: float, plan=None):
    """A serialisable ``tf_keras`` LearningRateSchedule computing ``lr_at`` in the graph.

    Args:
        peak: the peak rate.
        warmup: warm-up steps.
        total: total steps of the run.
        schedule: "cosine", "linear", "constant" or "wsd".
        min_ratio: the final rate as a share of the peak.
        plan: a float64 ``tf.Variable`` ``[p0, s0, end]`` read at every step (``train --max-time``), or
            None for the fixed schedule over ``total`` (computed exactly as without the option).
    """
    import tensorflow as tf
    import tf_keras

    class WarmupDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, peak, warmup, total, schedule, min_ratio, plan=None):
            self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)
            self.schedule, self.min_ratio, self.plan = schedule, float(min_ratio), plan

        def _progress(self, step):
            if self.plan is None:
                return tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
            p0, s0, end = tf.unstack(tf.cast(self.plan, tf.float32))
            return tf.clip_by_value(p0 + (1.0 - p0) * (step - s0) / tf.maximum(1.0, end - s0), 0.0, 1.0)

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = self.peak * (step + 1.0) / max(self.warmup, 1)
            if self.schedule == "constant" or (self.plan is None and self.total <= self.warmup):
                decayed = tf.constant(self.peak, tf.float32)
            else:
                shape = decay_shape(self._progress(step), self.schedule, tf.cos, tf.minimum)
                decayed = self.peak * (self.min_ratio + (1.0 - self.min_ratio) * shape)
            return tf.where(step < self.warmup, warm, decayed) if self.warmup > 0 else decayed

        def get_config(self):
            return {"peak": self.peak, "warmup": self.warmup, "total": self.total,
                    "schedule": self.schedule, "min_ratio": self.min_ratio}

    return WarmupDecay(peak, warmup, total, schedule, min_ratio, plan)


def plan_values(plan) -> tuple[float, float, float] | None:
    """The plan variable's ``(p0, s0, end)``, or None without one.

    Args:
        plan: the float64 ``tf.Variable`` ``[p0, s0, end]`` of ``keras_schedule``, or None.
    """
    return None if plan is None else tuple(float(x) for x in plan.numpy())


def run_lr(train, step: int, total: int, plan=None) -> float:
    """``lr_at`` for a run's training settings.

    Args:
        train: the run's ``TrainConfig`` (peak rate, warm-up, schedule, final ratio).
        step: the global step.
        total: the run's total steps.
        plan: the plan variable (``plan_values``), or None for the fixed schedule.
    """
    return lr_at(step, train.learning_rate, train.warmup_steps, total, train.schedule, train.min_lr_ratio,
                 plan_values(plan))
