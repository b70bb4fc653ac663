"""The inputs the sections share: DATA_DIRs prepared from the corpora and a random-weight export (child ``setup``)."""
from __future__ import annotations

import time
from pathlib import Path


def child_setup(a: dict) -> dict:
    """Prepare DATA_DIRs (optionally from a corpus repeated N times) and a random-weight export."""
    import poetry_gpt  # noqa: F401
    from poetry_gpt.config import DataConfig
    from poetry_gpt.data.prepare import prepare

    done = {}
    for job in a["data"]:
        raw = Path(job["raw"])
        if job["copies"] > 1:
            text = raw.read_text(encoding="utf-8-sig")
            if not text.endswith("\n"):
                text += "\n"
            raw = Path(job["out"] + ".raw.txt")
            raw.write_text(text * job["copies"], encoding="utf-8")
        start = time.perf_counter()
        config = DataConfig(keep_duplicates=job["keep_duplicates"], valid_fraction=job["valid_fraction"])
        result = prepare([raw], job["out"], config)
        if raw != Path(job["raw"]):
            raw.unlink()
        splits = result.manifest["splits"]
        done[job["out"]] = {"seconds": round(time.perf_counter() - start, 2),
                            "train_poems": splits["train"]["poems"], "train_tokens": splits["train"]["tokens"],
                            "valid_poems": splits["valid"]["poems"], "vocab_size": result.manifest["vocab"]["size"]}
    export = a.get("export")
    if export:
        from poetry_gpt.config import ModelConfig
        from poetry_gpt.model.gpt2 import build_model
        from poetry_gpt.model.export import save_export
        from poetry_gpt.data.manifest import load_manifest
        from poetry_gpt.data.vocab import CharVocab

        manifest = load_manifest(export["data_dir"])
        vocab = CharVocab.load(manifest.path)
        shape = export["shape"]
        lm = build_model(ModelConfig(n_layer=shape["n_layer"], n_embd=shape["n_embd"], n_head=shape["n_head"],
                                     n_ctx=shape["n_ctx"]), vocab, seed=0)
        save_export(lm, vocab, export["out"], {"genre": manifest.genre, "genres": manifest.data.get("genres", {}),
                                               "n_ctx": shape["n_ctx"], "random_init": True})
    return {"data": done}
