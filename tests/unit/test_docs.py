"""The README's settings table matches the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from worker.core.settings import ENV_PREFIX, Settings
from worker.services.framework import Service

README = Path(__file__).parents[2] / "README.md"


def documented_variables() -> set[str]:
    section = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)`", section, flags=re.MULTILINE))


def test_every_setting_is_in_the_readme_table() -> None:
    expected = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    expected -= {f"{ENV_PREFIX}SERVICES"}
    # The two conventional names stand first in their rows.
    expected -= {f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS", f"{ENV_PREFIX}DATABASE_URL"}
    expected |= {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}
    expected |= {service.environment_variable_name() for service in Service.all_services()}
    assert documented_variables() == expected
