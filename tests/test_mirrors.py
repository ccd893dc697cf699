"""Every script stands alone: shared code is mirrored, and here we check that the copies agree,
and that each script still runs when copied alone into an empty folder."""

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from sync_mirrors import find_blocks  # noqa: E402

SCRIPTS = sorted(p for p in ROOT.glob("*.py"))
# Blocks each script must carry: a script silently dropping its copy would pass the identity check.
EXPECTED_BLOCKS = {
    "common": {"collect_dataset.py", "fqe_pretrain.py", "leq_pixel.py", "leq_state.py", "train_world_model.py"},
    "d4rl_antmaze_maps": {"collect_dataset.py", "d4rl_antmaze.py", "fqe_pretrain.py", "leq_state.py", "train_world_model.py"},
    "task": {"collect_dataset.py", "fqe_pretrain.py", "leq_state.py", "train_world_model.py"},
    "training": {"fqe_pretrain.py", "leq_pixel.py", "leq_state.py", "train_world_model.py"},
    "d4rl_antmaze": {"d4rl_antmaze.py", "fqe_pretrain.py", "leq_state.py"},
    "envs": {"collect_dataset.py", "fqe_pretrain.py", "leq_state.py"},
    "agent": {"fqe_pretrain.py", "leq_state.py"},
    "checkpoints": {"leq_pixel.py", "leq_state.py"},
    "evaluate": {"fqe_pretrain.py", "leq_state.py"},
    "generated_data": {"collect_dataset.py", "leq_state.py"},
    "returns": {"leq_pixel.py", "leq_state.py"},
    "world_model": {"leq_state.py", "train_world_model.py"},
    "collect": {"collect_dataset.py"},
    "world_model_sampling": {"leq_state.py"},
}


def collect_copies():
    copies = defaultdict(dict)  # name -> {file: (text, declared files)}
    for script in SCRIPTS:
        text = script.read_text()
        lines = text.splitlines()
        for name, (start, stop, files) in find_blocks(text, script.name).items():
            copies[name][script.name] = ("\n".join(lines[start : stop + 1]), files)
    return copies


def test_mirrored_blocks_are_identical_and_where_declared():
    copies = collect_copies()
    assert copies, "no mirrored blocks found"
    for name, by_file in copies.items():
        texts = {text for text, _ in by_file.values()}
        assert len(texts) == 1, (
            f"block '{name}' differs between {sorted(by_file)}; edit one copy and run "
            f"`python tools/sync_mirrors.py <that file> -b {name}`"
        )
        declared = set(next(iter(by_file.values()))[1])
        assert declared == set(by_file), f"block '{name}' declares {sorted(declared)} but is in {sorted(by_file)}"


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_expected_blocks_present(name):
    copies = collect_copies()
    present = {f for f in copies.get(name, {}) if (ROOT / f).exists()}
    expected = {f for f in EXPECTED_BLOCKS[name] if (ROOT / f).exists()}
    assert expected <= present, f"block '{name}' is missing from {sorted(expected - present)}"


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_script_runs_alone(script, tmp_path):
    """Copied alone into an empty folder, with no access to the repository, `--help` works."""
    shutil.copy(ROOT / script, tmp_path / script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower()
