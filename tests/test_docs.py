"""The docs say what the code does: every setting is documented, and CI runs the README's
test command."""

from __future__ import annotations

import re
from pathlib import Path

from switchboard.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(SWITCHBOARD_[A-Z_]+)`", doc))
    settings = {f"SWITCHBOARD_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from docs/configuration.md"
    assert documented - settings == set(), "docs/configuration.md names settings that do not exist"


def test_every_setting_has_help_text() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    head = readme.split("---", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", head)


def test_readme_opens_with_the_two_commands() -> None:
    run, test = _readme_commands()
    assert "switchboard serve" in run
    assert "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    _, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
