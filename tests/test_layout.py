"""The package layout: one folder per pipeline stage, and no module imports from a later stage."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "poetry_gpt"
# the stages in pipeline order; a module may import from its own stage and earlier ones only
STAGES = {
    "": 0, "errors": 0, "fsutil": 0, "config": 0, "presets": 0, "sampling": 0, "envcheck": 0, "memory": 0,
    "xla_flags": 0,
    "verse": 1, "data": 2, "run_dir": 3, "model": 4, "train": 5, "generate": 6, "eval": 7, "serve": 8,
    "cli": 9, "commands": 9,
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "_configs.py")


def _name(path: Path, root: Path = PACKAGE) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _stage(parts: list[str]) -> int:
    key = parts[0] if parts else ""
    assert key in STAGES, f"poetry_gpt/{'/'.join(parts)}: not in the layout's stage list (tests/test_layout.py)"
    return STAGES[key]


def _imported(path: Path, root: Path = PACKAGE) -> list[tuple[int, list[str]]]:
    """(line, module path inside poetry_gpt) of every import of the package, lazy ones included.

    Args:
        path: a module file.
        root: the package folder it lies in.
    """
    own = _name(path, root)
    package = own if path.name == "__init__.py" else own[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "poetry_gpt":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import forms` imports the module poetry_gpt.forms
                found.append((node.lineno, target + [alias.name] if not target else target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "poetry_gpt"]
    return found


def _later_imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """The imports of ``path`` that reach a later stage than its own."""
    stage = _stage(_name(path, root))
    return [f"line {line}: poetry_gpt.{'.'.join(target)}" for line, target in _imported(path, root)
            if target and target[0] in STAGES and STAGES[target[0]] > stage]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_later_stage(path):
    later = _later_imports(path)
    assert not later, f"poetry_gpt/{path.relative_to(PACKAGE)} imports from a later stage: {later}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_its_job_in_its_first_line(path):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc and len(doc.splitlines()[0]) > 20, f"poetry_gpt/{path.relative_to(PACKAGE)}: no one-line docstring"


def test_a_later_stage_import_is_caught(tmp_path):
    """The check itself: a data module importing the generator, lazily, is reported; one importing verse is not."""
    root = tmp_path / "poetry_gpt"
    (root / "data").mkdir(parents=True)
    probe = root / "data" / "x.py"
    probe.write_text('"""A probe module."""\nfrom ..verse import forms\n\n\ndef f():\n'
                     '    from ..generate.generator import PoemGenerator\n', encoding="utf-8")
    assert _later_imports(probe, root) == ["line 6: poetry_gpt.generate.generator"]
