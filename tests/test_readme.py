"""The README's set-up and test commands are the ones CI runs, and the README's code example runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = []
    for i, line in enumerate(lines):
        if line.startswith("# README:"):
            commands.append(lines[i + 1].strip())
    return commands


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = _ci_commands()
    assert len(commands) == 2, "expected a set-up and a test command in .ci/run"
    for command in commands:
        assert f"\n{command}\n" in readme, f"README lacks the CI command: {command}"


def test_readme_library_example_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
