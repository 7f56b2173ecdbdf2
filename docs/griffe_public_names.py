"""A Griffe extension for the API reference: every name of ``einlocal.__all__``
is documented as what ``import einlocal`` gives.

Two kinds of public name need help, and both are found at run time:

- a function that shares its name with a submodule (``el.check``,
  ``el.choose``, ``el.table``): read statically, the package's member of that
  name is the submodule;
- a catalogue op (``el.locally_connected2d``, ...), an instance whose
  docstring and signature exist only once it is made.

Either is replaced by the object that ``griffe.inspect`` finds in the module
that defines it now (``__module__``), so the reference follows the code
wherever it moves.

The docstrings are plain text, not Markdown: an index expression such as
``h*sh+i*dh`` would lose its ``*`` to emphasis, so ``*`` outside code spans
and indented blocks is escaped.
"""
from __future__ import annotations

import importlib
import re

import griffe

_CODE_SPAN = re.compile(r"(``.+?``|`[^`\n]+`)")


def _escape_stars(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if not line.startswith("    "):  # an indented block is rendered as code
            line = "".join(part if i % 2 else part.replace("*", "\\*")
                           for i, part in enumerate(_CODE_SPAN.split(line)))
        lines.append(line)
    return "\n".join(lines)


def _walk(obj, seen):
    if obj.is_alias or id(obj) in seen:
        return
    seen.add(id(obj))
    if obj.docstring is not None:
        obj.docstring.value = _escape_stars(obj.docstring.value)
    for member in obj.members.values():
        _walk(member, seen)


def _inspected(obj, name: str, loader: griffe.GriffeLoader):
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qualname = getattr(obj, "__qualname__", None) or name
    found = griffe.inspect(module, docstring_parser=loader.docstring_parser,
                           docstring_options=loader.docstring_options).get_member(qualname)
    while found.is_alias:  # re-exported within its module: follow it by run-time lookup
        module, qualname = found.target_path.rsplit(".", 1)
        found = griffe.inspect(module, docstring_parser=loader.docstring_parser,
                               docstring_options=loader.docstring_options).get_member(qualname)
    return found


class PublicNames(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.path != "einlocal":
            return
        runtime = importlib.import_module("einlocal")
        for name in runtime.__all__:
            member = pkg.members.get(name)
            if member is not None and member.is_alias:
                try:
                    member = member.final_target
                except griffe.AliasResolutionError:
                    member = None
            shadowed = member is not None and member.is_module
            undocumented = member is None or (member.is_attribute and not member.docstring)
            if shadowed or undocumented:
                found = _inspected(getattr(runtime, name), name, loader)
                found.name = name
                pkg.set_member(name, found)
        _walk(pkg, set())
