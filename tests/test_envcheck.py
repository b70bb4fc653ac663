"""The installation check: clean here; a bad combination is named together with its fix."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from poetry_gpt import envcheck
from poetry_gpt.cli import main
from poetry_gpt.errors import EnvironmentProblem

REAL_VERSION = envcheck._version


def fake_versions(monkeypatch, **versions):
    """Pretend the given distributions have these versions (None: not installed)."""
    names = {k.replace("_", "-"): v for k, v in versions.items()}
    monkeypatch.setattr(envcheck, "_version", lambda dist: names[dist] if dist in names else REAL_VERSION(dist))


def test_this_installation_has_no_problems():
    report = envcheck.environment_report(import_tf=True)
    assert report["problems"] == []
    assert report["versions"]["tensorflow"].startswith(envcheck.TF_SERIES + ".")
    assert report["tf.keras"] == "tf_keras"
    assert report["TF_USE_LEGACY_KERAS"] == "1"
    assert report["cpu"]["cores"] >= 1
    envcheck.require_compatible()  # does not raise


def test_env_command_exits_0_here():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    assert "OK: this installation can train and generate." in result.output
    as_json = CliRunner().invoke(main, ["env", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["problems"] == []


def test_transformers_5_and_keras_3_are_named_with_the_fix(monkeypatch):
    fake_versions(monkeypatch, transformers="5.0.0")
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "0")
    problems = envcheck.environment_report(import_tf=False)["problems"]
    assert len(problems) == 2
    assert "transformers 5.0.0 is installed, but version 5 removed every TensorFlow model" in problems[0]
    assert "pip install 'transformers>=4.57.6,<5'" in problems[0]
    assert "TF_USE_LEGACY_KERAS='0'" in problems[1] and "set TF_USE_LEGACY_KERAS=1" in problems[1]
    with pytest.raises(EnvironmentProblem, match=r"transformers 5.0.0 .*<5'.*run `poetry-gpt env` for the full report"):
        envcheck.require_compatible()
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 1
    assert "Problem: transformers 5.0.0" in result.stderr and "Problem: TF_USE_LEGACY_KERAS='0'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("versions, fragment", [
    ({"tensorflow": None, "tensorflow_cpu": None}, "TensorFlow is not installed: pip install 'tensorflow==2.21.*'"),
    ({"tensorflow": "2.16.1", "tf_keras": "2.16.0"}, "TensorFlow 2.16.1 is installed; poetry_gpt is tested with 2.21.*"),
    ({"tf_keras": None}, "tf-keras is not installed"),
    ({"tf_keras": "2.19.0"}, "tf-keras 2.19.0 does not match TensorFlow"),
    ({"transformers": None}, "transformers is not installed: pip install 'transformers>=4.57.6,<5'"),
    ({"transformers": "4.40.0"}, "transformers 4.40.0 is older than tested"),
    ({"transformers": "5.0.0rc1"}, "transformers 5.0.0rc1 is installed, but version 5 removed"),
])
def test_each_bad_version_is_named(monkeypatch, versions, fragment):
    fake_versions(monkeypatch, **versions)
    problems = envcheck.environment_report(import_tf=False)["problems"]
    assert any(fragment in p for p in problems), problems


def test_unset_legacy_keras_is_a_problem(monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    problems = envcheck.environment_report(import_tf=False)["problems"]
    assert problems == ["TF_USE_LEGACY_KERAS=None: tf.keras would be Keras 3, which transformers' TF models cannot use; "
                        "unset it or set TF_USE_LEGACY_KERAS=1"]


def test_version_tuple():
    assert envcheck._tuple("4.57.6") == (4, 57, 6)
    assert envcheck._tuple("5.0.0rc1") == (5, 0, 0)
    assert envcheck._tuple("2.21") == (2, 21, 0)
    assert envcheck._tuple("4.57.6rc1") == (4, 57, 6) and envcheck._tuple("4.58.0.dev0") == (4, 58, 0)
    assert envcheck._version("no-such-distribution-here") is None
