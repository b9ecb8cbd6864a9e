"""Command-line options declared once, on the config dataclasses' fields, and turned into argparse groups.

Field metadata plus this small builder rather than jsonargparse: no new dependency, `--help` stays fast (argparse
and the config module, nothing else to import), and every option keeps the spelling it always had (--no-probe,
--bos/--no-bos, --batch-size N|auto, --corpus for CorpusConfig.path), which a generic tool would rename.

A field becomes an option through `option(default, help=..., choices=..., flag=...)`; its type decides the kind:
str, int and Path take a value; `X | None` defaults to None; a bool defaults to False (a switch), True with a
--no-... flag (a switch that turns it off) or True/None otherwise (--x/--no-x); `int | str` takes a number or one
of `words`; a list takes one or more values (`repeat`: the option is given once per value). The same names, with
- or _, are the keys of a `--config FILE.toml`.
"""

from __future__ import annotations

import argparse
import reprlib
import types
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import UsageError

METADATA_KEY = "lossgap.option"


@dataclass(frozen=True)
class Option:
    """How a config field appears on the command line; its default is the field's own."""

    help: str | None = None
    choices: tuple | None = None
    flag: str | None = None  # the spelling when it is not --field-name
    words: tuple[str, ...] = ()  # `int | str` fields: the words taken besides a number ("auto")
    expects: str | None = None  # what a value is, for error messages, when the type alone does not say it well
    required: bool = False  # the command needs a value although the API has a default (--out)
    repeat: bool = False  # a list given as one option per value (--model A --model B)
    table: str | None = None  # a repeatable option: the TOML key of a table whose entries become NAME=VALUE items
    metavar: str | None = None


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **details: Any) -> Any:
    """A dataclass field that is also a command-line option (see Option for the details)."""
    if "choices" in details:
        details["choices"] = tuple(details["choices"])
    return field(default=default, default_factory=default_factory, metadata={METADATA_KEY: Option(**details)})


def _value_types(hint: Any) -> tuple:
    """The types a field holds besides None: (int,) for `int | None`, (int, str) for `int | str`."""
    args = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(a for a in args if a is not type(None))


@dataclass(frozen=True)
class FieldOption:
    """One config field as a command-line option and as a key of a config file."""

    cls: type
    field: Field
    spec: Option
    types: tuple  # the types the field holds besides None

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.field.name.replace("_", "-")

    @property
    def name(self) -> str:
        return self.flag.removeprefix("--")

    @property
    def dest(self) -> str:
        """Unique per parser and tells `build` which field a parsed value fills."""
        return f"{self.cls.__name__}.{self.field.name}"

    @property
    def default(self) -> Any:
        if self.field.default is not MISSING:
            return self.field.default
        if self.field.default_factory is not MISSING:
            return self.field.default_factory()
        return None

    @property
    def required(self) -> bool:
        return self.spec.required or (self.field.default is MISSING and self.field.default_factory is MISSING)

    @property
    def is_list(self) -> bool:
        return get_origin(self.types[0]) in (list, tuple)

    @property
    def item_type(self) -> type:
        return get_args(self.types[0])[0] if self.is_list else self.types[0]

    @property
    def expects(self) -> str:
        if self.spec.expects:
            return self.spec.expects
        if self.types == (bool,):
            return "true or false"
        one = f"one of {', '.join(map(str, self.spec.choices))}" if self.spec.choices else None
        if self.is_list:
            return f"a list of strings ({one})" if one else "a list of strings"
        if one:
            return one
        if int in self.types and self.spec.words:
            return f"an integer or {' or '.join(self.spec.words)}"
        return {int: "an integer", Path: "a path (a string)"}.get(self.types[0], "a string")

    @property
    def switch(self) -> str | None:
        """bool fields: "on" (--x sets it), "off" (--no-x clears it) or "both" (--x/--no-x); else None."""
        if self.types != (bool,):
            return None
        if self.name.startswith("no-"):
            return "off"
        return "on" if self.default is False else "both"

    def file_keys(self) -> dict[str, bool]:
        """Config file keys for this option, each with whether a true value turns the field off."""
        if self.switch == "off":
            return {self.name: True, self.name.removeprefix("no-"): False}
        if self.switch == "both":
            return {self.name: False, "no-" + self.name: True}
        return {self.name: False}

    def argparse_kwargs(self, note: str = "", file_may_set: bool = False) -> dict:
        """add_argument's keywords; a required option is left to `build` when a config file may supply it."""
        kw: dict[str, Any] = {"dest": self.dest, "help": (self.spec.help + note) if self.spec.help else None}
        default = None if self.spec.required else self.default
        if self.switch:
            actions = {"on": "store_true", "off": "store_false", "both": argparse.BooleanOptionalAction}
            return {**kw, "default": default, "action": actions[self.switch]}
        kw.update(default=default, required=self.required and not file_may_set)
        if self.spec.choices:
            kw["choices"] = self.spec.choices
        else:
            kw["metavar"] = self.spec.metavar or self.name.upper().replace("-", "_")
        if self.is_list and self.spec.repeat:
            kw["action"] = "append"
        elif self.is_list:
            kw["nargs"] = "+"
        if self.spec.words:
            kw["type"] = self._number_or_word
        elif self.item_type is not str:
            kw["type"] = self.item_type
        return kw

    def _number_or_word(self, text: str) -> int | str:
        if text in self.spec.words:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.expects}") from None

    def accepts(self, value: Any) -> bool:
        """Whether a config file value has this option's type and is one of its choices."""
        if self.is_list:
            return isinstance(value, list) and all(self._accepts_item(item) for item in value)
        return self._accepts_item(value)

    def _accepts_item(self, value: Any) -> bool:
        """TOML gives bool, int, float, str, dates, lists and tables; bool is an int to Python, not to us."""
        if self.spec.choices is not None and value not in self.spec.choices:
            return False
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int):
            return int in self.types
        if isinstance(value, str):
            return value in self.spec.words or self.item_type in (str, Path)
        return False


