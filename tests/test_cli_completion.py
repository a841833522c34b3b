"""``saltbus completion bash|zsh`` (saltbus.cli.completion): the scripts, loaded
in real shells. bash runs the completion function on typed command lines, as
it does at a TAB; zsh checks the script and registers it with compinit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from saltbus.cli.completion import describe
from saltbus.cli.main import build_parser
from tests.serve_support import SALTBUS, clean_env

# Each case: the words typed (the last one is the word being completed), then
# the replies bash must offer for it.
CASES: list[tuple[list[str], list[str]]] = [
    (["saltbus", "se"], ["serve"]),
    (["saltbus", "completion", ""], ["bash", "zsh"]),  # a positional's choices
    (["saltbus", "--log-l"], ["--log-level"]),
    (["saltbus", "--log-level", "de"], ["debug"]),
    (["saltbus", "serve", "--log-"], ["--log-format", "--log-level"]),
    (["saltbus", "serve", "--sock"], ["--sock-dir"]),
    (["saltbus", "serve", "--node", ""], ["master", "minion"]),
    (["saltbus", "serve", "--journal", "f"], ["fsync"]),
    (["saltbus", "listen", "--match-type", "f"], ["find", "fnmatch"]),
    (
        ["saltbus", "--log-level", "debug", "listen", "--salt-version", "300"],
        ["3006", "3007", "3008"],
    ),
    (["saltbus", "token", ""], ["create", "list", "revoke"]),
    (["saltbus", "token", "create", "--re"], ["--read"]),
    (["saltbus", "token", "list", "--j"], ["--json"]),
    (["saltbus", "serve", "--id", ""], []),  # a value to type: nothing offered
]


def bash(script: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def completions(*cases: list[str], cwd: Path | None = None) -> list[list[str]]:
    """What the loaded completion function replies to each typed line."""
    lines = [
        f"source <({shlex.quote(os.fspath(SALTBUS))} completion bash)",
        'reply() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _saltbus',
        "  printf '%s\\n' \"${COMPREPLY[@]}\" | sort; echo ---; }",
        *(f"reply {shlex.join(words)}" for words in cases),
    ]
    out = bash("\n".join(lines), cwd)
    return [
        [line for line in block.split("\n") if line] for block in out.split("---\n")[: len(cases)]
    ]


def test_bash_registers_the_completion_function() -> None:
    out = bash(f"source <({shlex.quote(os.fspath(SALTBUS))} completion bash); complete -p saltbus")
    assert out.strip() == "complete -o default -F _saltbus saltbus"


def test_bash_completes_commands_options_and_choices() -> None:
    got = completions(*(words for words, _ in CASES))
    for (words, expected), replies in zip(CASES, got, strict=True):
        assert replies == sorted(expected), f"{shlex.join(words)!r}: {replies}"


def test_bash_offers_every_command_of_the_parser() -> None:
    commands = {sub.name for sub in describe(build_parser()).subcommands}
    assert {"serve", "listen", "fire", "react", "http", "completion"} <= commands
    (replies,) = completions(["saltbus", ""])
    assert set(replies) == commands


def test_bash_offers_directories_for_a_dir_option_and_files_for_a_path(tmp_path: Path) -> None:
    (tmp_path / "bus").mkdir()
    (tmp_path / "bus.yaml").write_text("{}")
    dirs, files = completions(
        ["saltbus", "serve", "--sock-dir", "bu"],
        ["saltbus", "serve", "--config", "bu"],
        cwd=tmp_path,
    )
    assert dirs == ["bus"]
    assert files == ["bus", "bus.yaml"]


def test_the_zsh_script_parses_and_registers_with_compinit(tmp_path: Path) -> None:
    zsh = shutil.which("zsh")
    assert zsh, "zsh is missing: run scripts/system-deps"
    script = tmp_path / "_saltbus"
    script.write_text(subprocess.check_output([SALTBUS, "completion", "zsh"], text=True))
    assert subprocess.run([zsh, "-n", script], check=False, timeout=30).returncode == 0
    functions = ["_saltbus", "_saltbus_serve", "_saltbus_token", "_saltbus_token_create"]
    done = subprocess.run(
        [
            zsh,
            "-f",
            "-c",
            f"autoload -U compinit && compinit -u -D -d {tmp_path}/zcompdump"
            f" && source {script} && print -r -- $_comps[saltbus]"
            f" && whence -w {' '.join(functions)}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(HOME=os.fspath(tmp_path)),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    first, *defined = done.stdout.splitlines()
    assert first == "_saltbus"
    assert defined == [f"{name}: function" for name in functions]
