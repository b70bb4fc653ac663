"""The nanoGPT-style PyTorch baseline, written here: its GPT-2, its training loop and its validation score.

What nanoGPT does to train this shape fast on a CPU: ``F.scaled_dot_product_attention(is_causal=True)``,
fused AdamW (foreach where fused is missing), ``torch.autocast('cpu', bfloat16)``, packed rows, decay on the
matrices only, GPT-2's init (std 0.02, residual projections 0.02/sqrt(2·n_layer)), a head tied to the token
embedding. It reads the very packed rows poetry_gpt trains on — ``child_rows`` writes them from
``trainer.training_data`` of the same DATA_DIR and preset — and takes the preset's shape, batch, learning rate,
warm-up, decay (``poetry_gpt.train.schedule.lr_at``), betas, weight decay and clipping. No ``torch.compile``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from .machine import usable_cores


def child_rows(a: dict) -> dict:
    """Write poetry_gpt's packed training batches (and, with ``valid``, its validation windows) as ``.npy`` files.

    Args:
        a: ``data_dir``, ``preset``, ``steps`` (batches to write), ``out`` (a folder), ``valid`` (bool), ``seed``
            (optional: the data order of that run seed; default the preset's).
    """
    import numpy as np

    import poetry_gpt  # noqa: F401
    from poetry_gpt.data.datasets import eval_dataset
    from poetry_gpt.data.manifest import load_manifest
    from poetry_gpt.train.distribute import make_strategy
    from poetry_gpt.train.trainer import training_data

    from .train import preset_config

    config = preset_config(a["preset"], a.get("seed"))
    manifest = load_manifest(a["data_dir"])
    vocab = manifest.load_vocab()
    stream = training_data(manifest, config, vocab, make_strategy(config.train.strategy))
    rows = np.stack([b["input_ids"].numpy() for b in stream.take(a["steps"])])
    out = Path(a["out"])
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train_rows.npy", rows)
    done = {"train_rows": str(out / "train_rows.npy"), "batches": int(rows.shape[0]), "shape": list(rows.shape)}
    if a.get("valid"):
        batches = list(eval_dataset(manifest, config.train.batch_size, config.model.n_ctx, pad_id=vocab.pad_id,
                                    sep_id=vocab.sep_id))
        ids = np.concatenate([b["input_ids"].numpy() for b in batches])
        labels = np.concatenate([b["labels"].numpy() for b in batches])
        np.save(out / "valid_ids.npy", ids)
        np.save(out / "valid_labels.npy", labels)
        done.update(valid_ids=str(out / "valid_ids.npy"), valid_labels=str(out / "valid_labels.npy"),
                    valid_rows=int(ids.shape[0]), valid_targets=int((labels[:, 1:] != -100).sum()))
    return done


def gpt_model(torch, vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_ctx: int):
    """nanoGPT's GPT-2 (biases, tanh GELU as GPT-2's ``gelu_new``, LayerNorm eps 1e-5, tied head), GPT-2's init.

    Args:
        torch: the torch module.
        vocab_size: rows of the token embedding.
        n_layer: blocks.
        n_embd: width.
        n_head: attention heads.
        n_ctx: positions.
    """
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = (z.view(B, T, n_head, C // n_head).transpose(1, 2) for z in self.c_attn(x).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(n_embd), Attention(), nn.LayerNorm(n_embd)
            self.mlp = nn.Sequential()
            self.mlp.c_fc, self.mlp.gelu = nn.Linear(n_embd, 4 * n_embd), nn.GELU(approximate="tanh")
            self.mlp.c_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(n_ctx, n_embd)
            self.h = nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
                elif p.dim() >= 2:
                    nn.init.normal_(p, 0.0, 0.02)
                elif name.endswith(".bias"):
                    nn.init.zeros_(p)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return GPT()


def load_tf_gpt2(torch, model, lm) -> None:
    """Load a ``TFGPT2LMHeadModel``'s weights into a ``gpt_model`` (Conv1D kernels transposed, the head tied).

    Args:
        torch: the torch module.
        model: the ``gpt_model`` of the same shape.
        lm: the transformers TF model.
    """
    import numpy as np

    state = {}
    for v in lm.weights:
        name, value = torch_name(v.name), v.numpy()
        state[name] = torch.from_numpy(np.ascontiguousarray(as_torch_layout(name, value)))
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)


def torch_name(tf_name: str) -> str:
    """The ``gpt_model`` parameter name of a TF GPT-2 variable (``…/transformer/h_._0/attn/c_attn/weight:0`` →
    ``h.0.attn.c_attn.weight``).

    Args:
        tf_name: the TF variable's name.
    """
    import re

    name = re.sub(r"h_\._(\d+)", r"h.\1", tf_name.split("transformer/", 1)[1].removesuffix(":0")).replace("/", ".")
    return name.replace("embeddings", "weight").replace("gamma", "weight").replace("beta", "bias")


def as_torch_layout(name: str, value):
    """A TF GPT-2 array (or gradient) in ``gpt_model``'s layout: biases flat, Conv1D kernels transposed.

    Args:
        name: its ``torch_name``.
        value: the numpy array.
    """
    if name.endswith(".bias"):
        return value.reshape(-1)
    if value.ndim == 2 and not name.startswith(("wte", "wpe")):
        return value.T
    return value


def next_token_loss(torch, logits, labels, reduction: str = "mean"):
    """Cross-entropy of position t against ``labels[t+1]`` (the last position and labels −100 ignored).

    Args:
        torch: the torch module.
        logits: [B, T, V].
        labels: int64 [B, T].
        reduction: ``mean`` or ``sum``.
    """
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                                             ignore_index=-100, reduction=reduction)


def make_optimizer(torch, model, t):
    """nanoGPT's AdamW: decay on matrices (embeddings included) only, fused where torch has it, else foreach.

    Args:
        torch: the torch module.
        model: the ``gpt_model``.
        t: the preset's ``TrainConfig``.

    Returns:
        ``(optimizer, "fused" | "foreach")``.
    """
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    for kind in ("fused", "foreach"):
        try:
            return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=1e-8,
                                     **{kind: True}), kind
        except (RuntimeError, TypeError, ValueError):
            continue
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=1e-8), "for-loop"


def setup(a: dict):
    """torch on every usable core, the preset, the DATA_DIR's vocabulary, the model and its optimizer
    (None when torch is missing).

    Args:
        a: ``preset``, ``data_dir`` and ``seed`` (optional, default the preset's).
    """
    try:
        import torch
    except ImportError:
        return None
    threads = usable_cores()
    torch.set_num_threads(threads)
    from poetry_gpt.data.vocab import CharVocab

    from .train import preset_config

    config = preset_config(a["preset"], a.get("seed"))
    m, t = config.model, config.train
    torch.manual_seed(t.seed)
    vocab = CharVocab.load(a["data_dir"])
    model = gpt_model(torch, vocab.size, m.n_layer, m.n_embd, m.n_head, m.n_ctx)
    optimizer, kind = make_optimizer(torch, model, t)
    return torch, config, model, optimizer, {"threads": threads, "adamw": kind, "vocab": vocab}


def train_steps(torch, model, optimizer, rows, t, total: int) -> tuple[list[float], float]:
    """``total`` steps on ``rows[k]``, the preset's warm-up + decay over ``total``, bf16 autocast, clipping.

    Args:
        torch: the torch module.
        model: the ``gpt_model``.
        optimizer: its AdamW.
        rows: int64 tensor [≥ total, B, T].
        t: the preset's ``TrainConfig``.
        total: steps (the end of the decay).

    Returns:
        ``(times, last loss)``: ``times[0]`` before the first step, then one time a finished step.
    """
    from poetry_gpt.train.schedule import lr_at

    model.train()
    times, loss = [time.perf_counter()], None
    for step in range(total):
        lr = lr_at(step, t.learning_rate, t.warmup_steps, total, t.schedule, t.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = rows[step]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = next_token_loss(torch, model(x), x)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(loss)
        times.append(time.perf_counter())
    return times, loss


def validation_loss(torch, model, ids, labels, batch_size: int) -> dict:
    """Token-mean cross-entropy over poetry_gpt's validation windows, float32, as ``eval.validation_loss``.

    Args:
        torch: the torch module.
        model: the ``gpt_model``.
        ids: int64 tensor [rows, T] (``datasets.eval_dataset``'s input_ids).
        labels: int64 tensor [rows, T] (its labels, −100 where not scored).
        batch_size: rows per forward pass.
    """
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.size(0), batch_size):
            x, y = ids[start:start + batch_size], labels[start:start + batch_size]
            total += float(next_token_loss(torch, model(x), y, reduction="sum"))
            count += int((y[:, 1:] != -100).sum())
    return {"loss": total / count if count else None, "tokens": count, "dtype": "float32"}


def describe(config, info: dict) -> dict:
    """The baseline's settings, for the document."""
    t = config.train
    return {"system": "nanoGPT-style PyTorch (written in bench_sections/nanogpt.py): GPT-2 blocks with "
                      "F.scaled_dot_product_attention(is_causal), AdamW " + info["adamw"] + ", torch.autocast('cpu', "
                      "bfloat16), poetry_gpt's packed rows, torch.set_num_threads(every usable core)",
            "precision": "bf16 autocast", "threads": info["threads"], "adamw": info["adamw"],
            "optimizer": f"AdamW (lr {t.learning_rate}, warm-up {t.warmup_steps}, {t.schedule} to "
                         f"{t.min_lr_ratio}×, betas {t.beta1}/{t.beta2}, weight decay {t.weight_decay} on matrices), "
                         f"clip {t.grad_clip}"}


def child_train_nanogpt(a: dict) -> dict:
    """Training speed of the nanoGPT-style baseline on poetry_gpt's packed rows (warm-up + timed steps)."""
    from .train import TORCH_SKIP, _steady, _timing_report

    made = setup(a)
    if made is None:
        return {"skipped": TORCH_SKIP}
    torch, config, model, optimizer, info = made
    import numpy as np

    m = config.model
    rows = torch.from_numpy(np.load(a["rows"]).astype(np.int64))
    total = a["warmup"] + a["steps"]
    times, loss = train_steps(torch, model, optimizer, rows, config.train, total)
    window, durations = _steady(times, a["warmup"])
    B, T = rows.shape[1], rows.shape[2]
    tokens = len(durations) * B * T
    padded = int((rows[a["warmup"]:total] == info["vocab"].pad_id).sum())
    n_params = sum(p.numel() for p in model.parameters())
    return {**describe(config, info), "preset": a["preset"],
            "shape": {"n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "n_ctx": T, "batch_size": B,
                      "vocab_size": info["vocab"].size, "dropout": 0.0},
            "params": n_params, "flops_per_token": 6 * n_params + 12 * m.n_layer * T * m.n_embd,
            "warmup_steps": a["warmup"], "final_loss": round(loss, 4),
            **_timing_report(window, durations, tokens, tokens - padded, padded)}
