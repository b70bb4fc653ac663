"""XLA:CPU's YNNPACK fusions are off in every process that imports poetry_gpt (``poetry_gpt/xla_flags.py``)."""
from __future__ import annotations

import os
import subprocess
import sys

from helpers import failure_text
from poetry_gpt.xla_flags import YNN_FUSION_FLAG, without_ynn_fusions

# a row mean (a reduction with constants, as in ``fused_ops``' layer norms): does XLA:CPU make a YNNPACK fusion?
USES_YNN = """
{imports}
import tensorflow as tf

@tf.function(jit_compile=True)
def row_mean(v):
    return tf.reduce_mean(v, axis=-1)

hlo = row_mean.experimental_get_compiler_ir(tf.ones([4, 64, 256]))(stage="optimized_hlo")
print("ynn" in hlo.lower())
"""


def test_unset_flags_get_the_fusions_off():
    assert without_ynn_fusions(None) == f"{YNN_FUSION_FLAG}="
    assert without_ynn_fusions("") == f"{YNN_FUSION_FLAG}="


def test_the_users_other_flags_are_kept():
    assert without_ynn_fusions("--xla_cpu_use_thunk_runtime=true  --xla_dump_to=/tmp/d") == (
        f"--xla_cpu_use_thunk_runtime=true --xla_dump_to=/tmp/d {YNN_FUSION_FLAG}=")


def test_a_users_own_fusion_choice_is_left_as_it_is():
    mine = f"--xla_dump_to=/tmp/d {YNN_FUSION_FLAG}=individual_dot"
    assert without_ynn_fusions(mine) == mine
    assert without_ynn_fusions(f"{YNN_FUSION_FLAG}x=1") == f"{YNN_FUSION_FLAG}x=1 {YNN_FUSION_FLAG}="


def _uses_ynn(imports: str) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", USES_YNN.format(imports=imports)], capture_output=True, text=True,
                          timeout=300, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, failure_text(proc.stderr)
    return proc.stdout.split()[-1] == "True"


def test_a_process_that_imports_poetry_gpt_compiles_without_ynn_fusions():
    assert _uses_ynn("") is True  # TensorFlow alone does make it one: the check below can see a fusion
    assert _uses_ynn("import poetry_gpt") is False
