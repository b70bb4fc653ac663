"""Typed, frozen configuration: data, model and training settings, with validation.

The dataclass defaults are the ``small`` model (the benchmark shape); the named
presets in the top-level ``configs.py`` list only what differs from them.
``RunConfig`` bundles the model and training parts and round-trips through JSON
so that a run directory records exactly how it was made.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .errors import OptionError
from .errors import require

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
ATTENTIONS = ("poem", "row")
#: the schedule of a new ``--max-time`` run without ``--schedule`` (``run_dir.resolve_config``)
TIMED_SCHEDULE = "wsd"
TUNE_METHODS = ("full", "bitfit", "adapter", "prefix", "lora")  # train --tune (model/peft.py computes them)
#: the methods that train ``embedding_rank``'s update of the tied embedding (LoRA has its own, on ``wte``)
EMBEDDING_UPDATE_METHODS = ("bitfit", "adapter", "prefix")
LORA_TARGETS = ("c_attn", "c_proj", "c_fc", "mlp_c_proj", "wte")  # the matrices --lora-targets may name
#: a new ``--tune M`` run's peak learning rate is the preset's ``train.learning_rate`` times ``TUNE_LR_SCALES[M]``
#: unless ``--learning-rate`` is given: the frozen-base methods train few, mostly fresh parameters and need larger
#: steps (song-ci on a tang-full ``small`` base, 300-step sweeps: README, "Parameter-efficient fine-tuning")
TUNE_LR_SCALES = {"full": 1.0, "bitfit": 30.0, "adapter": 10.0, "prefix": 30.0, "lora": 10.0}
DEFAULT_MAX_CHARS = 4096  # longest raw.txt line read; longer ones are skipped and counted
DEFAULT_N_CTX = 128  # the small model's context, also what `prepare` counts long poems against


@dataclass(frozen=True)
class DataConfig:
    """How ``prepare`` turns raw.txt into a DATA_DIR.

    Args:
        valid_fraction: share of poems held out for validation (at least one poem each split).
        seed: seed of the deterministic train/validation split.
        min_count: characters seen fewer times map to [UNK].
        max_chars: lines longer than this many characters are skipped (counted in the report).
        keep_duplicates: keep poems whose body repeats an earlier one.
        shard_poems: poems per TFRecord shard.
    """

    valid_fraction: float = 0.02
    seed: int = 1234
    min_count: int = 1
    max_chars: int = DEFAULT_MAX_CHARS
    keep_duplicates: bool = False
    shard_poems: int = 20000

    def __post_init__(self):
        require(0.0 < self.valid_fraction < 1.0, "--valid-fraction", f"must be between 0 and 1 (exclusive), got {self.valid_fraction}")
        require(self.min_count >= 1, "--min-count", f"must be ≥ 1, got {self.min_count}")
        require(self.max_chars >= 8, "--max-chars", f"must be ≥ 8, got {self.max_chars}")
        require(self.shard_poems >= 1, "--shard-poems", f"must be ≥ 1, got {self.shard_poems}")


@dataclass(frozen=True)
class ModelConfig:
    """The GPT-2 shape (vocabulary size comes from the DATA_DIR, not from here).

    Args:
        n_layer: transformer blocks.
        n_embd: model width.
        n_head: attention heads (must divide ``n_embd``).
        n_ctx: context length in characters, also the packed training sequence length.
        dropout: dropout on embeddings, residuals and attention.
    """

    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    n_ctx: int = DEFAULT_N_CTX
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "n_ctx"):
            require(getattr(self, name) >= 1, f"model.{name}", f"must be ≥ 1, got {getattr(self, name)}")
        require(self.n_embd % self.n_head == 0, "model.n_head", f"must divide n_embd={self.n_embd}, got {self.n_head}")
        require(self.n_ctx >= 16, "model.n_ctx", f"must be ≥ 16, got {self.n_ctx}")
        require(0.0 <= self.dropout < 1.0, "--dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """How ``train`` optimises.

    Args:
        batch_size: sequences per step (global, across replicas).
        epochs: total epochs (a resumed run trains until this many are done, like Keras' ``initial_epoch``).
        steps_per_epoch: steps per epoch; 0 means one full pass over the training split.
        learning_rate: peak AdamW learning rate.
        min_lr_ratio: the decayed learning rate ends at ``learning_rate * min_lr_ratio``.
        warmup_steps: linear warm-up steps from 0 to the peak.
        schedule: decay after warm-up: cosine, linear, constant or wsd (the peak, then a linear cool-down
            over the last 20% of the steps; ``train.schedule``).
        weight_decay: decoupled AdamW weight decay (not on biases, layer norms).
        beta1: AdamW beta 1.
        beta2: AdamW beta 2.
        grad_clip: global-norm gradient clipping (0 = off).
        precision: auto (bf16 on CPUs with AMX/AVX512-BF16 and on GPUs that support it, else fp32), fp32, bf16, fp16.
        seed: seed for weight init and data order.
        keep_checkpoints: how many recent checkpoints to keep.
        checkpoint_every: also checkpoint every this many steps inside an epoch (0 = only at epoch ends).
        samples_per_epoch: sample poems written to ``samples/`` after each epoch.
        strategy: tf.distribute strategy: auto, default (one device), mirrored, multi-worker.
        batch_split: parts each step's batch is computed in, side by side, one core each (``train/cores.py``):
            0 = auto (one per usable core, at most 4, on a CPU-only run of one replica), 1 = the whole batch
            at once.
            Speed only: the step is the same up to float rounding (dropout masks are drawn per part).
        attention: what a position of a packed training row attends to: ``poem`` = its own poem only, positions
            counted from the poem's ``[SEP]`` (as generation and ``eval`` see a poem, one a row); ``row`` = the
            whole row's past, poems run together (nanoGPT's way; how runs recorded before this setting trained).
    """

    batch_size: int = 16
    epochs: int = 1
    steps_per_epoch: int = 0
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    precision: str = "auto"
    seed: int = 1234
    keep_checkpoints: int = 3
    checkpoint_every: int = 500
    samples_per_epoch: int = 4
    strategy: str = "auto"
    batch_split: int = 0
    attention: str = "poem"

    def __post_init__(self):
        require(self.batch_size >= 1, "--batch-size", f"must be ≥ 1, got {self.batch_size}")
        require(self.epochs >= 1, "--epochs", f"must be ≥ 1, got {self.epochs}")
        require(self.steps_per_epoch >= 0, "--steps-per-epoch", f"must be ≥ 0 (0 = one pass), got {self.steps_per_epoch}")
        require(self.learning_rate > 0, "--learning-rate", f"must be > 0, got {self.learning_rate}")
        require(0.0 <= self.min_lr_ratio <= 1.0, "--min-lr-ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        require(self.warmup_steps >= 0, "--warmup-steps", f"must be ≥ 0, got {self.warmup_steps}")
        require(self.schedule in SCHEDULES, "--schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.weight_decay >= 0, "--weight-decay", f"must be ≥ 0, got {self.weight_decay}")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1/--beta2", "must be in [0, 1)")
        require(self.grad_clip >= 0, "--grad-clip", f"must be ≥ 0, got {self.grad_clip}")
        require(self.precision in PRECISIONS, "--precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        require(self.keep_checkpoints >= 1, "--keep-checkpoints", f"must be ≥ 1, got {self.keep_checkpoints}")
        require(self.checkpoint_every >= 0, "--checkpoint-every", f"must be ≥ 0, got {self.checkpoint_every}")
        require(self.samples_per_epoch >= 0, "--samples-per-epoch", f"must be ≥ 0, got {self.samples_per_epoch}")
        require(self.strategy in STRATEGIES, "--strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        require(0 <= self.batch_split <= self.batch_size, "--batch-split",
                f"must be 0 (auto) or from 1 to the batch size {self.batch_size}, got {self.batch_split}")
        require(self.attention in ATTENTIONS, "--attention",
                f"must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")


@dataclass(frozen=True)
class TuneSettings:
    """How ``train --init-from BASE`` fine-tunes (``--tune`` and its sizes); the run records them, so a resume
    needs no flag. ``model.peft`` computes with them (``peft.TuneConfig`` is this class).

    Args:
        method: full (every weight), bitfit (biases), adapter, prefix or lora.
        adapter_size: the adapters' bottleneck width (``--adapter-size``).
        prefix_length: virtual key/value positions per layer (``--prefix-length``).
        lora_rank: LoRA's rank in the blocks (``--lora-rank``).
        lora_embedding_rank: the rank of LoRA on ``wte`` when it is a target (``--lora-embedding-rank``). Its
            update uses the blocks' scale ``alpha / lora_rank``, so a larger rank adds directions without
            shrinking each one's step. A run recorded before this setting existed used ``lora_rank`` there
            (``recorded_tune``).
        lora_alpha: LoRA's scale numerator: the update is ``alpha / rank · A·B`` (``--lora-alpha``).
        lora_targets: the matrices LoRA adds to, among ``LORA_TARGETS`` (``--lora-targets c_attn,c_proj``).
        embedding_rank: bitfit, adapter and prefix also train a rank-``embedding_rank`` update of the tied
            embedding (the input embedding and the LM head), as LoRA does on ``wte`` (``--embedding-rank``; 0: the
            method alone). Their papers train the task's head beside the method's own weights; an LM's head is its
            embedding, whose full training would be a quarter of ``small``'s weights. A run recorded before this
            setting existed trained without it (``recorded_tune``).
        lr_scales: per method, the multiple of the preset's learning rate a new run of it trains at (a preset's
            ``tune`` section may set some; the others keep ``TUNE_LR_SCALES``'s).
    """

    method: str = "full"
    adapter_size: int = 32
    prefix_length: int = 16
    lora_rank: int = 4
    # wte is where a new genre's choice of characters moves (README, fine-tuning figures): 12 keeps small's LoRA
    # under 2% of its parameters (song-ci on tang-full, 300 steps: 4.406 at rank 4, 4.382 at 12, 4.371 at 16)
    lora_embedding_rank: int = 12
    lora_alpha: float = 16.0
    lora_targets: tuple = LORA_TARGETS  # every block matrix and the embedding: see README, fine-tuning figures
    # song-ci on tang-full, 300 steps: bitfit 4.80 -> 4.56, adapter 4.55 -> 4.43, prefix 4.94 -> 4.63 (README);
    # 12 keeps adapter (32) under 2% of small's parameters
    embedding_rank: int = 12
    lr_scales: dict = field(default_factory=dict)  # completed from TUNE_LR_SCALES in __post_init__

    def __post_init__(self):
        object.__setattr__(self, "lr_scales", {**TUNE_LR_SCALES, **dict(self.lr_scales)})
        bad = {m: x for m, x in self.lr_scales.items()
               if m not in TUNE_METHODS or not isinstance(x, (int, float)) or not x > 0}
        require(not bad, "tune.lr_scales", f"must map methods among {', '.join(TUNE_METHODS)} to numbers > 0, got "
                f"{bad}")
        targets = self.lora_targets
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        object.__setattr__(self, "lora_targets", tuple(targets))  # JSON gives a list, the CLI a text
        require(self.method in TUNE_METHODS, "--tune", f"must be one of {', '.join(TUNE_METHODS)}, got {self.method!r}")
        require(self.adapter_size >= 1, "--adapter-size", f"must be ≥ 1, got {self.adapter_size}")
        require(self.prefix_length >= 1, "--prefix-length", f"must be ≥ 1, got {self.prefix_length}")
        require(self.lora_rank >= 1, "--lora-rank", f"must be ≥ 1, got {self.lora_rank}")
        require(self.lora_embedding_rank >= 1, "--lora-embedding-rank",
                f"must be ≥ 1, got {self.lora_embedding_rank}")
        require(self.embedding_rank >= 0, "--embedding-rank", f"must be ≥ 0, got {self.embedding_rank}")
        require(self.lora_alpha > 0, "--lora-alpha", f"must be > 0, got {self.lora_alpha}")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        require(self.lora_targets and not unknown, "--lora-targets",
                f"must name one or more of {','.join(LORA_TARGETS)} (comma-separated), got "
                f"{','.join(self.lora_targets) or 'nothing'}")
        require(len(set(self.lora_targets)) == len(self.lora_targets), "--lora-targets",
                f"names a matrix twice: {','.join(self.lora_targets)}")

    @property
    def learning_rate_scale(self) -> float:
        """The multiple of the preset's learning rate this method trains at (``lr_scales[method]``)."""
        return float(self.lr_scales[self.method])

    @property
    def lora_scale(self) -> float:
        """LoRA's ``alpha / rank`` (also the scale of the other methods' embedding update)."""
        return self.lora_alpha / self.lora_rank

    @property
    def embedding_update_rank(self) -> int:
        """The rank of the update of the tied embedding this method trains: LoRA's on ``wte`` (when a target),
        ``embedding_rank`` for bitfit, adapter and prefix, 0 for full (which trains the embedding itself)."""
        if self.method == "lora":
            return self.lora_embedding_rank if "wte" in self.lora_targets else 0
        return self.embedding_rank if self.method in EMBEDDING_UPDATE_METHODS else 0

    def describe(self) -> str:
        """The method and the sizes that apply to it, e.g.
        ``lora (rank 4, alpha 16, c_attn,c_proj,wte; wte rank 12)``."""
        sizes = {"adapter": f"size {self.adapter_size}", "prefix": f"length {self.prefix_length}",
                 "lora": f"rank {self.lora_rank}, alpha {self.lora_alpha:g}, {','.join(self.lora_targets)}"}
        parts = [sizes[self.method]] if self.method in sizes else []
        if self.embedding_update_rank:
            parts.append(f"wte rank {self.embedding_update_rank}")
        return self.method + (f" ({'; '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is made of: preset name, model shape and training settings.

    Args:
        preset: the name of the preset it started from.
        model: the model shape.
        train: the training settings.
        tune: how a fine-tuning run tunes (``full`` for a new run).
    """

    preset: str = "small"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneSettings = field(default_factory=TuneSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        return cls(preset=data.get("preset", "custom"),
                   model=_build(ModelConfig, data.get("model", {}), "model"),
                   train=_build(TrainConfig, recorded_train(data.get("train", {})), "train"),
                   tune=_build(TuneSettings, recorded_tune(data.get("tune", {})), "tune"))

    def replace(self, model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                tune: Mapping[str, Any] | None = None) -> "RunConfig":
        """A copy with some model / train / tune fields changed (validated; unknown names are an ``OptionError``)."""
        return RunConfig(self.preset,
                         _build(ModelConfig, {**dataclasses.asdict(self.model), **(model or {})}, "model"),
                         _build(TrainConfig, {**dataclasses.asdict(self.train), **(train or {})}, "train"),
                         _build(TuneSettings, {**dataclasses.asdict(self.tune), **(tune or {})}, "tune"))


def recorded_train(values: Mapping[str, Any]) -> dict:
    """A recorded ``train`` section as ``TrainConfig`` reads it today: one recorded before ``attention`` existed
    trained with ``row`` attention, and its resume keeps it.

    Args:
        values: the recorded section.
    """
    return {"attention": "row", **values}


def recorded_tune(values: Mapping[str, Any]) -> dict:
    """A recorded ``tune`` section (run.json, a tuning file's header) as ``TuneSettings`` reads it today: one
    recorded before ``lora_embedding_rank`` existed had LoRA on ``wte`` at ``lora_rank``; one recorded before
    ``embedding_rank`` existed trained bitfit, adapter and prefix without an embedding update.

    Args:
        values: the recorded section.
    """
    values = {"embedding_rank": 0, **values}
    if "lora_embedding_rank" not in values:
        values["lora_embedding_rank"] = values.get("lora_rank", TuneSettings.lora_rank)
    return values


def _build(cls, values: Mapping[str, Any], section: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OptionError(f"{section}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return cls(**values)


def config_from_preset(name: str, presets: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> RunConfig:
    """Resolve a named preset from ``configs.py`` into a ``RunConfig``.

    Args:
        name: preset name such as ``tiny`` or ``small``.
        presets: mapping to look in (default: the ``PRESETS`` of ``configs.py``, see ``presets.py``).
    """
    if presets is None:
        from .presets import load_presets

        presets = load_presets()
    if name not in presets:
        raise OptionError(f"--config: unknown preset {name!r}; choose one of {', '.join(presets)}")
    spec = presets[name]
    return RunConfig(preset=name,
                     model=_build(ModelConfig, spec.get("model", {}), "model"),
                     train=_build(TrainConfig, spec.get("train", {}), "train"),
                     tune=_build(TuneSettings, spec.get("tune", {}), "tune"))
