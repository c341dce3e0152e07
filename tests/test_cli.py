"""The command-line skeleton: version, help for every command of the contract, unbuilt commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adeblur import __version__
from adeblur.cli import EXIT_USAGE, main

COMMANDS = ["deblur", "evaluate", "train", "profile", "synth", "export", "models"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"adeblur {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_contract_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"adeblur {command}" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == EXIT_USAGE
    assert "COMMAND" in capsys.readouterr().out


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--model", "x", "--size", "12xfoo"])
    assert exit_info.value.code == EXIT_USAGE


def test_console_entry_point_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "adeblur", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("nafnet", "nafnet-lite", "m2aenet", "m2aenet-lite", "m2aenet-no-mask", "m2aenet-no-motion", "identity"):
        assert name in out
