"""The gptscript tool format, parsed natively: real-world-shaped tool files with several tools,
arguments, sub-tools, comments and every body kind; errors that name the line; and how a call's
arguments reach a command (its environment and `${arg}` in its `#!` line)."""

from __future__ import annotations

import pytest

from agents.tools import gptscript, runner, sandbox
from agents.tools.gptscript import ToolFileError

# A tool set shaped like the ones people publish: a shebang, a comment block, a prompt tool
# that uses the others, and one tool of each other kind.
WEATHER_TOOLS = """#!/usr/bin/env gptscript
# Weather tools, for the assistant's "weather" skill.
# Maintained by the platform team.

Name: weather
Description: Answers questions about the weather
Tools: forecast, shout, sys.time.now
Args: city: the city the user asks about
Model Name: gpt-4o
Temperature: 0.2
Max Tokens: 300

You are a weather assistant. Use the forecast tool for the city,
and say what time it is there.

---
Name: forecast
Description: The forecast for a city
Args: city: the city
Args: days: how many days ahead

#!python3 -c 'import os; print(os.environ["CITY"], os.environ["DAYS"])'

---
Name: shout
# the text arrives upper-cased as $TEXT too
Param: text: what to shout
JSON Response: false

#!/bin/sh
echo "$TEXT" | tr a-z A-Z

---
Name: echo-back
Description: Says it again
Parameter: input: what to say

#!sys.echo

---
Name: post-it
Description: Posts a note to a hook
Args: message: the note

#!https://hooks.example.com/notes
"""


def test_a_tool_file_with_every_body_kind() -> None:
    toolset = gptscript.parse(WEATHER_TOOLS)

    assert [tool.name for tool in toolset.tools] == ["weather", "forecast", "shout", "echo-back", "post-it"]
    assert toolset.entry.name == "weather"
    kinds = {tool.name: tool.kind for tool in toolset.tools}
    assert kinds == {
        "weather": "prompt",
        "forecast": "command",
        "shout": "command",
        "echo-back": "builtin",
        "post-it": "http",
    }
    weather = toolset.get("weather")
    assert weather is not None
    assert weather.description == "Answers questions about the weather"
    assert weather.tools == ["forecast", "shout", "sys.time.now"]
    assert weather.args == {"city": "the city the user asks about"}
    assert (weather.model, weather.temperature, weather.max_tokens) == ("gpt-4o", 0.2, 300)
    # The comment block and the file's own shebang are not part of any body.
    assert weather.body == (
        "You are a weather assistant. Use the forecast tool for the city,\nand say what time it is there."
    )
    assert weather.line == 5  # the header starts after the shebang and the comments

    forecast = toolset.get("forecast")
    assert forecast is not None
    assert forecast.args == {"city": "the city", "days": "how many days ahead"}
    assert forecast.instruction_line == """python3 -c 'import os; print(os.environ["CITY"], os.environ["DAYS"])'"""
    assert forecast.script == ""

    shout = toolset.get("shout")
    assert shout is not None
    assert shout.args == {"text": "what to shout"}  # the comment inside the header is skipped
    assert (shout.instruction_line, shout.script) == ("/bin/sh", 'echo "$TEXT" | tr a-z A-Z')
    assert shout.json_response is False

    echo = toolset.get("echo-back")
    assert echo is not None and echo.instruction_line == "sys.echo" and echo.args == {"input": "what to say"}
    post = toolset.get("post-it")
    assert post is not None and post.instruction_line == "https://hooks.example.com/notes"

    assert toolset.describe()["entry"] == "weather"
    assert toolset.describe()["tools"][1] == {
        "name": "forecast",
        "description": "The forecast for a city",
        "args": {"city": "the city", "days": "how many days ahead"},
        "tools": [],
        "kind": "command",
    }


def test_the_schema_the_model_sees_lists_the_args() -> None:
    forecast = gptscript.parse(WEATHER_TOOLS, subtool="forecast").entry
    assert forecast.parameters_schema() == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city"},
            "days": {"type": "string", "description": "how many days ahead"},
        },
        "required": [],
    }


def test_a_subtool_becomes_the_entry() -> None:
    toolset = gptscript.parse(WEATHER_TOOLS, subtool="shout")
    assert toolset.entry.name == "shout"
    assert len(toolset.tools) == 5  # the others stay callable by the entry


