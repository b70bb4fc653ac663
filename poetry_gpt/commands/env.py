"""``poetry-gpt env``: what is installed, and whether it can work together."""
from __future__ import annotations

import json

import click


@click.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def env_cmd(as_json):
    """Check the TensorFlow / Keras / transformers installation; exit 1 when it cannot work."""
    from ..envcheck import environment_report

    report = environment_report(import_tf=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"python {report['python']}")
        for name, version in report["versions"].items():
            click.echo(f"{name:14} {version or '-'}")
        click.echo(f"TF_USE_LEGACY_KERAS={report['TF_USE_LEGACY_KERAS']}, tf.keras {report.get('tf.keras', '?')}")
        cpu = report["cpu"]
        click.echo(f"CPU: {cpu['cores']} cores, AMX bf16: {cpu['amx_bf16']}, AVX512 bf16: {cpu['avx512_bf16']}; "
                   f"GPUs: {', '.join(report.get('gpus', [])) or 'none'}")
    if report["problems"]:
        for p in report["problems"]:
            click.echo(f"Problem: {p}", err=True)
        raise SystemExit(1)
    if not as_json:
        click.echo("OK: this installation can train and generate.")
