"""The XLA flags poetry_gpt runs with: XLA:CPU's YNNPACK fusions off.

TensorFlow 2.21's XLA turns parts of a compiled program into YNNPACK fusions by default. The first time a
fusion that holds a constant runs, XLA builds its YNNPACK executable and keeps a copy of each constant in a
list without a lock; two threads running the same compiled program at once for the first time (the two
halves of a batch under ``train --batch-split``, or two independent ops of a step) can append at the same
moment, and the process dies of a segmentation fault (native stack: ``YnnFusionThunk::CreateYnnExecutable``
→ ``std::vector<std::unique_ptr<xla::Literal>>::_M_realloc_insert``; about 1 ``train`` start in 80 on 2
cores). Later XLA releases guard that list with a mutex. With the fusions off, XLA compiles those
operations with its own emitters. ``scripts/bench.py --only train`` measured the training speed with and
without them (README, Performance).

XLA reads ``XLA_FLAGS`` once, at the first compile in the process, so ``poetry_gpt/__init__.py`` sets it when
the package is imported, like ``TF_USE_LEGACY_KERAS``. A user who sets the fusion types themselves in
``XLA_FLAGS`` keeps their setting.
"""
from __future__ import annotations

#: the XLA flag naming the YNNPACK fusion types XLA:CPU may use
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def without_ynn_fusions(xla_flags: str | None) -> str:
    """``XLA_FLAGS`` with XLA:CPU's YNNPACK fusions off, unless the flags already choose the fusion types.

    Args:
        xla_flags: the current ``XLA_FLAGS`` value, or None when unset.
    """
    flags = (xla_flags or "").split()
    if any(flag.split("=", 1)[0] == YNN_FUSION_FLAG for flag in flags):
        return xla_flags or ""
    return " ".join(flags + [f"{YNN_FUSION_FLAG}="])
