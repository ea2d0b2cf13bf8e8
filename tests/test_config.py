"""The gateway config file and process settings: valid input loads, every mistake names its line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from switchboard.config import GatewayConfig, Price, load_config, parse_config
from switchboard.errors import ConfigError
from switchboard.settings import Settings

VALID = """\
providers:
  - name: local-ollama
    kind: ollama
    base_url: http://127.0.0.1:11434/
    locality: local
  - name: openai
    kind: openai
    base_url: https://api.openai.com/v1
    locality: external
    api_key: sk-test-123
    headers: {X-Org: acme}
    read_timeout: 30
models:
  - name: llama3
    deployments:
      - {provider: local-ollama, model: "llama3.1:8b"}
  - name: gpt
    deployments:
      - provider: openai
        model: gpt-4o
        price: {input_per_1m: 1.5, output_per_1m: 6}
prices:
  my-model: {input_per_1m: 0.5}
"""


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="gw.yaml")
    return info.value.message


def assert_located(message: str, line: int, field: str) -> None:
    """The message names the source, the 1-based line and the dotted field path."""
    expected = f"gw.yaml: line {line}: {field}:"
    assert message.startswith(expected), f"{message!r} does not start with {expected!r}"


# -- valid files ------------------------------------------------------------------------------


def test_valid_config_loads_every_field() -> None:
    config = parse_config(VALID, source="gw.yaml")

    assert config.source == "gw.yaml"
    assert [p.name for p in config.providers] == ["local-ollama", "openai"]
    ollama, openai = config.providers
    assert ollama.kind == "ollama"
    assert ollama.locality == "local"
    assert ollama.base_url == "http://127.0.0.1:11434"  # trailing slash stripped
    assert ollama.api_key is None
    assert ollama.discover_models is False
    assert openai.api_key is not None
    assert openai.api_key.get_secret_value() == "sk-test-123"
    assert "sk-test-123" not in repr(openai)
    assert openai.headers == {"X-Org": "acme"}
    assert openai.read_timeout == 30.0
    assert openai.connect_timeout == 5.0
    assert [m.name for m in config.models] == ["llama3", "gpt"]
    assert config.models[0].deployments[0].model == "llama3.1:8b"
    assert config.models[0].deployments[0].price is None
    price = config.models[1].deployments[0].price
    assert price is not None
    assert (price.input_per_1m, price.output_per_1m) == (1.5, 6.0)
    assert config.prices["my-model"] == Price(input_per_1m=0.5)


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(VALID, encoding="utf-8")

    config = load_config(path)

    assert config.source == str(path)
    assert len(config.providers) == 2
    assert len(config.models) == 2


def test_load_config_none_gives_the_local_ollama_default() -> None:
    config = load_config(None)

    assert len(config.providers) == 1
    provider = config.providers[0]
    assert provider.kind == "ollama"
    assert provider.locality == "local"
    assert provider.discover_models is True
    assert provider.base_url == "http://127.0.0.1:11434"
    assert config.models == []


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in info.value.message
    assert "cannot read" in info.value.message

    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory is not a readable file


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_file_is_an_empty_config(text: str) -> None:
    config = parse_config(text, source="empty.yaml")
    assert config == GatewayConfig(source="empty.yaml")
    assert config.providers == []
    assert config.models == []


# -- environment expansion --------------------------------------------------------------------


def test_env_vars_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_KEY", "sk-from-env")
    monkeypatch.setenv("SB_TEST_HOST", "10.0.0.7")
    monkeypatch.setenv("SB_TEST_TIMEOUT", "42.5")
    monkeypatch.delenv("SB_TEST_UNSET", raising=False)
    text = """\
providers:
  - name: p
    kind: openai
    base_url: http://${SB_TEST_HOST}:${SB_TEST_PORT:-8000}/v1
    locality: ${SB_TEST_UNSET:-external}
    api_key: ${SB_TEST_KEY}
    read_timeout: ${SB_TEST_TIMEOUT}
    headers: {X-Empty: "${SB_TEST_UNSET:-}"}
