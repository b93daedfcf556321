"""CI runs what the README tells a newcomer to run: .ci/run's command is the README's test command,
word for word, so a README command that fails on a fresh machine turns CI red."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    cmds = [line.strip() for b in blocks for line in b.splitlines() if "pytest" in line and "pip install" in line]
    assert len(cmds) == 1, f"expected one install-and-test command in the README, found {cmds}"
    return cmds[0]


def test_ci_runs_the_readme_test_command():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    commands = [ln for ln in lines if not ln.startswith(("set ", "cd "))]
    assert commands == [readme_test_command()], commands