def test_a_bare_prompt_is_a_tool_named_after_the_file() -> None:
    toolset = gptscript.parse("Tell a joke about ${topic}.\n", default_name="jokes")
    assert toolset.entry.name == "jokes" and toolset.entry.kind == "prompt"
    assert toolset.entry.body == "Tell a joke about ${topic}."


def test_header_keys_follow_gptscript_spelling_rules() -> None:
    # Keys compare without case or spaces; blank lines and comments inside the header are skipped;
    # Windows line ends are fine.
    contents = (
        "name: terse\r\n"
        "\r\n"
        "# the model answers in JSON\r\n"
        "JSONResponse: true\r\n"
        "MAX TOKENS: 12\r\n"
        "\r\n"
        "modelname: small-model\r\n"
        "Answer in one word.\r\n"
    )
    tool = gptscript.parse(contents).entry
    assert (tool.name, tool.json_response, tool.max_tokens, tool.model) == ("terse", True, 12, "small-model")
    assert tool.body == "Answer in one word."


def test_a_body_line_that_looks_like_a_key_but_is_not_one_starts_the_body() -> None:
    tool = gptscript.parse("Name: note\n\nRemember: always be kind.\nDescription: this is body now\n").entry
    assert tool.body == "Remember: always be kind.\nDescription: this is body now"
    assert tool.description == ""


def test_a_tool_with_only_tools_is_an_agent_with_no_instructions() -> None:
    toolset = gptscript.parse("Name: helper\nTools: sys.echo, sys.time.now\n")
    assert toolset.entry.tools == ["sys.echo", "sys.time.now"] and toolset.entry.body == ""


def test_a_comment_only_block_is_not_a_tool() -> None:
    toolset = gptscript.parse("Name: one\n\n#!sys.echo\n---\n# nothing here\n\n---\nName: two\n\n#!sys.time.now\n")
    assert [tool.name for tool in toolset.tools] == ["one", "two"]


# --- errors, each naming its line --------------------------------------------------------------


def error_of(contents: str, **options: str) -> ToolFileError:
    with pytest.raises(ToolFileError) as caught:
        gptscript.parse(contents, **options)
    return caught.value


def test_a_temperature_that_is_not_a_number() -> None:
    error = error_of("Name: hot\nDescription: x\nTemperature: warm\n\nSay hi.\n")
    assert error.line == 3 and "Temperature must be a number, not 'warm'" in str(error)
    assert str(error).startswith("line 3: ")
    error = error_of("Name: hot\nTemperature: 7\n\nSay hi.\n")
    assert error.line == 2 and "between 0 and 2" in str(error)


def test_two_tools_with_one_name() -> None:
    error = error_of("Name: twin\n\n#!sys.echo\n---\nName: other\n\n#!sys.echo\n---\n\nName: twin\n\nSay hi.\n")
    assert error.line == 10 and "a tool named 'twin' is defined twice" in str(error)


def test_an_unknown_subtool() -> None:
    error = error_of(WEATHER_TOOLS, subtool="rain")
    assert "no tool named 'rain'" in str(error)
    assert "echo-back, forecast, post-it, shout, weather" in str(error)  # what the file does have


def test_an_unknown_tool_reference_names_the_tools_line() -> None:
    contents = (
        "Name: main\nDescription: uses things\nTools: sys.echo\nTools: helper, missing\n\nDo it.\n"
        "---\nName: helper\n\n#!sys.echo\n"
    )
    error = error_of(contents)
    assert error.line == 4
    assert "tool 'main' uses 'missing', which is neither in this file nor a built-in" in str(error)


def test_a_reference_to_another_file_is_refused_plainly() -> None:
    error = error_of("Name: main\nTools: github.com/gptscript-ai/search\n\nSearch.\n")
    assert error.line == 2 and "from another file or URL" in str(error)
    error = error_of("Name: main\nTools: helper from ./other.gpt\n\nGo.\n")
    assert "from another file or URL" in str(error)


def test_unknown_builtins() -> None:
    error = error_of("Name: main\nTools: sys.exec\n\nRun things.\n")
    assert error.line == 2 and "unknown built-in 'sys.exec'" in str(error)
    error = error_of("Name: main\n\n#!sys.download\n")
    assert error.line == 1 and "unknown built-in 'sys.download'" in str(error)


