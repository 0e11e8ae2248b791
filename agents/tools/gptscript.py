"""The gptscript tool format, parsed natively (no gptscript binary).

A file holds one or more tools separated by lines of `---`. Each tool is a header of `Key: value`
lines (Name, Description, Args/Param repeated as `name: description`, Tools, Model Name,
Temperature, JSON Response, Max Tokens, ...), then the body. As in gptscript, keys are compared
without case or spaces, header lines starting with `#` (but not `#!`) are comments, blank lines in
the header are skipped, and the body starts at the first line that is neither; a `#!` first line
naming gptscript is the file's own shebang. The first tool is the entry tool unless a subtool is
named. The body decides the kind:

- `#!sys.<name>`: a built-in (sys.echo, sys.time.now, sys.http.get, sys.http.html2text, sys.read,
  sys.write);
- `#!http://...` or `#!https://...`: an HTTP tool, which POSTs its args as JSON;
- `#!<interpreter ...>`: a command run by that interpreter with the rest of the body as its script;
- anything else: a prompt tool, a nested model conversation with the body as instructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

BUILTINS = ("sys.echo", "sys.time.now", "sys.http.get", "sys.http.html2text", "sys.read", "sys.write")
_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9 _-]*?)\s*:\s*(.*)$")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Header keys as gptscript compares them: lower case, spaces removed.
_ARG_KEYS = {"args", "arg", "param", "params", "parameter", "parameters"}
_TOOL_KEYS = {"tools", "tool", "agents", "agent"}
_KNOWN_KEYS = (
    _ARG_KEYS
    | _TOOL_KEYS
    | {
        "name",
        "description",
        "model",
        "modelname",
        "modelprovider",
        "globalmodel",
        "globalmodelname",
        "temperature",
        "jsonresponse",
        "internalprompt",
        "chat",
        "maxtoken",
        "maxtokens",
        "export",
        "exports",
        "exporttool",
        "exporttools",
        "sharetool",
        "sharetools",
        "context",
        "exportcontext",
        "sharecontext",
        "cache",
        "cred",
        "creds",
        "credential",
        "credentials",
        "globaltool",
        "globaltools",
        "inputfilter",
        "inputfilters",
        "metadata",
        "type",
    }
)


class ToolFileError(ValueError):
    """A tool file we cannot use; the message names the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass
class Tool:
    name: str
    description: str = ""
    args: dict[str, str] = field(default_factory=dict)
    tools: list[str] = field(default_factory=list)
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    json_response: bool = False
    body: str = ""
    line: int = 1
    # The line each entry of `tools` was named on, for errors about it.
    tool_lines: dict[str, int] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        first = self.body.lstrip().split("\n", 1)[0].strip()
        if first.startswith("#!sys."):
            return "builtin"
        if first.startswith(("#!http://", "#!https://")):
            return "http"
        if first.startswith("#!"):
            return "command"
        return "prompt"

    @property
    def instruction_line(self) -> str:
        """The `#!...` line of a builtin, HTTP or command tool, without `#!`."""
        return self.body.lstrip().split("\n", 1)[0].strip()[2:]

    @property
    def script(self) -> str:
        """A command tool's script: the body after its `#!` line."""
        parts = self.body.lstrip().split("\n", 1)
        return parts[1] if len(parts) > 1 else ""

    def parameters_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {name: {"type": "string", "description": text} for name, text in self.args.items()},
            "required": [],
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "args": dict(self.args),
            "tools": list(self.tools),
            "kind": self.kind,
        }


@dataclass
class ToolSet:
    tools: list[Tool]
    entry: Tool

    def get(self, name: str) -> Tool | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        return None

    def describe(self) -> dict[str, Any]:
        return {"entry": self.entry.name, "tools": [tool.describe() for tool in self.tools]}


