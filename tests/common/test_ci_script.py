"""CI runs what the README tells a newcomer to run: .ci/run's command is the README's test command,
word for word, so a README command that fails on a fresh machine turns CI red."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_command(word: str, what: str) -> str:
    """The one line of the README's bash blocks that installs (pip install) and runs ``word``."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    cmds = [line.strip() for b in blocks for line in b.splitlines() if word in line and "pip install" in line]
    assert len(cmds) == 1, f"expected one {what} in the README, found {cmds}"
    return cmds[0]


def readme_test_command() -> str:
    return _readme_command("pytest", "install-and-test command")


def readme_lint_command() -> str:
    return _readme_command("ruff check", "lint command")


def test_ci_runs_the_readme_lint_and_test_commands():
    """.ci/run: the README's lint command, then its test command, and nothing else."""
    lines = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    commands = [ln for ln in lines if not ln.startswith(("set ", "cd "))]
    assert commands == [readme_lint_command(), readme_test_command()], commands


def test_pre_commit_pins_the_ci_ruff():
    """The pre-commit hook runs the ruff release CI installs (new releases add rules)."""
    pinned = re.search(r"ruff==([\d.]+)", readme_lint_command()).group(1)
    cfg = (ROOT / ".pre-commit-config.yaml").read_text()
    assert f"rev: v{pinned}" in cfg, cfg
    assert "[tool.ruff" in (ROOT / "pyproject.toml").read_text()
