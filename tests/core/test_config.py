"""Settings from the environment: defaults, parsing, refusals, and the tables of docs/configuration.md and the README kept true."""

from __future__ import annotations

import json
import re
import runpy
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from wav2lip_core.config import Settings, markdown_table

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DOC = ROOT / "docs" / "configuration.md"  # the full table, `python -m wav2lip_core.config`, lives only there
VARS = [f.metadata["env"].var for f in fields(Settings)]
ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| (empty|`[^`]*`) \|")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with none of the declared variables; set some with `env.setenv`."""
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def table_rows(text: str) -> list[tuple[str, str]]:
    """(variable, default text) for each row of the settings tables in `text`."""
    rows = [m.groups() for m in map(ROW.match, text.splitlines()) if m]
    return [(var, "" if cell == "empty" else cell.strip("`")) for var, cell in rows]


def wrong_defaults(env: pytest.MonkeyPatch, rows: list[tuple[str, str]]) -> dict[str, str]:
    """The rows whose default, given as the environment, does not read as the declared default."""
    for var, default in rows:
        env.setenv(var, default)
    read, declared = Settings.from_env(), {f.metadata["env"].var: f for f in fields(Settings)}
    return {var: text for var, text in rows if getattr(read, declared[var].name) != declared[var].default}


def test_an_empty_environment_gives_the_defaults(env: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert s == Settings()
    assert (s.models_dir, s.cache_dir, s.precision, s.batch_size, s.split_generator) == (
        Path("ir_models"),
        Path("ov_cache"),
        "auto",
        4,
        True,
    )
    assert (s.bind_address(), s.graceful_timeout_s(), s.gunicorn_timeout, s.log_level) == ("127.0.0.1:8000", 310, 120, "info")


def test_the_configuration_page_lists_every_setting_once_with_its_default(env: pytest.MonkeyPatch) -> None:
    text = CONFIG_DOC.read_text()
    rows = table_rows(text)
    twice = [var for var, n in Counter(var for var, _ in rows).items() if n > 1]
    assert not twice, f"{CONFIG_DOC.name} lists {twice} more than once"
    paste = "paste `python -m wav2lip_core.config` into docs/configuration.md"
    assert [var for var, _ in rows] == VARS, f"{CONFIG_DOC.name}'s variables differ from wav2lip_core/config.py: {paste}"
    assert not (wrong := wrong_defaults(env, rows)), f"{CONFIG_DOC.name}'s defaults differ from wav2lip_core/config.py: {wrong}"
    assert markdown_table() in text, f"{CONFIG_DOC.name}'s table is stale: {paste}"


def test_the_readme_shows_some_settings_with_their_defaults(env: pytest.MonkeyPatch) -> None:
    """The README's short table: declared settings, each once, with the declared default (the full table is not copied there)."""
    text = (ROOT / "README.md").read_text()
    rows = table_rows(text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0])
    names = [var for var, _ in rows]
    assert 5 <= len(rows) < len(VARS) and len(set(names)) == len(names), names
    assert set(names) <= set(VARS), f"README names undeclared settings: {set(names) - set(VARS)}"
    assert not (wrong := wrong_defaults(env, rows)), f"README's defaults differ from wav2lip_core/config.py: {wrong}"
    assert "| `LOG_LEVEL` |" not in text, "the full table belongs in docs/configuration.md only"


@pytest.mark.parametrize(
    ("var", "raw", "message"),
    [
        ("BATCH_SIZE", "abc", "BATCH_SIZE must be an integer, got 'abc'"),
        ("WEB_CONCURRENCY", "", "WEB_CONCURRENCY must be an integer, got ''"),
        ("BATCH_SIZE", "0", "BATCH_SIZE must be between 1 and 256, got 0"),
        ("PORT", "70000", "PORT must be between 1 and 65535, got 70000"),
        ("MAX_AUDIO_SECONDS", "lots", "MAX_AUDIO_SECONDS must be a number, got 'lots'"),
        ("MAX_AUDIO_SECONDS", "nan", "MAX_AUDIO_SECONDS must be between 0.1 and 3600, got nan"),
        ("PRECISION", "f64", "PRECISION must be auto, f32, bf16, f16 or int8, got 'f64'"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be debug, info, warning, error or critical, got 'loud'"),
        ("SPLIT_GENERATOR", "maybe", "SPLIT_GENERATOR must be 1, 0, true, false, yes, no, on or off, got 'maybe'"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(env: pytest.MonkeyPatch, var: str, raw: str, message: str) -> None:
    env.setenv(var, raw)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("TRUE", True), (" yes ", True), ("On", True), ("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_booleans(env: pytest.MonkeyPatch, raw: str, value: bool) -> None:
    env.setenv("SPLIT_GENERATOR", raw)
    assert Settings.from_env().split_generator is value


def test_text_lists_paths_and_words(env: pytest.MonkeyPatch) -> None:
    for var, raw in [
        ("OV_CACHE_DIR", ""),
        ("CORS_ORIGINS", " https://a.example , ,*"),
        ("PRECISION", "BF16"),
        ("MAX_AUDIO_SECONDS", "12.5"),
    ]:
        env.setenv(var, raw)
    s = Settings.from_env()
    assert (s.cache_dir, s.cors_origins, s.precision, s.max_audio_seconds) == (None, ("https://a.example", "*"), "bf16", 12.5)


def test_derived_defaults_follow_their_sources(env: pytest.MonkeyPatch) -> None:
    env.setenv("PORT", "8080")
    env.setenv("REQUEST_TIMEOUT_S", "60")
    s = Settings.from_env()
    assert (s.bind_address(), s.graceful_timeout_s()) == ("127.0.0.1:8080", 70)
    env.setenv("BIND", "0.0.0.0:9000")
    env.setenv("GRACEFUL_TIMEOUT", "5")
    s = Settings.from_env()
    assert (s.bind_address(), s.graceful_timeout_s()) == ("0.0.0.0:9000", 5)


def test_describe_is_json_and_hides_the_api_key(env: pytest.MonkeyPatch) -> None:
    env.setenv("API_KEY", "secret-123")
    described = json.dumps(Settings.from_env().describe())
    assert "secret-123" not in described
    assert json.loads(described)["api_key"] == "set"


def test_gunicorn_conf_reads_settings_and_stops_on_a_bad_variable(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the conf sets it when unset; this keeps it out of os.environ
    env.setenv("PORT", "8123")
    env.setenv("LOG_LEVEL", "WARNING")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert (conf["bind"], conf["graceful_timeout"], conf["timeout"], conf["loglevel"]) == ("127.0.0.1:8123", 310, 120, "warning")
    assert conf["threads"] == 1 + 4 + 16 + 2 and conf["preload_app"] is False  # whole answers, queue, streams, probes
    env.setenv("BATCH_SIZE", "abc")
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert stopped.value.code == "configuration error: BATCH_SIZE must be an integer, got 'abc'"


def test_gunicorn_conf_never_takes_an_empty_metrics_folder_for_the_current_one(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR= (empty) once made on_starting empty the folder gunicorn was started from."""
    env.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    env.chdir(tmp_path)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["_metrics_dir"].is_absolute() and conf["_metrics_dir"] != tmp_path