@cache
def field_options(cls: type) -> tuple[FieldOption, ...]:
    """The fields of a config dataclass that are command-line options, in declaration order."""
    hints = get_type_hints(cls)
    found = []
    for f in fields(cls):
        if METADATA_KEY in f.metadata:
            found.append(FieldOption(cls, f, f.metadata[METADATA_KEY], _value_types(hints[f.name])))
    return tuple(found)


def build(cls: type, parsed: argparse.Namespace, **given: Any) -> Any:
    """cls by keyword from the parsed values of its options; `given` fills the rest, fields the command does not
    offer keep their defaults. A required option still missing after the config file is a usage error."""
    values = dict(given)
    for opt in field_options(cls):
        if opt.field.name in values or not hasattr(parsed, opt.dest):
            continue
        value = getattr(parsed, opt.dest)
        if opt.required and value in (None, ""):
            raise UsageError(f"{opt.flag} is required (on the command line or in --config)")
        values[opt.field.name] = value
    return cls(**values)


def read_toml(path: Path) -> dict:
    """A config file's values; parsed by tomllib, so nothing in it is executed."""
    import tomllib  # only when a file is read: help stays fast

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: file not found") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path}: a folder, not a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {path}: not valid TOML ({e})") from None


class OptionParser(argparse.ArgumentParser):
    """An argparse parser that knows which config field each of its options fills, so that a config file can set
    the same options by name. `config_files=True`: a --config file may supply the required options."""

    def __init__(self, *args: Any, config_files: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config_files = config_files
        self.field_options: list[FieldOption] = []
        self.file_set: dict[str, str] = {}  # flag -> "key = value in --config FILE", for the options a file set

    def add_config_option(self, group: Any) -> None:
        group.add_argument("--config", help="TOML file with any of these options")

    def add_fields(self, group: Any, cls: type, *, skip: tuple[str, ...] = (),
                   notes: dict[str, str] | None = None) -> None:
        """An option in `group` for every option field of cls but those in skip; notes: help appended per field."""
        for opt in field_options(cls):
            if opt.field.name not in skip:
                self.field_options.append(opt)
                note = (notes or {}).get(opt.field.name, "")
                group.add_argument(opt.flag, **opt.argparse_kwargs(note, self.config_files))

    def file_keys(self) -> dict[str, tuple[FieldOption, bool]]:
        keys = {}
        for opt in self.field_options:
            keys.update({key: (opt, turns_off) for key, turns_off in opt.file_keys().items()})
            if opt.spec.table:
                keys[opt.spec.table] = (opt, False)
        return keys

    def file_defaults(self, values: dict, origin: str) -> dict[str, Any]:
        """Parsed values (by dest) from a config file's keys, checked as the command line would check them."""
        import difflib

        keys = self.file_keys()
        defaults: dict[str, Any] = {}
        for key, value in values.items():
            normal = key.replace("_", "-")
            if normal not in keys:
                near = difflib.get_close_matches(normal, list(keys), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                if not near and isinstance(value, dict):
                    hint = " (options are top-level keys, not [sections])"
                raise UsageError(f"{origin}: unknown option {key!r}{hint}")
            opt, turns_off = keys[normal]
            if opt.spec.table == normal:
                value = _table_items(value, key, origin)
            elif not opt.accepts(value):
                raise UsageError(f"{origin}: {key!r} expects {opt.expects}, got {reprlib.repr(value)}")
            if opt.spec.repeat:
                defaults[opt.dest] = [*defaults.get(opt.dest, []), *value]
            elif opt.dest in defaults:
                raise UsageError(f"{origin}: {key!r} sets {opt.flag} a second time")
            else:
                defaults[opt.dest] = (not value) if turns_off else value
            self.file_set[opt.flag] = f"{key} = {reprlib.repr(value)} in {origin}"
        return defaults

    def apply_config_file(self, path: Path) -> None:
        """The file's options become this parser's defaults, so the command line still wins."""
        self.set_defaults(**self.file_defaults(read_toml(path), f"--config {path}"))

    def name_file_key(self, e: UsageError, argv: list[str]) -> None:
        """A value refused by validation names the config file key that set it (when the command line did not):
        validation speaks of options, the user wrote a key."""
        for flag, where in self.file_set.items():
            given = any(a == flag or a.startswith(flag + "=") for a in argv)
            if not given and e.message.startswith((flag + ":", flag + " ")):
                e.message = f"{e.message} (set by {where})"
                return


def _table_items(table: Any, key: str, origin: str) -> list[str]:
    """A table's entries as the NAME=VALUE items its option takes; a name holding "=" would be split there (the
    value may hold one: a path), so it is refused."""
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise UsageError(f"{origin}: {key!r} expects a table of NAME = \"PATH\" entries, got {reprlib.repr(table)}")
    for name in table:
        if "=" in name:
            raise UsageError(f"{origin}: {key!r} entry {name!r}: a name cannot hold '='",
                             f"rename the entry in [{key}], e.g. {name.replace('=', '-')!r}")
    return [f"{name}={spec}" for name, spec in table.items()]
