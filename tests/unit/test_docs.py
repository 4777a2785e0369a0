"""Docs kept honest by tests: every CLI command is shown in the README, every module of the package
is on the README's architecture map, and every site setting is in the commented example config."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from hpc_bridge.cli import main
from hpc_bridge.config import SiteConfig, load_config

from ..conftest import ROOT

README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "site_config" / "example.yaml"
PACKAGE = ROOT / "hpc_bridge"


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def _map() -> str:
    """The code block of the architecture section: one entry per top-level module or package."""
    section = _section("Architecture in a few lines")
    return section[section.index("```") + 3:section.index("```", section.index("```") + 3)]


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name))


@pytest.mark.parametrize("command", sorted(_commands(main)))
def test_every_cli_command_is_shown_in_the_readme(command: str) -> None:
    assert f"hpc-bridge {command}" in README, f"`hpc-bridge {command}` is not in README.md"


def _entries() -> dict[str, str]:
    """Top-level entry name ('cli.py', 'daemon/') -> its lines in the map."""
    entries: dict[str, str] = {}
    current = None
    for line in _map().splitlines():
        if match := re.match(r"  (\S+)\s", line):
            current = match[1]
            entries[current] = ""
        if current is not None:
            entries[current] += line + "\n"
    return entries


MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("module", MODULES)
def test_every_module_is_on_the_architecture_map(module: str) -> None:
    path = Path(module)
    entries = _entries()
    if len(path.parts) == 1:
        assert module in entries, f"hpc_bridge/{module} is not on README's architecture map"
    else:
        package = f"{path.parts[0]}/"
        assert package in entries, f"hpc_bridge/{package} is not on README's architecture map"
        assert path.name in entries[package], f"hpc_bridge/{module} is not under {package} on the map"


def _settings(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    for name, field in model.model_fields.items():
        key = field.alias or name
        yield prefix + key, key
        annotation = field.annotation
        for arg in (*getattr(annotation, "__args__", ()), annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _settings(arg, f"{prefix}{key}.")


@pytest.mark.parametrize(("setting", "key"), sorted(_settings(SiteConfig)))
def test_every_setting_is_in_the_example_config(setting: str, key: str) -> None:
    """Written out or commented (`# key:`), with a word on what it does."""
    assert re.search(rf"(^|[\s#{{,]){re.escape(key)}:", EXAMPLE.read_text(), re.M), \
        f"{setting} is not in site_config/example.yaml"


def test_the_example_config_is_valid() -> None:
    load_config(EXAMPLE)
