"""The configuration reference and ``serve --help`` come from ``gateway.settings`` alone: every
setting is documented there, the committed ``docs/configuration.md`` is what the generator
writes, and the variable names it lists are the ones the settings read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import config_reference
from gateway.cli.main import build_parser
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def test_the_committed_reference_is_the_generated_one() -> None:
    committed = (REPO / config_reference.REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == config_reference.render_markdown(), (
        f"{config_reference.REFERENCE_PATH} is out of date with gateway/settings.py;"
        f" regenerate it: {config_reference.REGENERATE}"
    )


def test_every_setting_has_a_description() -> None:
    assert config_reference.undocumented() == [], (
        "give each setting a docstring under its field in gateway/settings.py"
        " (first paragraph: the one-line summary serve --help shows)"
    )


def test_the_reference_lists_every_setting_with_nested_names() -> None:
    docs = config_reference.settings_docs()
    names = {env for doc in docs for env in doc.env}
    assert {"DATABASE_URL", "METERPOORT_PORT", "METERPOORT_RETENTION_BATCH_ROWS"} <= names
    assert "METERPOORT_WEBHOOK_READINGS_CHANGED_MAX_ENTRIES" in names
    top = [n for n, f in Settings.model_fields.items() if n not in ("retention", "webhook")]
    nested = len(Settings.model_fields["retention"].annotation.model_fields)  # type: ignore[union-attr]
    nested += len(Settings.model_fields["webhook"].annotation.model_fields)  # type: ignore[union-attr]
    assert len(docs) == len(top) + nested
    by_name = {doc.env[0]: doc for doc in docs}
    assert by_name["METERPOORT_PORT"].default == "8080"
    assert by_name["METERPOORT_PORT"].type == "integer, 0 to 65535"
    assert by_name["METERPOORT_RETENTION_AUDIT_YEARS"].type == "integer, ≥ 1, or unset"
    assert by_name["METERPOORT_DATA_DIR"].default == "./var"


@pytest.mark.parametrize("name", ["DATABASE_URL", "METERPOORT_ADMIN_TOKEN"])
def test_secrets_show_no_value(name: str) -> None:
    (doc,) = [d for d in config_reference.settings_docs() if d.env[0] == name]
    assert doc.type.startswith("secret") and doc.default == "hidden"


def test_each_listed_variable_is_read_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names come from the field names by the settings' own rules; setting each numeric one
    to a value of its own changes exactly that setting (the names are not merely plausible)."""
    for doc in config_reference.settings_docs():
        if not doc.type.startswith(("integer", "number")):
            continue
        default = Settings()
        group = default if doc.group is None else getattr(default, doc.group)
        field = doc.env[0].removeprefix("METERPOORT_").lower()
        if doc.group is not None:
            field = field.removeprefix(f"{doc.group}_")
        old = getattr(group, field)
        new = 77 if old is None else old + 1  # within every bound of these settings
        monkeypatch.setenv(doc.env[0], str(new))
        read = Settings()
        monkeypatch.delenv(doc.env[0])
        value = getattr(read if doc.group is None else getattr(read, doc.group), field)
        assert value == new, doc.env[0]


def test_serve_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for doc in config_reference.settings_docs():
        assert f"{doc.env[0]}" in text and f"(default {doc.default})" in text
        assert doc.summary[:40] in text.replace("\n      ", " ")
    assert "METERPOORT_ADMIN_TOKEN  (default hidden)" in text