@pytest.mark.parametrize(
    ("args_line", "complaint"),
    [
        ("Args: city", "should read 'name: description'"),  # no description at all, as gptscript refuses
        ("Args: the city: where", "should read 'name: description'"),  # a name with spaces
        ("Args: : nothing", "should read 'name: description'"),
    ],
)
def test_a_bad_args_line(args_line: str, complaint: str) -> None:
    error = error_of(f"Name: main\nDescription: x\n{args_line}\n\n#!sys.echo\n")
    assert error.line == 3 and complaint in str(error)


def test_an_argument_declared_twice() -> None:
    error = error_of("Name: main\nArgs: a: one\nArgs: a: two\n\n#!sys.echo\n")
    assert error.line == 3 and "argument 'a' is declared twice" in str(error)


def test_other_header_values_are_checked() -> None:
    assert error_of("Name: main\nJSON Response: maybe\n\nx\n").line == 2
    assert error_of("Name: main\nMax Tokens: lots\n\nx\n").line == 2
    assert error_of("Name:\n\nx\n").line == 1


def test_a_tool_after_the_first_needs_a_name() -> None:
    error = error_of("Name: first\n\n#!sys.echo\n---\nDescription: nameless\n\n#!sys.echo\n")
    assert error.line == 5 and "needs a Name" in str(error)


def test_a_tool_without_a_body() -> None:
    error = error_of("Name: first\n\n#!sys.echo\n---\nName: hollow\nDescription: nothing inside\n")
    assert error.line == 5 and "tool 'hollow' has no body" in str(error)


def test_empty_files() -> None:
    assert "empty" in str(error_of("  \n\n"))
    assert "no tools" in str(error_of("# only a comment\n---\n\n"))


# --- how a call's arguments reach the tool -----------------------------------------------------


def test_arguments_arrive_as_strings_and_as_json() -> None:
    values, as_json = runner.parse_arguments('{"city": "Paris", "days": 3, "tags": ["a", "b"]}')
    assert values == {"city": "Paris", "days": "3", "tags": '["a", "b"]'}
    assert as_json == '{"city": "Paris", "days": 3, "tags": ["a", "b"]}'
    assert runner.parse_arguments("not json") == ({"input": "not json"}, '{"input": "not json"}')
    assert runner.parse_arguments("") == ({}, "{}")
    assert runner.parse_arguments("[1, 2]") == ({"input": "[1, 2]"}, '{"input": [1, 2]}')


def test_the_command_environment_holds_args_upper_cased_and_the_input() -> None:
    env = sandbox.tool_environment(
        {"API_TOKEN": "t=1"}, {"city": "Paris", "path": "/etc", "bash_env": "$(id)"}, '{"city": "Paris"}', "/w"
    )
    assert env == {
        "PATH": sandbox.SAFE_PATH,  # an argument named `path` never replaces it
        "HOME": "/w",
        "LANG": "C.UTF-8",
        "API_TOKEN": "t=1",
        "city": "Paris",
        "CITY": "Paris",
        "GPTSCRIPT_INPUT": '{"city": "Paris"}',
        "GPTSCRIPT_TOOL_DIR": "/w",
    }


def test_placeholders_in_the_shebang_line_stay_inside_their_word() -> None:
    env = {"msg": "hello world", "n": "3", "evil": "'; rm -rf / #"}
    argv = sandbox.interpreter_argv("python3 -c 'print(\"${msg}\" * ${n})' ${evil} ${unset}", env, None)
    assert argv == ["python3", "-c", 'print("hello world" * 3)', "'; rm -rf / #", ""]
    assert sandbox.interpreter_argv("/usr/bin/env python3", {}, "/w/tool-script") == ["python3", "/w/tool-script"]
    with pytest.raises(ValueError, match="cannot be split"):
        sandbox.interpreter_argv("python3 -c 'unclosed", {}, None)


def test_function_names_are_what_the_upstream_accepts_and_unique() -> None:
    taken: set[str] = {"weather"}
    assert runner.function_name("weather", taken) == "weather_2"
    assert runner.function_name("echo back!", taken) == "echo_back"
    assert runner.function_name("sys.time.now", taken) == "sys_time_now"
    assert runner.function_name("...", taken) == "tool"
    assert len(runner.function_name("x" * 200, taken)) <= 64
