"""``poetry-gpt export``: the whole poet as a TensorFlow SavedModel (see ``poetry_gpt.serve.saved_model``)."""
from __future__ import annotations

import click


@click.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=str),
              help="RUN_DIR written by `poetry-gpt train` (uses its export/), or an export folder.")
@click.option("--saved-model", "out", required=True, type=click.Path(path_type=str),
              help="The SavedModel folder to write (refused when it exists, unless --overwrite).")
@click.option("--checkpoint", default=None,
              help="Use this training checkpoint of RUN_DIR instead of export/: latest, a step, or ckpt-N.")
@click.option("--batch-sizes", default="1,8", show_default=True,
              help="Batch sizes to trace programs for; a request runs at the smallest that holds it "
                   "(larger ones in chunks of the largest).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --saved-model folder (atomically).")
def export_cmd(run_dir, out, checkpoint, batch_sizes, overwrite):
    """Write a SavedModel that takes prompts and returns poems with nothing but TensorFlow.

    Load it with tf.saved_model.load(OUT).signatures["serving_default"] or serve it with
    TensorFlow Serving; the README's "Export for TensorFlow Serving" lists its inputs and outputs.
    """
    from transformers.utils import logging as hf_logging

    from ..serve.saved_model import ASSET, export_saved_model, parse_batch_sizes

    parse_batch_sizes(batch_sizes)  # refuse a bad value before the (slow) model load
    hf_logging.set_verbosity_error()
    info = export_saved_model(run_dir, out, checkpoint=checkpoint, batch_sizes=batch_sizes, overwrite=overwrite)
    step = info["source"]["global_step"]
    click.echo(f"SavedModel written to {out} ({info['bytes'] / 1e6:.1f} MB, {info['seconds']:.1f} s; "
               f"step {step if step is not None else '?'}, batch sizes {','.join(map(str, info['batch_sizes']))}; "
               f"facts in {out}/assets/{ASSET})")
