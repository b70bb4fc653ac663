"""How a training step uses a CPU's cores: the batch in parts, side by side, one core each (``--batch-split``).

One computation over the whole batch leaves a CPU's cores idle for much of a step: XLA's CPU backend runs
the row and column reductions (layer norms, softmaxes, bias gradients, the cross-entropy) on one core, and
every matmul spread over all cores waits for the slowest. With the batch split into one part per core
(rows j, j + parts, …; ``trainer.build_lm_trainer``), each part's forward and backward is an independent
chain of ops that TensorFlow's executor runs beside the others, each op on one thread; the parts' loss sums
and target counts are added, so the step's loss and gradients are the same up to float rounding (dropout
masks are drawn per part). Measured on a 2-core AMD EPYC (AVX-512 BF16, no AMX): ``small`` trained about 7%
faster (README, Performance). On a GPU, or with several replicas, the batch stays whole.

``auto`` (``--batch-split 0``) uses one part per usable core, at most one per row and at most
``MAX_AUTO_PARTS``, on a CPU-only run of one replica; each part's ops get ``cores // parts`` threads.
The threads are set per process: the intra-op thread count can only be set before TensorFlow's runtime
starts; when it has already started (the library called from a process that ran TensorFlow before), the
parts still run, with the threads TensorFlow already had.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CoreLayout:
    """What a run's steps use.

    Args:
        parts: parts each replica's batch is computed in.
        threads: intra-op threads this process was set to (each op's share of the cores), or None: left as
            TensorFlow had them.
        rows: rows per part (the larger, when the batch does not divide).
    """

    parts: int
    threads: int | None
    rows: int

    def describe(self) -> str:
        """How the announce line says it: ``batch in 2 parts of 8 rows, 1 thread each``."""
        if self.parts == 1:
            return "batch in one part"
        threads = "" if self.threads is None else f", {self.threads} thread{'s' if self.threads > 1 else ''} each"
        return f"batch in {self.parts} parts of {self.rows} rows{threads}"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all of the machine's where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


#: ``auto`` splits into at most this many parts: each part holds its own copy of the gradients until they are
#: added (``small``: 51 MB a copy), so a many-core machine gets a few parts of several threads each
MAX_AUTO_PARTS = 4


def batch_parts(setting: int, rows: int, cores: int, gpu: bool, replicas: int) -> int:
    """Parts a replica's batch is split into.

    Args:
        setting: ``--batch-split``: N ≥ 1 as given (capped at ``rows``), 0 = auto.
        rows: rows of a replica's batch.
        cores: usable cores.
        gpu: the run has a GPU.
        replicas: replicas in sync.
    """
    if setting >= 1:
        return min(setting, rows)
    if gpu or replicas > 1:
        return 1
    return max(1, min(cores, rows, MAX_AUTO_PARTS))


def use_cores(setting: int, batch_size: int, strategy) -> CoreLayout:
    """Choose the batch split of a run and set this process's intra-op threads to match (before the runtime starts).

    Args:
        setting: ``--batch-split`` (0 = auto).
        batch_size: the global batch.
        strategy: the run's ``tf.distribute`` strategy (``distribute.make_strategy``).
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    gpu = bool(tf.config.list_physical_devices("GPU"))
    cores, rows = usable_cores(), max(1, batch_size // replicas)
    parts = batch_parts(setting, rows, cores, gpu, replicas)
    threads = max(1, cores // parts)
    if parts == 1 or gpu or not _set_intra_op_threads(threads):
        threads = None  # left as TensorFlow has them
    return CoreLayout(parts, threads, -(-rows // parts))


def _set_intra_op_threads(threads: int) -> bool:
    """Set TensorFlow's intra-op thread count; False when its runtime has started with another count.

    Args:
        threads: threads per op.
    """
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # "Intra op parallelism cannot be modified after initialization"
        return False
    return True
