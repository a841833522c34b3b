"""``saltbus completion bash|zsh``: shell completion generated from the parser.

The script is written from the argparse parser of this very saltbus, so it
offers exactly the commands, options and choices this version accepts: the
commands and their sub-actions, each command's options, the choices of an
option that has them (--node, --log-level, ...), directories for a *_dir
option and files for a path option.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

SHELLS: Final = ("bash", "zsh")

HELP = "print a shell completion script for bash or zsh"
DESCRIPTION = """\
Print the completion script for SHELL, generated from this saltbus's options.

bash, for this shell:      source <(saltbus completion bash)
     for every shell:      saltbus completion bash > /etc/bash_completion.d/saltbus
zsh, for this shell:       source <(saltbus completion zsh)   (after compinit)
     for every shell:      saltbus completion zsh > "${fpath[1]}/_saltbus"
"""


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...] = ()
    kind: str = ""  # "dir", "file" or "" (no particular completion)


@dataclass(frozen=True, slots=True)
class Command:
    """A command (the root is ``saltbus`` itself) as completion sees it."""

    path: tuple[str, ...]  # ("token", "create"); () for saltbus
    help: str
    options: tuple[Option, ...]
    subcommands: tuple[Command, ...] = ()
    positionals: bool = False
    # What the first positional argument may be, when argparse has choices for it.
    first_choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else "saltbus"

    def walk(self) -> list[Command]:
        return [self, *(c for sub in self.subcommands for c in sub.walk())]


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "completion",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from saltbus.cli.main import build_parser  # noqa: PLC0415  (main imports this module)

    tree = describe(build_parser())
    sys.stdout.write(bash_script(tree) if args.shell == "bash" else zsh_script(tree))
    return 0


# -- the parser, read -------------------------------------------------------------------


def describe(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = ""
) -> Command:
    """What completion needs of ``parser`` and its sub-commands."""
    options: list[Option] = []
    subcommands: list[Command] = []
    positionals = False
    first_choices: tuple[str, ...] = ()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                subcommands.append(describe(sub, (*path, name), helps.get(name, "")))
        elif action.option_strings:
            options.append(_option(action))
        else:
            if not positionals and action.choices:
                first_choices = tuple(str(c) for c in action.choices)
            positionals = True
    return Command(
        path, _first_line(help), tuple(options), tuple(subcommands), positionals, first_choices
    )


def _option(action: argparse.Action) -> Option:
    takes_value = action.nargs != 0
    choices = tuple(str(c) for c in action.choices) if action.choices else ()
    kind = ""
    if takes_value and not choices:
        if action.dest.endswith("_dir"):
            kind = "dir"
        elif action.type is Path or action.metavar == "FILE":
            kind = "file"
    return Option(
        tuple(action.option_strings), _first_line(action.help), takes_value, choices, kind
    )


def _first_line(text: str | None) -> str:
    words = " ".join((text or "").split())
    # Its first clause: a menu line, not the whole help.
    for stop in ("; ", ". "):
        words = words.split(stop, 1)[0]
    return words[:77] + "..." if len(words) > 80 else words


# -- bash -------------------------------------------------------------------------------


def bash_script(root: Command) -> str:
    commands = root.walk()
    steps = [
        f"            {shlex.quote(_key(c.path[:-1]) + '>' + c.name)}) "
        f"path={shlex.quote(_key(c.path))} ;;"
        for c in commands
        if c.path
    ]
    values = []
    for command in commands:
        for option in command.options:
            if not option.takes_value:
                continue
            if option.choices:
                choices = shlex.quote(" ".join(option.choices))
                reply = f'COMPREPLY=($(compgen -W {choices} -- "$cur"))'
            elif option.kind:
                kind = "-d" if option.kind == "dir" else "-f"
                reply = f'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen {kind} -- "$cur"))'
            else:  # a value to type: no file names
                reply = "compopt +o default 2>/dev/null"
            key = _key(command.path)
            patterns = "|".join(shlex.quote(f"{key}>{flag}") for flag in option.flags)
            values.append(f"        {patterns}) {reply}; return ;;")
    words = []
    for command in commands:
        flags = " ".join(flag for option in command.options for flag in option.flags)
        names = " ".join([*(sub.name for sub in command.subcommands), *command.first_choices])
        words.append(
            f"        {shlex.quote(_key(command.path))}) "
            f"options={shlex.quote(flags)} names={shlex.quote(names)} ;;"
        )
    return "\n".join(
        [
            "# bash completion for saltbus, generated by `saltbus completion bash`.",
            "_saltbus() {",
            "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}",
            "    local path='' options='' names='' i",
            "    # The command (and action) typed so far: a word that names one below the last.",
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        case "$path>${COMP_WORDS[i]}" in',
            *steps,
            "        esac",
            "    done",
            '    case "$path>$prev" in',
            *values,
            "    esac",
            '    case "$path" in',
            *words,
            "    esac",
            "    if [[ $cur == -* || -z $names ]]; then",
            '        [[ $cur == -* ]] && COMPREPLY=($(compgen -W "$options" -- "$cur"))',
            "    else",
            '        COMPREPLY=($(compgen -W "$names" -- "$cur"))',
            "    fi",
            "}",
            "complete -o default -F _saltbus saltbus",
            "",
        ]
    )


def _key(path: tuple[str, ...]) -> str:
    return "/".join(path)


# -- zsh --------------------------------------------------------------------------------


def zsh_script(root: Command) -> str:
    lines = [
        "#compdef saltbus",
        "# zsh completion for saltbus, generated by `saltbus completion zsh`.",
    ]
    for command in root.walk():
        lines += _zsh_function(command)
    lines += [
        "# Autoloaded from $fpath, this file is the completion function; sourced, it registers it.",
        "if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then",
        '    _saltbus "$@"',
        "else",
        "    compdef _saltbus saltbus",
        "fi",
        "",
    ]
    return "\n".join(lines)


def _zsh_function(command: Command) -> list[str]:
    name = "_" + "_".join(("saltbus", *command.path)).replace("-", "_")
    specs = [_zsh_spec(option, flag) for option in command.options for flag in option.flags]
    lines = [f"{name}() {{"]
    if command.subcommands:
        lines += [
            "    local curcontext=$curcontext state line",
            "    _arguments -C \\",
            *(f"        {spec} \\" for spec in specs),
            "        '1: :->command' \\",
            "        '*:: :->args'",
            "    case $state in",
            "    command)",
            "        local -a commands=(",
            *(
                f"            {_zsh_quote(sub.name + ':' + sub.help)}"
                for sub in command.subcommands
            ),
            "        )",
            f"        _describe -t commands {_zsh_quote(' '.join(('saltbus', *command.path)))} "
            "commands ;;",
            "    args)",
            "        case $line[1] in",
            *(
                f"        {sub.name}) {name}_{sub.name.replace('-', '_')} ;;"
                for sub in command.subcommands
            ),
            "        esac ;;",
            "    esac",
        ]
    else:
        rest = []
        if command.first_choices:
            rest.append(_zsh_quote(f"1: :({' '.join(command.first_choices)})"))
        elif command.positionals:
            rest.append("'*: :_default'")
        body = [*specs, *rest] or ["''"]
        lines += [
            "    _arguments -s \\",
            *(f"        {spec} \\" for spec in body[:-1]),
            f"        {body[-1]}",
        ]
    return [*lines, "}"]


def _zsh_spec(option: Option, flag: str) -> str:
    description = _zsh_escape(option.help)
    if not option.takes_value:
        return _zsh_quote(f"{flag}[{description}]")
    if option.choices:
        action = "(" + " ".join(_zsh_escape(c, "\\[]:() ") for c in option.choices) + ")"
    elif option.kind == "dir":
        action = "_files -/"
    elif option.kind == "file":
        action = "_files"
    else:
        action = " "
    value = flag.lstrip("-").replace("-", " ")
    # `=`: the value as the next word or after an `=`, as argparse takes it.
    return _zsh_quote(f"{flag}=[{description}]:{value}:{action}")


def _zsh_escape(text: str, special: str = "\\[]") -> str:
    """Text inside an _arguments spec, where these characters mean something."""
    for char in special:
        text = text.replace(char, "\\" + char)
    return text


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
