"""``--batch-split``: a step's batch computed in parts side by side (``poetry_gpt/train/cores.py``).

The parts must give the step the whole batch gives (up to float rounding), draw their own dropout masks,
and the process's threads must be set to one core per part before TensorFlow's runtime starts.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import cli, failure_text, prepared_data
from poetry_gpt.config import TrainConfig, config_from_preset
from poetry_gpt.errors import OptionError
from poetry_gpt.train.cores import CoreLayout, batch_parts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_data(tmp_path_factory.mktemp("cores"), 120)


@pytest.mark.parametrize("setting, rows, cores, gpu, replicas, expected", [
    (0, 16, 2, False, 1, 2),  # auto: one part per core
    (0, 16, 1, False, 1, 1),
    (0, 3, 8, False, 1, 3),  # at most one part per row
    (0, 16, 8, False, 1, 4),  # at most MAX_AUTO_PARTS (each part holds a copy of the gradients)
    (0, 16, 8, True, 1, 1),  # a GPU: whole
    (0, 8, 2, False, 2, 1),  # several replicas: whole
    (4, 16, 2, False, 1, 4),  # as given
    (4, 2, 2, False, 1, 2),  # …capped at the rows of a replica
    (1, 16, 8, False, 1, 1),  # off
])
def test_the_parts_of_a_batch(setting, rows, cores, gpu, replicas, expected):
    assert batch_parts(setting, rows, cores, gpu, replicas) == expected


def test_the_announce_line_names_the_split():
    assert CoreLayout(2, 1, 8).describe() == "batch in 2 parts of 8 rows, 1 thread each"
    assert CoreLayout(4, None, 3).describe() == "batch in 4 parts of 3 rows"
    assert CoreLayout(1, None, 16).describe() == "batch in one part"


@pytest.mark.parametrize("value", [-1, 17])
def test_a_split_outside_the_batch_is_refused(value):
    with pytest.raises(OptionError, match=r"--batch-split: must be 0 \(auto\) or from 1 to the batch size 16"):
        TrainConfig(batch_size=16, batch_split=value)


def _trainers(data_dir, dropout: float, batch_size: int, parts: tuple[int, ...]):
    """Trainers of the same new ``tiny`` model (fp32), one per number of parts, and a batch of the data."""
    from poetry_gpt.data.datasets import train_dataset
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.data.vocab import CharVocab
    from poetry_gpt.model.gpt2 import build_model
    from poetry_gpt.train.trainer import build_lm_trainer, make_optimizer, set_precision

    set_precision("fp32")
    config = config_from_preset("tiny").replace(model={"dropout": dropout}, train={"precision": "fp32"})
    vocab = CharVocab.load(data_dir)
    batch = next(iter(train_dataset(load_manifest(data_dir), batch_size, 64, seed=3, pad_id=vocab.pad_id,
                                    sep_id=vocab.sep_id)))
    trainers = []
    for n in parts:
        trainer = build_lm_trainer(build_model(config.model, vocab, seed=11), seed=5, parts=n)
        trainer.compile(optimizer=make_optimizer(config, 10, "fp32"))
        trainers.append(trainer)
    return trainers, batch


@pytest.mark.parametrize("batch_size, parts", [(8, 2), (7, 3)])  # 7 rows in 3 parts: parts of 3, 2 and 2 rows
def test_a_step_in_parts_is_the_step_of_the_whole_batch(data_dir, batch_size, parts):
    """The same loss and gradients (float32, up to summation order) from the whole batch and from its parts."""
    (whole, split), batch = _trainers(data_dir, 0.0, batch_size, (1, parts))
    (loss_whole, grads_whole), (loss_split, grads_split) = (_loss_and_gradients(t, batch) for t in (whole, split))
    assert loss_split == pytest.approx(loss_whole, rel=1e-6)
    for var, g_whole, g_split in zip(whole.lm.trainable_variables, grads_whole, grads_split):
        scale = float(np.abs(g_whole).max())
        assert scale > 0, var.name
        np.testing.assert_allclose(g_split, g_whole, rtol=1e-4, atol=1e-5 * scale, err_msg=var.name)


def _loss_and_gradients(trainer, batch):
    """A training step's mean loss and its gradients (numpy, in ``trainable_variables`` order)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss_sum, count = trainer._loss_terms(batch, training=True)
        loss = loss_sum / count
    grads = tape.gradient(loss, trainer.lm.trainable_variables)
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def test_each_part_draws_its_own_dropout_masks(data_dir):
    """Two parts holding the same rows get different losses in training: their masks differ."""
    import tensorflow as tf

    (split,), batch = _trainers(data_dir, 0.3, 8, (2,))
    same_rows = {k: tf.repeat(v[:4], 2, axis=0) for k, v in batch.items()}  # rows 2i and 2i+1 equal
    seen = []
    part_terms = split._part_terms

    def recording(*args):
        terms = part_terms(*args)
        seen.append(float(terms[0]))
        return terms

    split._part_terms = recording
    split._loss_terms(same_rows, training=True)
    assert len(seen) == 2 and seen[0] != seen[1], seen
    seen.clear()
    split._loss_terms(same_rows, training=False)  # no dropout: the same rows, the same loss
    assert seen[0] == pytest.approx(seen[1], rel=1e-6)


USE_CORES = """
import json
import poetry_gpt, tensorflow as tf
from poetry_gpt.train.cores import use_cores, usable_cores
layout = use_cores(0, 16, tf.distribute.get_strategy())
print(json.dumps({"parts": layout.parts, "threads": layout.threads, "cores": usable_cores(),
                  "tf_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                  "value": float(tf.reduce_sum(tf.range(10.0)))}))
"""


def test_a_new_process_gets_one_thread_per_part():
    proc = subprocess.run([sys.executable, "-c", USE_CORES], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, failure_text(proc.stderr)
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["parts"] == min(out["cores"], 4)
    if out["parts"] > 1:
        assert out["threads"] == out["tf_threads"] == out["cores"] // out["parts"], out
    assert out["value"] == 45.0


def test_a_run_records_and_announces_its_split(tmp_path, data_dir):
    from poetry_gpt.train.loop import train

    lines: list[str] = []
    config = config_from_preset("tiny").replace(train=dict(precision="fp32", steps_per_epoch=3, samples_per_epoch=0,
                                                           batch_split=4))
    train(data_dir, tmp_path / "run", config, echo=lines.append, verbose=0)
    made = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any("batch in 4 parts of 2 rows" in line for line in lines), lines
    assert _find(made, "batch_parts") == 4
    assert _find(made, "batch_split") == 4  # the setting, for a resume


def _find(record, key):
    """The value of ``key`` anywhere in a nested dict (run.json's sections)."""
    if isinstance(record, dict):
        if key in record:
            return record[key]
        for value in record.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def test_the_cli_refuses_a_split_larger_than_the_batch(tmp_path, data_dir):
    proc = subprocess.run(cli() + ["train", "--data", str(data_dir), "--run", str(tmp_path / "run"), "--config",
                                   "tiny", "--batch-split", "9"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: --batch-split: must be 0 (auto) or from 1 to the batch size 8, got 9"
    assert not (tmp_path / "run").exists()
