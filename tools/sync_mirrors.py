"""Copy mirrored blocks from one top-level script into the other scripts that carry them.

Every script stands alone, so code shared between scripts is mirrored: a block opens with

    # ==== mirror: NAME (identical in a.py, b.py, c.py) ====

and closes with

    # ==== end mirror: NAME ====

Edit a block in one script, then run

    python tools/sync_mirrors.py leq_state.py            # all blocks of leq_state.py
    python tools/sync_mirrors.py leq_state.py -b agent   # only the block "agent"

to write it into every file its header names. A file named in the header must already hold the
two marker lines of that block (add them, empty, where the block belongs). tests/test_mirrors.py
checks that all copies are identical.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^# ==== mirror: (?P<name>[\w-]+) \(identical in (?P<files>[^)]*)\) ====$")
END = "# ==== end mirror: {name} ===="


def find_blocks(text: str, path: str) -> dict[str, tuple[int, int, list[str]]]:
    """Map block name -> (first line index, last line index inclusive, declared files)."""
    lines = text.splitlines()
    blocks = {}
    for i, line in enumerate(lines):
        match = BEGIN.match(line)
        if not match:
            continue
        name = match["name"]
        end = END.format(name=name)
        try:
            j = lines.index(end, i + 1)
        except ValueError:
            raise SystemExit(f"{path}:{i + 1}: block '{name}' has no closing line '{end}'") from None
        if name in blocks:
            raise SystemExit(f"{path}:{i + 1}: block '{name}' appears twice")
        blocks[name] = (i, j, [f.strip() for f in match["files"].split(",")])
    return blocks


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.sync-tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sync(source: Path, names: list[str] | None) -> None:
    source_lines = source.read_text().splitlines()
    blocks = find_blocks("\n".join(source_lines), source.name)
    for name in names or list(blocks):
        if name not in blocks:
            raise SystemExit(f"{source.name} has no block '{name}'; it has: {', '.join(blocks)}")
        start, stop, files = blocks[name]
        block = source_lines[start : stop + 1]
        for file in files:
            target = ROOT / file
            if target == source.resolve():
                continue
            if not target.exists():
                print(f"skip {file}: it does not exist yet")
                continue
            target_text = target.read_text()
            target_lines = target_text.splitlines()
            begin_pattern = re.compile(rf"^# ==== mirror: {re.escape(name)} \(")
            begins = [i for i, line in enumerate(target_lines) if begin_pattern.match(line)]
            end = END.format(name=name)
            if not begins or end not in target_lines:
                raise SystemExit(
                    f"{file} has no markers for block '{name}': add the lines\n  {block[0]}\n  {end}\n"
                    f"where the block belongs, then run this again."
                )
            i = begins[0]
            j = target_lines.index(end, i)
            new_lines = target_lines[:i] + block + target_lines[j + 1 :]
            if new_lines != target_lines:
                write_atomic(target, "\n".join(new_lines) + ("\n" if target_text.endswith("\n") else ""))
                print(f"updated block '{name}' in {file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the script whose copy of the blocks is the new truth")
    parser.add_argument("-b", "--block", action="append", help="block name (repeatable); default: all")
    args = parser.parse_args()
    source = Path(args.source)
    if not source.exists():
        sys.exit(f"{source} does not exist")
    sync(source, args.block)


if __name__ == "__main__":
    main()
