"""`skel --help`, `--version`, and `--help` of every command with a usage example."""

import pytest
from typer.testing import CliRunner

from skelcli import __version__
from skelcli.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_root_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("prepare", "synth", "info", "pretrain", "probe", "retrieve", "finetune", "benchmark", "demo"):
        assert name in result.output


@pytest.mark.parametrize("name", [c.name for c in app.registered_commands])
def test_every_command_has_help_with_an_example(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "skel " + name in result.output.replace("\n", " "), f"{name} --help shows no usage example"
