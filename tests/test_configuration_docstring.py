"""`SADCLConfig`'s docstring documents every argument as transformers' model configs do (issue 18): each field of the
config, with its type, its default (the real one) and its meaning, in the `Args:` section."""

import ast
import dataclasses
import re

from transformers import PreTrainedConfig

from sadcl_hf import SADCLConfig

# `    name (`type`, *optional*, defaults to `value`):` followed by an indented line saying what it means.
ARGUMENT = re.compile(
    r"^ {8}(?P<name>\w+) \((?P<type>`[^`]+`(?: or `[^`]+`)*), \*optional\*, defaults to `(?P<default>[^`]+)`\):\n"
    r" {12}\S",
    re.MULTILINE,
)


def documented_arguments() -> dict[str, str]:
    """name -> documented default, from the `Args:` section of `SADCLConfig.__doc__`."""
    _, _, arguments = SADCLConfig.__doc__.partition("\n    Args:\n")
    assert arguments, "SADCLConfig's docstring has no 'Args:' section"
    arguments = arguments.split("\n\n    ", 1)[0]
    return {match["name"]: match["default"] for match in ARGUMENT.finditer(arguments)}


def config_fields() -> list[dataclasses.Field]:
    """The fields `SADCLConfig` declares (`PreTrainedConfig`'s own, e.g. `id2label`, are documented by transformers)."""
    inherited = {field.name for field in dataclasses.fields(PreTrainedConfig)}
    return [field for field in dataclasses.fields(SADCLConfig) if field.name not in inherited]


def test_every_config_field_is_documented_with_type_default_and_meaning():
    documented = documented_arguments()
    names = [field.name for field in config_fields()]
    assert [name for name in names if name not in documented] == [], "fields without a docstring entry"
    assert sorted(set(documented) - set(names)) == [], "docstring entries of fields the config does not have"


def test_documented_defaults_are_the_fields_defaults():
    documented = documented_arguments()
    for field in config_fields():
        assert ast.literal_eval(documented[field.name]) == field.default, field.name
