"""``.. argparse-cli:: package.module:build_parser`` -- a command-line reference built from the
parser itself, so the page cannot drift from ``--help``.

The directive imports the function, calls it, and walks the returned ``argparse.ArgumentParser``:
its usage line, description, every argument of every group (flags, metavar, help with
``%(default)s`` expanded, default, choices), and, recursively, every subcommand of every
``add_subparsers()`` action as a subsection of its own. Nothing is written by hand.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def load_parser(spec: str) -> argparse.ArgumentParser:
    """``"pkg.mod:func"`` -> the parser ``func()`` returns."""
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"argparse-cli: expected 'module:function', got {spec!r}")
    parser = getattr(importlib.import_module(module_name), attribute)()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"argparse-cli: {spec} returned {type(parser).__name__}, not a parser")
    return parser


def _help_text(action: argparse.Action) -> str:
    if action.help is None or action.help == argparse.SUPPRESS:
        return ""
    values: dict[str, Any] = {**vars(action), "prog": ""}
    if action.choices is not None:
        values["choices"] = ", ".join(str(c) for c in action.choices)
    try:
        return action.help % values
    except (KeyError, TypeError, ValueError):
        return action.help


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar or action.dest  # type: ignore[return-value]
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    formatter = argparse.HelpFormatter(prog="")
    default_metavar = action.dest.upper()
    args = formatter._format_args(action, default_metavar)  # argparse's own spelling
    return ", ".join(f"{option} {args}" for option in action.option_strings)


def _default_text(action: argparse.Action) -> str | None:
    if not action.option_strings or action.nargs == 0:
        return None  # positional arguments and switches: the default says nothing
    default = action.default
    if default is None or default == argparse.SUPPRESS or default == []:
        return None
    return repr(default) if isinstance(default, str) else str(default)


def _argument_item(action: argparse.Action) -> nodes.definition_list_item:
    item = nodes.definition_list_item()
    term = nodes.term()
    term += nodes.literal(text=_invocation(action))
    item += term
    definition = nodes.definition()
    paragraph = nodes.paragraph(text=_help_text(action) or "(no help text)")
    definition += paragraph
    details = []
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        details.append("choices: " + ", ".join(str(c) for c in action.choices))
    default = _default_text(action)
    if default is not None:
        details.append(f"default: {default}")
    if action.required and action.option_strings:
        details.append("required")
    if details:
        definition += nodes.paragraph(text="; ".join(details))
    item += definition
    return item


class ArgparseCli(SphinxDirective):
    required_arguments = 1
    option_spec = {"title-prefix": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        parser = load_parser(self.arguments[0])
        return self._parser_nodes(parser, parser.prog, top=True)

    def _section(self, title: str, key: str) -> nodes.section:
        section = nodes.section(
            ids=[nodes.make_id("cli-" + key)], names=[nodes.fully_normalize_name("cli " + key)]
        )
        section += nodes.title(text=title)
        self.state.document.note_implicit_target(section, section)
        return section

    def _parser_nodes(
        self, parser: argparse.ArgumentParser, prog: str, top: bool
    ) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        usage = parser.format_usage().strip()
        usage_block = nodes.literal_block(usage, usage)
        usage_block["language"] = "text"
        out.append(usage_block)
        if parser.description:
            for chunk in parser.description.split("\n\n"):
                out.append(nodes.paragraph(text=" ".join(chunk.split())))
        subcommands: list[tuple[str, argparse.ArgumentParser, str]] = []
        for group in parser._action_groups:
            actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
            if not actions:
                continue
            out.append(nodes.rubric(text=group.title or "arguments"))
            listing = nodes.definition_list()
            for action in actions:
                listing += _argument_item(action)
                if isinstance(action, argparse._SubParsersAction):
                    helps = {c.dest: c.help or "" for c in action._choices_actions}
                    for name, sub in action.choices.items():
                        subcommands.append((name, sub, helps.get(name, "")))
            out.append(listing)
        if parser.epilog:
            block = parser.epilog.strip("\n")
            epilog_block = nodes.literal_block(block, block)
            epilog_block["language"] = "text"
            out.append(epilog_block)
        for name, sub, help_text in subcommands:
            section = self._section(f"{prog} {name}", f"{prog} {name}")
            if help_text:
                section += nodes.paragraph(text=help_text)
            for node in self._parser_nodes(sub, f"{prog} {name}", top=False):
                section += node
            out.append(section)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("argparse-cli", ArgparseCli)
    return {"version": "1", "parallel_read_safe": True}