"""
    monkeypatch.delenv("SB_TEST_PORT", raising=False)

    provider = parse_config(text).providers[0]

    assert provider.base_url == "http://10.0.0.7:8000/v1"
    assert provider.locality == "external"
    assert provider.api_key is not None
    assert provider.api_key.get_secret_value() == "sk-from-env"
    assert provider.read_timeout == 42.5
    assert provider.headers == {"X-Empty": ""}


def test_set_env_var_wins_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_URL", "https://set.example")
    text = """\
providers:
  - {name: p, kind: openai, base_url: "${SB_TEST_URL:-http://default}", locality: external}
"""
    assert parse_config(text).providers[0].base_url == "https://set.example"


def test_expanded_value_is_not_parsed_as_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_KEY", "a: [b, c] # not yaml")
    text = """\
providers:
  - name: p
    kind: openai
    base_url: http://h
    locality: external
    api_key: ${SB_TEST_KEY}
"""
    key = parse_config(text).providers[0].api_key
    assert key is not None
    assert key.get_secret_value() == "a: [b, c] # not yaml"


def test_missing_env_var_names_variable_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SB_TEST_MISSING_KEY", raising=False)
    text = """\
providers:
  - name: p
    kind: openai
    base_url: http://h
    locality: external
    api_key: ${SB_TEST_MISSING_KEY}
"""
    message = config_error(text)
    assert "SB_TEST_MISSING_KEY" in message
    assert "line 6:" in message
    assert message.startswith("gw.yaml: ")


# -- located validation errors ------------------------------------------------------------------

PROVIDER_TWO = """\
providers:
  - name: good
    kind: ollama
    base_url: http://127.0.0.1:11434
    locality: local
  - name: second
    kind: openai
    base_url: http://127.0.0.1:8000/v1
    locality: external
"""


@pytest.mark.parametrize(
    ("replace", "by", "line", "field", "hint"),
    [
        ("locality: external", "locality: cloud", 9, "providers.1.locality", "local"),
        ("kind: openai", "kind: foo", 7, "providers.1.kind", "ollama"),
        (
            "locality: external",
            "locality: external\n    extra_field: 1",
            10,
            "providers.1.extra_field",
            "not permitted",
        ),
        (
            "locality: external",
            "locality: external\n    connect_timeout: soon",
            10,
            "providers.1.connect_timeout",
            "number",
        ),
        (
            "locality: external",
            "locality: external\n    max_connections: 0",
            10,
            "providers.1.max_connections",
            "1",
        ),
        (
            "base_url: http://127.0.0.1:8000/v1",
            "base_url: ftp://x",
            8,
            "providers.1.base_url",
            "http://",
        ),
        ("name: second", "name: 'bad name!'", 6, "providers.1.name", "pattern"),
    ],
)
def test_bad_provider_field_names_path_and_line(
    replace: str, by: str, line: int, field: str, hint: str
) -> None:
    text = PROVIDER_TWO.replace(replace, by)
    assert text != PROVIDER_TWO

    message = config_error(text)

    assert_located(message, line, field)
    assert hint in message


def test_missing_required_field_points_at_its_entry() -> None:
    text = PROVIDER_TWO.replace("    kind: openai\n", "")
    message = config_error(text)
    assert_located(message, 6, "providers.1.kind")
    assert "required" in message.lower()


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("providers: []\n\nroutes:\n  - a\n", 3, "routes"),
        (
            PROVIDER_TWO + "    options:\n      temperature: 0\n",
            10,
            "providers.1.options",
        ),
    ],
    ids=["top-level", "nested"],
)
def test_unknown_field_with_block_value_points_at_its_key(text: str, line: int, field: str) -> None:
    # The mistake is the key: the line must be the one that names it, not where its value starts.
    message = config_error(text)
    assert_located(message, line, field)
    assert "not permitted" in message


def test_nested_error_inside_a_deployment_price() -> None:
    text = (
        PROVIDER_TWO
        + """\
models:
  - name: m
    deployments:
      - provider: second
        model: gpt-4o
        price:
          input_per_1m: -1
