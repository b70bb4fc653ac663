"""Learning-rate schedule on the global step: linear warm-up, then cosine / linear / constant.

Defined on ``optimizer.iterations``, which the checkpoint restores, so a resumed run
continues the schedule where it stopped instead of warming up again.
"""
from __future__ import annotations

import math


def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """The learning rate at ``step`` (plain Python; the Keras schedule below computes the same).

    Args:
        step: the global step (0-based: the step about to be taken).
        peak: the peak rate reached after warm-up.
        warmup: warm-up steps.
        total: total steps of the run (decay ends there, then stays at the minimum).
        schedule: "cosine", "linear" or "constant".
        min_ratio: the final rate as a share of the peak.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return peak * (min_ratio + (1.0 - min_ratio) * shape)


def keras_schedule(peak: float, warmup: int, total: int, schedule: str, min_ratio: float):
    """A serialisable ``tf_keras`` LearningRateSchedule computing ``lr_at`` in the graph.

    Args:
        peak: the peak rate.
        warmup: warm-up steps.
        total: total steps of the run.
        schedule: "cosine", "linear" or "constant".
        min_ratio: the final rate as a share of the peak.
    """
    import tensorflow as tf
    import tf_keras

    class WarmupDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, peak, warmup, total, schedule, min_ratio):
            self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)
            self.schedule, self.min_ratio = schedule, float(min_ratio)

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = self.peak * (step + 1.0) / max(self.warmup, 1)
            if self.schedule == "constant" or self.total <= self.warmup:
                decayed = tf.constant(self.peak, tf.float32)
            else:
                progress = tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
                if self.schedule == "cosine":
                    shape = 0.5 * (1.0 + tf.cos(math.pi * progress))
                else:
                    shape = 1.0 - progress
                decayed = self.peak * (self.min_ratio + (1.0 - self.min_ratio) * shape)
            return tf.where(step < self.warmup, warm, decayed) if self.warmup > 0 else decayed

        def get_config(self):
            return {"peak": self.peak, "warmup": self.warmup, "total": self.total,
                    "schedule": self.schedule, "min_ratio": self.min_ratio}

    return WarmupDecay(peak, warmup, total, schedule, min_ratio)
