"""The settings as operators see them, read from ``gateway.settings.Settings`` (the one source):
each environment variable with its type, default and description, for ``serve --help`` (one line
each) and ``docs/configuration.md`` (the full text), which
``python -m gateway config-reference --output docs/configuration.md`` writes and a test keeps in
sync. Secrets never show a value."""

from __future__ import annotations

import argparse
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import AliasChoices, BaseModel, IPvAnyNetwork, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.settings import Settings

#: where the committed reference lives, relative to the repository root
REFERENCE_PATH: Final = Path("docs/configuration.md")
#: how to bring it up to date (the sync test says this when it is not)
REGENERATE: Final = f"python -m gateway config-reference --output {REFERENCE_PATH}"

_TYPE_NAMES: Final[dict[Any, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "text",
    Path: "path",
    SecretStr: "secret",
    IPvAnyNetwork: "address or network",
}


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """One setting: its environment variable(s), type, default and description."""

    env: tuple[str, ...]  # the first is the usual name
    type: str
    default: str
    description: str
    group: str | None  # the nested model's field name (``retention``), None at the top level

    @property
    def summary(self) -> str:
        """The first paragraph of the description, on one line."""
        return " ".join(self.description.split("\n\n", 1)[0].split())


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in present) + ", or unset"
    if origin is list:
        return f"JSON list of {_type_name(args[0])}"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> str:
    # Field(ge=…) etc. arrive as annotated-types markers, each with one attribute of that name
    found: dict[str, str] = {}
    for item in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = _number(value)
    if "ge" in found and "le" in found:
        return f"{found['ge']} to {found['le']}"
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(f"{symbols[attr]} {value}" for attr, value in found.items())


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default(field: FieldInfo) -> str:
    if _is_secret(field.annotation):
        return "hidden"
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]  # no-argument factories
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[]" if not value else str(value)
    if isinstance(value, Path):
        return str(value) if value.is_absolute() else f"./{value}"
    return _number(value)


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _env_names(name: str, field: FieldInfo, prefix: str) -> tuple[str, ...]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        # explicit environment names (DATABASE_URL); lower-case choices are keyword names
        return tuple(c for c in alias.choices if isinstance(c, str) and c.isupper())
    return (f"{prefix}{name.upper()}",)


def _nested_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def settings_docs() -> list[SettingDoc]:
    """Every setting of ``Settings``, top-level ones first, then each nested model's."""
    prefix: str = Settings.model_config.get("env_prefix", "")
    top: list[SettingDoc] = []
    nested: list[SettingDoc] = []
    for name, field in Settings.model_fields.items():
        model = _nested_model(field)
        if model is None:
            top.append(_doc(name, field, prefix, None))
            continue
        for sub_name, sub_field in model.model_fields.items():
            nested.append(_doc(sub_name, sub_field, f"{prefix}{name.upper()}_", name))
    return top + nested


def _doc(name: str, field: FieldInfo, prefix: str, group: str | None) -> SettingDoc:
    kind = _type_name(field.annotation)
    bounds = _bounds(field)
    if bounds:  # the bounds belong to the value, before "or unset"
        base, unset, _ = kind.partition(", or unset")
        kind = f"{base}, {bounds}{unset}"
    return SettingDoc(
        env=_env_names(name, field, prefix),
        type=kind,
        default=_default(field),
        description=(field.description or "").strip(),
        group=group,
    )


def undocumented() -> list[str]:
    """The environment names of settings without a description (each needs a docstring)."""
    return [doc.env[0] for doc in settings_docs() if not doc.description]


def help_epilog() -> str:
    """The settings for ``serve --help``: each variable, its default and its one-line summary."""
    lines = [
        "settings (environment variables, or a .env file in the working directory; the flags",
        f"above override them; full reference: {REFERENCE_PATH}):",
    ]
    for doc in settings_docs():
        lines.append(f"  {' | '.join(doc.env)}  (default {doc.default})")
        lines.extend(
            textwrap.wrap(doc.summary, width=92, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    return "\n".join(lines)


def _cell(text: str) -> str:
    # one Markdown table cell: each paragraph on one line, paragraphs apart, pipes escaped
    paragraphs = (" ".join(p.split()) for p in text.split("\n\n"))
    return "<br>".join(p for p in paragraphs if p).replace("|", "\\|")


def render_markdown() -> str:
    """``docs/configuration.md``: every setting, grouped as the nested models are."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from gateway/settings.py; do not edit by hand. Regenerate with:",
        f"     {REGENERATE} -->",
        "",
        "The gateway reads its settings from environment variables, or from a `.env` file in",
        "the working directory. Names are case-insensitive. `serve` flags (`--host`, `--port`,",
        "`--data-dir`, `--workers`, `--tls-cert`, `--tls-key`, `--tls-client-ca`) override the",
        "variables of the same name; each flag is checked by the same rules. A boolean is",
        "`1`/`true` or `0`/`false`; a list is JSON",
        '(`["10.0.0.0/8"]`). Secret values are never shown, here or in logs.',
        "",
        "`python -m gateway serve --help` lists the same settings with their one-line summary.",
    ]
    groups: list[tuple[str | None, str]] = [(None, "## Gateway")]
    for name, field in Settings.model_fields.items():
        if _nested_model(field) is not None:
            about = _cell(field.description or "")
            prefix = f"METERPOORT_{name.upper()}_<NAME>"
            groups.append(
                (name, f"## {name.capitalize()}\n\n{about[:1].upper()}{about[1:]}: `{prefix}`.")
            )
    docs = settings_docs()
    for group, heading in groups:
        out += ["", heading, "", "| Variable | Type | Default | Description |", "|---|---|---|---|"]
        for doc in docs:
            if doc.group == group:
                names = "<br>".join(f"`{env}`" for env in doc.env)
                out.append(
                    f"| {names} | {_cell(doc.type)} | `{_cell(doc.default)}` |"
                    f" {_cell(doc.description)} |"
                )
    return "\n".join(out) + "\n"


def cmd_config_reference(args: argparse.Namespace, settings: Settings) -> int:
    """Print (or write, or check) the configuration reference."""
    text = render_markdown()
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.is_file() else ""
        if current != text:
            print(f"error: {args.check} is out of date; run: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``config-reference``."""
    parser = sub.add_parser(
        "config-reference",
        help=f"print the configuration reference (Markdown; the committed copy: {REFERENCE_PATH})",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", type=Path, default=None, metavar="FILE", help="write it here")
    where.add_argument(
        "--check",
        type=Path,
        default=None,
        metavar="FILE",
        help="exit 1 unless FILE holds exactly the current reference",
    )
    parser.set_defaults(func=cmd_config_reference)