def parse(contents: str, *, subtool: str | None = None, default_name: str = "main") -> ToolSet:
    if not contents.strip():
        raise ToolFileError("the tool file is empty")
    tools: list[Tool] = []
    for start, block in _split(contents):
        tool = _parse_tool(block, start, default_name if not tools else None)
        if tool is None:
            continue
        if any(existing.name == tool.name for existing in tools):
            raise ToolFileError(f"a tool named {tool.name!r} is defined twice", tool.line)
        tools.append(tool)
    if not tools:
        raise ToolFileError("the tool file has no tools")
    names = {tool.name for tool in tools}
    for tool in tools:
        for ref in tool.tools:
            if ref in names or ref in BUILTINS:
                continue
            line = tool.tool_lines.get(ref, tool.line)
            if ref.startswith(("sys.", "#!sys.")):
                raise ToolFileError(f"unknown built-in {ref!r}; known: {', '.join(BUILTINS)}", line)
            if any(mark in ref for mark in ("/", " from ", "github.com")) or ref.endswith(".gpt"):
                raise ToolFileError(
                    f"tool {tool.name!r} uses {ref!r} from another file or URL; only tools in this file and "
                    "built-ins can be used",
                    line,
                )
            raise ToolFileError(f"tool {tool.name!r} uses {ref!r}, which is neither in this file nor a built-in", line)
        if tool.kind == "builtin" and tool.instruction_line not in BUILTINS:
            raise ToolFileError(f"unknown built-in {tool.instruction_line!r}; known: {', '.join(BUILTINS)}", tool.line)
    entry = tools[0]
    if subtool:
        found = next((tool for tool in tools if tool.name == subtool), None)
        if found is None:
            raise ToolFileError(f"no tool named {subtool!r} in this file; it has {', '.join(sorted(names))}")
        entry = found
    return ToolSet(tools, entry)


def _split(contents: str) -> list[tuple[int, list[str]]]:
    """The file's tools as (first line number, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 1
    lines = contents.replace("\r\n", "\n").split("\n")
    for number, line in enumerate(lines, start=1):
        if number == 1 and line.startswith("#!") and "gptscript" in line:
            current.append("")  # the file's own shebang (#!/usr/bin/env gptscript), not a body
        elif line.strip() == "---":
            blocks.append((start, current))
            current, start = [], number + 1
        else:
            current.append(line)
    blocks.append((start, current))
    return blocks


def _parse_tool(lines: list[str], start: int, default_name: str | None) -> Tool | None:
    tool = Tool(name="", line=start)
    position = 0
    seen_header = False
    while position < len(lines):
        line = lines[position].strip()
        number = start + position
        if not line or (line.startswith("#") and not line.startswith("#!")):
            position += 1  # blank lines and comments never end a header
            continue
        match = _KEY.match(line)
        key = match.group(1).replace(" ", "").lower() if match else ""
        if match is None or key not in _KNOWN_KEYS:
            break  # the body starts here (a prompt needs no header)
        if not seen_header:
            tool.line, seen_header = number, True
        _apply(tool, key, match.group(2).strip(), number)
        position += 1
    if not seen_header:
        if position == len(lines):
            return None  # only blank lines and comments: not a tool
        tool.line = start + position
    tool.body = "\n".join(lines[position:]).strip("\n")
    if not tool.name:
        if default_name is None:
            raise ToolFileError("every tool after the first needs a Name", tool.line)
        tool.name = default_name
    if not tool.body.strip() and not tool.tools:
        raise ToolFileError(f"tool {tool.name!r} has no body", tool.line)
    return tool


def _apply(tool: Tool, key: str, value: str, line: int) -> None:
    if key == "name":
        if not value:
            raise ToolFileError("Name is empty", line)
        tool.name = value
    elif key == "description":
        tool.description = value
    elif key in _ARG_KEYS:
        name, sep, text = value.partition(":")
        name = name.strip()
        if not sep or not _ARG_NAME.match(name):
            raise ToolFileError(
                f"argument {value!r} should read 'name: description' (a name of letters, digits, _ and -)", line
            )
        if name in tool.args:
            raise ToolFileError(f"argument {name!r} is declared twice", line)
        tool.args[name] = text.strip()
    elif key in _TOOL_KEYS:
        for ref in (ref.strip() for ref in value.split(",")):
            if ref and ref not in tool.tools:
                tool.tools.append(ref)
                tool.tool_lines[ref] = line
    elif key in ("model", "modelname"):
        tool.model = value or None
    elif key == "temperature":
        try:
            tool.temperature = float(value)
        except ValueError:
            raise ToolFileError(f"Temperature must be a number, not {value!r}", line) from None
        if not 0 <= tool.temperature <= 2:
            raise ToolFileError(f"Temperature must be between 0 and 2, not {value}", line)
    elif key in ("maxtoken", "maxtokens"):
        if not value.isdigit() or int(value) < 1:
            raise ToolFileError(f"Max Tokens must be a positive whole number, not {value!r}", line)
        tool.max_tokens = int(value)
    elif key == "jsonresponse":
        if value.lower() not in ("true", "false"):
            raise ToolFileError(f"JSON Response must be true or false, not {value!r}", line)
        tool.json_response = value.lower() == "true"
