"""``tf.distribute`` strategies for ``--strategy`` and who writes files in a cluster.

Multi-worker training (``MultiWorkerMirroredStrategy``, one process per machine, ``TF_CONFIG``
on each) follows TensorFlow's multi-worker guide:

* Every worker runs the same ``train`` command. The chief (``task.type == "chief"``, or
  worker 0 when the cluster has no chief) owns RUN_DIR: ``run.json``, checkpoints, export,
  samples and ``trainer_state.json``. Other workers only *read* RUN_DIR (``run.json`` and the
  chief's checkpoints when resuming: a shared file system, as in the guide) and never write it
  (``run_dir.open_run(mode="worker")``).
* ``CheckpointManager.save`` runs collective ops, so every worker must call it; a non-chief
  saves into a private temporary folder (``checkpoint_managers``) that is deleted when
  the process ends.
* Data: every worker builds the same packed stream (same seeds), Keras splits each global batch
  into per-replica batches and each worker keeps its own (``AutoShardPolicy.DATA``), so global
  step *k* sees exactly the batch a single process sees at step *k* — ``--batch-size`` is the
  global batch and a run can move between strategies and still resume exactly.
* Collectives: ring all-reduce over gRPC on CPUs, NCCL where there are GPUs.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref

from ..errors import PoetryGPTError


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``--strategy``.

    Must run before TensorFlow creates its first tensor in this process (a multi-worker
    strategy configures the runtime's collective ops).

    Args:
        name: auto (multi-worker when TF_CONFIG is set, mirrored with several GPUs, else one device),
            default, mirrored, multi-worker.
    """
    import tensorflow as tf

    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi-worker":
        cluster_spec(required=True)
        impl = tf.distribute.experimental.CommunicationImplementation
        gpus = tf.config.list_physical_devices("GPU")
        options = tf.distribute.experimental.CommunicationOptions(implementation=impl.NCCL if gpus else impl.RING)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (RuntimeError, ValueError) as exc:
            raise PoetryGPTError(f"--strategy multi-worker: TensorFlow could not join the cluster in TF_CONFIG "
                                 f"({str(exc).splitlines()[0][:200]})") from None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def cluster_spec(required: bool = False) -> dict:
    """The parsed ``TF_CONFIG`` (``{}`` when unset), checked enough to give a clear error.

    Args:
        required: raise when TF_CONFIG is unset (``--strategy multi-worker``).
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        if required:
            raise PoetryGPTError("--strategy multi-worker needs TF_CONFIG (cluster and task) in the environment; "
                                 "see the README's multi-worker section")
        return {}
    try:
        spec = json.loads(raw)
        task, cluster = spec.get("task", {}), spec.get("cluster", {})
        kind, index = task["type"], int(task.get("index", 0))
        if not isinstance(cluster.get(kind), list) or not 0 <= index < len(cluster[kind]):
            raise ValueError(f"task {kind}:{index} is not in the cluster")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PoetryGPTError(f"TF_CONFIG: not a valid cluster description ({exc}); expected "
                             '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    return spec


def is_chief(strategy: str = "multi-worker") -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster.

    Args:
        strategy: the ``--strategy`` in use; only multi-worker (or auto with TF_CONFIG set) makes a
            process part of a cluster — any other strategy trains alone, as its own chief.
    """
    if strategy not in ("multi-worker", "auto"):
        return True
    spec = cluster_spec()
    if not spec:
        return True
    task, cluster = spec["task"], spec.get("cluster", {})
    if task["type"] == "chief":
        return True
    return task["type"] == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def checkpoint_managers(ckpt, run_checkpoints: str | os.PathLike, chief: bool, max_to_keep: int):
    """The CheckpointManager to save with, and the one to resume from.

    The chief saves into and resumes from RUN_DIR's ``checkpoints/``. A non-chief resumes from
    the chief's checkpoints too (read-only; all workers must start from the same weights) but
    saves — every worker must, as saving runs collective ops — into a private temporary folder
    in the system temporary directory (``TMPDIR``), never in RUN_DIR. That folder is deleted
    when the saving manager is garbage-collected or, at the latest, when the process exits.

    Args:
        ckpt: the ``tf.train.Checkpoint``.
        run_checkpoints: RUN_DIR/checkpoints.
        chief: whether this process is the chief.
        max_to_keep: checkpoints to keep.

    Returns:
        ``(save_manager, restore_manager)`` (the same object on the chief).
    """
    import tensorflow as tf

    restore = tf.train.CheckpointManager(ckpt, str(run_checkpoints), max_to_keep=max_to_keep)
    if chief:
        return restore, restore
    path = tempfile.mkdtemp(prefix="poetry-gpt-worker-")
    save = tf.train.CheckpointManager(ckpt, path, max_to_keep=1)
    weakref.finalize(save, shutil.rmtree, path, True)
    return save, restore


def distribute_options(dataset, strategy):
    """Shard a dataset by data for a multi-worker strategy (a no-op otherwise).

    The packed training stream is not a plain list of files (shards are read inside a
    ``flat_map``), and the validation split is usually a single file, so file-based
    auto-sharding cannot apply; every worker builds the whole (deterministic) stream and keeps
    its own slice of each global batch.

    Args:
        dataset: a batched ``tf.data.Dataset`` (global batches).
        strategy: the strategy ``fit`` runs under.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def check_global_batch(strategy, batch_size: int) -> None:
    """Refuse a ``--batch-size`` that the replicas cannot share equally.

    ``--batch-size`` is the global batch; each replica's loss is divided by the global number of
    targets, which is right only when every replica gets the same number of rows.

    Args:
        strategy: the strategy in use.
        batch_size: the global batch size.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise PoetryGPTError(f"--batch-size {batch_size}: the global batch must split equally over the "
                             f"{replicas} replicas of --strategy; use a multiple of {replicas}")


def check_same_start(strategy, step: int) -> None:
    """In a cluster, refuse to train unless every worker resumed the same step.

    A non-chief resumes from the chief's ``checkpoints/`` through the file system; when RUN_DIR
    is not shared (or is another folder) it would start from other weights and the cluster would
    train silently wrong. Every worker must call this at the same point (it is a collective).

    Args:
        strategy: the strategy in use (anything but multi-worker: nothing to check).
        step: the global step this worker restored (0 for a fresh start).
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    mine = tf.constant([step, step * step, 1], tf.int64)

    @tf.function
    def all_sums():
        per_replica = strategy.run(lambda: tf.identity(mine))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    total, squares, n = (int(x) for x in all_sums().numpy())
    if n * squares != total * total:  # Cauchy–Schwarz: equal only when every worker has the same step
        raise PoetryGPTError(f"--strategy multi-worker: the workers resumed different steps (this one: {step}, mean "
                             f"{total / n:g}); every worker must see the chief's RUN_DIR (a shared folder) — "
                             "pass the same --run on all of them")