"""
    )
    message = config_error(text)
    assert_located(message, 16, "models.0.deployments.0.price.input_per_1m")


def test_model_without_deployments() -> None:
    text = PROVIDER_TWO + "models:\n  - name: m\n    deployments: []\n"
    message = config_error(text)
    assert_located(message, 12, "models.0.deployments")


def test_duplicate_provider_name_points_at_the_second() -> None:
    text = PROVIDER_TWO.replace("name: second", "name: good")
    message = config_error(text)
    assert_located(message, 6, "providers.1.name")
    assert "duplicate provider" in message


def test_duplicate_model_name() -> None:
    text = (
        PROVIDER_TWO
        + """\
models:
  - name: m
    deployments: [{provider: good, model: a}]
  - name: m
    deployments: [{provider: good, model: b}]
"""
    )
    message = config_error(text)
    assert_located(message, 13, "models.1.name")
    assert "duplicate model" in message


def test_deployment_naming_unknown_provider_points_at_that_entry() -> None:
    text = (
        PROVIDER_TWO
        + """\
models:
  - name: m
    deployments:
      - provider: good
        model: a
      - provider: nosuch
        model: b
"""
    )
    message = config_error(text)
    assert_located(message, 15, "models.0.deployments.1.provider")
    assert "'nosuch'" in message


@pytest.mark.parametrize(
    "text",
    ["providers: [\n  - name: x\n", "a: b\n  c: d\n", "key: 'unterminated\n", "\tbad: tab\n"],
)
def test_not_yaml(text: str) -> None:
    message = config_error(text)
    assert message.startswith("gw.yaml: not valid YAML")


@pytest.mark.parametrize(("text", "line"), [("- a\n- b\n", 1), ("\n\njust a string\n", 3)])
def test_top_level_must_be_a_mapping(text: str, line: int) -> None:
    message = config_error(text)
    assert message == f"gw.yaml: line {line}: expected a mapping"


def test_config_error_line_from_a_loaded_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(PROVIDER_TWO.replace("locality: external", "locality: cloud"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert re.match(rf"{re.escape(str(path))}: line 9: providers\.1\.locality:", info.value.message)


# -- settings ------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No SWITCHBOARD_* variable from the surrounding shell, and no ./switchboard.yaml."""
    import os

    for name in list(os.environ):
        if name.startswith("SWITCHBOARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_settings_read_switchboard_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("SWITCHBOARD_PORT", "9123")
    clean_env.setenv("SWITCHBOARD_HOST", "0.0.0.0")
    clean_env.setenv("SWITCHBOARD_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    clean_env.setenv("SWITCHBOARD_ADMIN_KEY", "sk-admin-xyz")
    clean_env.setenv("SWITCHBOARD_USAGE_BATCH_SIZE", "17")
    clean_env.setenv("SWITCHBOARD_CONFIG", str(tmp_path / "gw.yaml"))
    clean_env.setenv("SWITCHBOARD_ACCESS_LOG", "true")

    settings = Settings()

    assert settings.port == 9123
    assert settings.host == "0.0.0.0"
    assert settings.resolved_database_url() == "postgresql+asyncpg://u@h/db"
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == "sk-admin-xyz"
    assert "sk-admin-xyz" not in repr(settings)
    assert settings.usage_batch_size == 17
    assert settings.access_log is True
    assert settings.resolved_config_path() == tmp_path / "gw.yaml"


def test_settings_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    clean_env.setenv("SWITCHBOARD_DATA_DIR", str(data_dir))

    settings = Settings()

    assert settings.data_dir == data_dir
    assert settings.database_url is None
    assert settings.resolved_database_url() == f"sqlite+aiosqlite:///{data_dir / 'switchboard.db'}"
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.resolved_config_path() is None


def test_settings_pick_up_switchboard_yaml_in_cwd(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "switchboard.yaml").write_text("providers: []\n")
    path = Settings().resolved_config_path()
    assert path is not None
    assert path.resolve() == (tmp_path / "switchboard.yaml").resolve()


def test_settings_reject_bad_values(clean_env: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    clean_env.setenv("SWITCHBOARD_WORKERS", "0")
    with pytest.raises(ValidationError, match="workers"):
        Settings()
