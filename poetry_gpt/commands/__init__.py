"""Subcommands of ``poetry-gpt``, one module per job; ``register_all`` attaches them."""
from __future__ import annotations

import importlib

# (module, attribute, group) — group "main" or "corpus"; a module that does not exist yet is skipped
_COMMANDS = [
    ("env", "env_cmd", "main"),
    ("prepare", "prepare_cmd", "main"),
    ("prepare", "stats_cmd", "corpus"),
    ("corpus_import", "import_cmd", "corpus"),
    ("corpus_import", "download_cmd", "corpus"),
    ("train", "train_cmd", "main"),
    ("train", "pipeline_cmd", "main"),
    ("generate", "generate_cmd", "main"),
    ("generate", "chat_cmd", "main"),
    ("evaluate", "eval_cmd", "main"),
    ("serve", "serve_cmd", "main"),
    ("check", "check_cmd", "main"),
    ("export", "export_cmd", "main"),
]


def register_all(main, corpus) -> None:
    """Add every available subcommand to the ``main`` and ``corpus`` groups."""
    groups = {"main": main, "corpus": corpus}
    for module, attr, group in _COMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module}":
                continue
            raise
        cmd = getattr(mod, attr, None)
        if cmd is not None:
            groups[group].add_command(cmd)
