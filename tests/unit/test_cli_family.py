"""notifier: one command whose subcommands are the spool's, the outbox's and the dead letters'
commands (unchanged, under their old names too), and status."""

import subprocess
import sys
from pathlib import Path

import pytest

import notifier.cli
from notifier.cli import COMMANDS, main, resolve
from notifier.spool import cli as spool_cli
from notifier.wire.version import version
from tests.support.fresh import run_python

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(sys.executable).parent


def test_version_says_notifier_s_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"notifier {version()}\n"


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: notifier ")


def test_an_unknown_command_is_named(capsys):
    assert main(["spoo"]) == 2
    assert "notifier: error: no command 'spoo'" in capsys.readouterr().err


def exit_status(argv):
    """What ``notifier argv`` exits with: argparse's commands end --help with SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_runs_its_module_s_main_under_the_family_s_name(name, capsys):
    assert exit_status([name, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: notifier {name} ")


def test_every_command_resolves_to_a_function():
    assert all(callable(resolve(name)) for name in COMMANDS)


def test_the_rest_of_the_command_line_goes_to_the_subcommand(monkeypatch):
    calls = []

    def spool_main(argv, prog):
        calls.append((argv, prog))
        return 3

    monkeypatch.setattr(spool_cli, "main", spool_main)

    assert main(["spool", "flush", "/tmp/x", "--name", "n"]) == 3
    assert calls == [(["flush", "/tmp/x", "--name", "n"], "notifier spool")]


def test_notifier_spool_says_what_notifier_spool_said(tmp_path, capsys):
    assert spool_cli.main(["list", str(tmp_path)]) == 0
    old = capsys.readouterr().out

    assert main(["spool", "list", str(tmp_path)]) == 0
    assert capsys.readouterr().out == old == "0 spool files\n"


def test_a_missing_spool_directory_is_named_under_the_family_s_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["spool", "list", str(tmp_path / "none")])

    assert raised.value.code == 2
    assert capsys.readouterr().err == f"notifier spool: {tmp_path / 'none'} is not a directory\n"


def test_the_web_side_s_commands_import_nothing_of_the_worker_side(tmp_path):
    # notifier.cli reaches tasks only by name, when a worker-side command runs.
    modules = run_python(
        "import sys, json, contextlib, io\n"
        "import notifier.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    notifier.cli.main(['spool', 'list', {str(tmp_path)!r}])\n"
        "    notifier.cli.main(['--version'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )

    assert "notifier.cli" in modules
    assert not [name for name in modules if name.split(".")[0] == "tasks"]


def test_the_module_names_the_worker_side_only_in_its_command_table():
    source = Path(notifier.cli.__file__).read_text()
    assert "import tasks" not in source
    assert "from tasks" not in source


@pytest.mark.parametrize(
    "script", ["notifier", "notifier-spool", "notifier-outbox", "notifier-dead-letters"]
)
def test_the_console_scripts_are_installed(script):
    # `pip install -e .` makes them from [project.scripts]: the old names stay as aliases.
    completed = subprocess.run(
        [str(SCRIPTS / script), "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith(version())
