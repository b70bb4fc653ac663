"""``tf.distribute`` strategies for ``--strategy`` and who writes files in a cluster."""
from __future__ import annotations

import os

from .errors import PoetryGPTError


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``--strategy``.

    Args:
        name: auto (multi-worker when TF_CONFIG is set, mirrored with several GPUs, else one device),
            default, mirrored, multi-worker.
    """
    import tensorflow as tf

    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi-worker":
        if not os.environ.get("TF_CONFIG"):
            raise PoetryGPTError("--strategy multi-worker needs TF_CONFIG (cluster and task) in the environment; "
                                 "see the README's multi-worker section")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    import json

    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
