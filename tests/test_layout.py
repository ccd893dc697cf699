"""The anatomy of the top-level scripts: the algorithm and main first, the mirrored support blocks after, no
dead code in any copy, and a clear command when a script copied alone finds no data."""

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in ROOT.glob("*.py"))
MIRROR_BEGIN = "# ==== mirror: "


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return []


def unreached_definitions(source: str) -> list[str]:
    """Top-level functions and classes that nothing reaches from `main`, from the `__main__` guard or from other
    code that runs at import (constants, registries, decorators, default arguments, dataclass fields)."""
    tree = ast.parse(source)
    references, roots = {}, {"main"}
    for node in tree.body:
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            references[node.name] = used  # the whole definition: decorators, defaults, annotations, body
        elif not isinstance(node, (ast.Import, ast.ImportFrom)):
            roots |= used  # module-level code runs at import
    reached, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(references.get(name, ()))
    return [name for name in references if name not in reached]


def test_checker_finds_an_unreached_function():
    source = textwrap.dedent('''
        import os
        from dataclasses import dataclass, field

        def default_size():
            return 3

        @dataclass
        class Args:
            sizes: list = field(default_factory=default_size)

        def helper():
            return os.sep

        def decorate(fn):
            return fn

        @decorate
        def step(x=helper()):
            return x

        def orphan():
            return step() + called_only_by_orphan()

        def called_only_by_orphan():
            return 1

        class Unused:
            pass

        REGISTRY = {"a": lambda: 1}

        def main(args: Args):
            return step()

        if __name__ == "__main__":
            main(Args())
    ''')
    assert unreached_definitions(source) == ["orphan", "called_only_by_orphan", "Unused"]
    calling_orphan = source.replace("def main(args: Args):\n    return step()", "def main(args: Args):\n    return orphan()")
    assert calling_orphan != source and unreached_definitions(calling_orphan) == ["Unused"]


def test_checker_counts_module_level_code_and_the_main_guard():
    source = textwrap.dedent('''
        def build():
            return {}

        def cli():
            return 0

        TABLE = build()

        if __name__ == "__main__":
            cli()
    ''')
    assert unreached_definitions(source) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_top_level_definition_is_unreached(script):
    unreached = unreached_definitions((ROOT / script).read_text())
    assert not unreached, (f"{script}: nothing reaches {unreached} from main; delete them, or move them into a "
                           f"mirrored block that only the scripts using them carry")


@pytest.mark.parametrize("script", SCRIPTS)
def test_main_comes_before_the_mirrored_blocks(script):
    lines = (ROOT / script).read_text().splitlines()
    main = next(i for i, line in enumerate(lines) if line.startswith("def main("))
    blocks = [i for i, line in enumerate(lines) if line.startswith(MIRROR_BEGIN)]
    assert not blocks or main < blocks[0], f"{script}: def main (line {main + 1}) is after a mirrored block"
    guard = next(i for i, line in enumerate(lines) if line.startswith("if __name__ == "))
    assert guard == max(i for i, line in enumerate(lines) if line and not line[0].isspace()), (
        f"{script}: the __main__ guard is not the last statement")


@pytest.mark.parametrize("script", ["leq_state.py", "train_world_model.py", "fqe_pretrain.py"])
def test_script_alone_without_its_default_data_names_the_command(script, tmp_path):
    """Copied alone into another project, a script cannot make the default data: it says how, in seconds."""
    shutil.copy(ROOT / script, tmp_path / script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MINARI_DATASETS_PATH"] = str(tmp_path / "minari")
    result = subprocess.run([sys.executable, script, "--env-id", "pointmaze-umaze-diverse", "--device", "cpu"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "`python collect_dataset.py pointmaze-umaze-diverse`" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
