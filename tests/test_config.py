"""Settings: defaults < TOML file < environment, and one-line errors naming the variable."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import onnxruntime
import pytest
from typer.testing import CliRunner

from node.cli import app
from node.config import CallerRule, Settings, load_settings, setting_variables, unknown_variables
from node.errors import ConfigError
from tests.support import REPO_ROOT, clear_dicomnode_env, dicomnode_command, free_port


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``DICOMNODE_*`` variable of the developer's shell leaks into these tests."""
    clear_dicomnode_env(monkeypatch)
    monkeypatch.chdir(tmp_path)


def _write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


TOML = """
[dicom]
ae_title = "FILENODE"
port = 12000
allowed_callers = ["PACS@10.0.0.5", "MODALITY"]

[storage]
data_dir = "/srv/dicomnode"
min_free_mb = 5

[logging]
format = "json"
"""


def test_defaults_without_file() -> None:
    """Without a file or variables, the documented defaults apply."""
    settings = load_settings()
    assert settings.dicom.ae_title == "DICOMNODE"
    assert settings.dicom.host == "0.0.0.0"
    assert settings.dicom.port == 11112
    assert settings.dicom.allowed_callers == []
    assert settings.dicom.max_pdu_size == 262144
    assert settings.storage.data_dir == Path("./dicomnode-data")
    assert settings.storage.database_url is None
    assert settings.storage.min_free_mb == 1024
    assert settings.logging.format == "auto"
    assert settings.logging.level == "INFO"


def test_default_index_is_sqlite_inside_data_dir(tmp_path: Path) -> None:
    """Without a database URL the index is a SQLite file inside the data directory."""
    settings = load_settings()
    expected = (tmp_path / "dicomnode-data" / "index.sqlite3").resolve()
    assert settings.storage.effective_database_url() == f"sqlite:///{expected}"


def test_toml_file_via_option(tmp_path: Path) -> None:
    """A TOML file passed explicitly (``--config``) sets every section it names."""
    settings = load_settings(_write_toml(tmp_path, TOML))
    assert settings.dicom.ae_title == "FILENODE"
    assert settings.dicom.port == 12000
    assert settings.dicom.allowed_callers == [
        CallerRule(ae_title="PACS", host="10.0.0.5"),
        CallerRule(ae_title="MODALITY"),
    ]
    assert settings.storage.data_dir == Path("/srv/dicomnode")
    assert settings.storage.min_free_mb == 5
    assert settings.logging.format == "json"


def test_toml_file_via_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``DICOMNODE_CONFIG`` names the TOML file when no file is passed."""
    monkeypatch.setenv("DICOMNODE_CONFIG", str(_write_toml(tmp_path, TOML)))
    settings = load_settings()
    assert settings.dicom.ae_title == "FILENODE"
    assert settings.storage.min_free_mb == 5


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment variable wins over the file for its key only; the file's other keys stay."""
    monkeypatch.setenv("DICOMNODE_DICOM__PORT", "13000")
    monkeypatch.setenv("DICOMNODE_STORAGE__MIN_FREE_MB", "7")
    settings = load_settings(_write_toml(tmp_path, TOML))
    assert settings.dicom.port == 13000
    assert settings.storage.min_free_mb == 7
    assert settings.dicom.ae_title == "FILENODE"
    assert settings.storage.data_dir == Path("/srv/dicomnode")


def test_missing_config_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config file that does not exist is reported, naming where it was given: --config or
    DICOMNODE_CONFIG."""
    with pytest.raises(ConfigError, match=r"^--config: config file not found"):
        load_settings(tmp_path / "absent.toml")
    monkeypatch.setenv("DICOMNODE_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"^DICOMNODE_CONFIG: config file not found"):
        load_settings()


def test_unknown_key_in_file_is_an_error_named_in_the_file(tmp_path: Path) -> None:
    """A misspelt key in the TOML file is refused rather than ignored, named as the file's key (not as
    an environment variable nobody set)."""
    path = _write_toml(tmp_path, "[dicom]\nprot = 104\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value) == f"{path}: [dicom] prot: no such setting"
    bad = _write_toml(tmp_path, '[dicom]\nport = "x"\n')
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(bad))}: \[dicom\] port: Input should be a valid integer"
    ):
        load_settings(bad)


def test_a_broken_toml_file_is_named_with_its_line(tmp_path: Path) -> None:
    """TOML that does not parse names the file and where."""
    path = _write_toml(tmp_path, "[dicom\nport = 104\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid TOML: .*line 1"):
        load_settings(path)


def test_destinations_that_are_not_json_or_lack_a_field_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """DESTINATIONS that is not JSON says so and names the variable; a destination without a port
    names the item and the field."""
    monkeypatch.setenv("DICOMNODE_DELIVERY__DESTINATIONS", "PACS@10.0.0.5:104")
    with pytest.raises(ConfigError, match=r"^DICOMNODE_DELIVERY__DESTINATIONS: not valid JSON \(") as raised:
        load_settings()
    assert "EnvSettingsSource" not in str(raised.value)
    monkeypatch.setenv("DICOMNODE_DELIVERY__DESTINATIONS", '[{"ae_title": "PACS", "host": "10.0.0.5"}]')
    with pytest.raises(ConfigError) as missing:
        load_settings()
    assert str(missing.value) == "DICOMNODE_DELIVERY__DESTINATIONS[0].port: Field required"


def test_log_levels_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """``debug`` is as good as ``DEBUG``."""
    monkeypatch.setenv("DICOMNODE_LOGGING__LEVEL", "debug")
    monkeypatch.setenv("DICOMNODE_LOGGING__FORMAT", "JSON")
    logging = load_settings().logging
    assert (logging.level, logging.format) == ("DEBUG", "json")


def test_a_variable_that_is_no_setting_is_warned_about_with_the_likely_one() -> None:
    """DICOMNODE_DICOM_PORT (one underscore) is not silently ignored: a warning names the setting it
    was meant for."""
    assert unknown_variables(
        {
            "DICOMNODE_DICOM_PORT": "104",
            "DICOMNODE_DICOM__PORT": "104",
            "DICOMNODE_FAILPOINT": "x",
            "HOME": "/",
        }
    ) == [
        "DICOMNODE_DICOM_PORT is not a setting and is ignored (sections and keys join with __); "
        "did you mean DICOMNODE_DICOM__PORT?"
    ]
    result = CliRunner().invoke(
        app, ["check-config"], env={"DICOMNODE_DICOM_PORT": "104", "DICOMNODE_WEB__PORT": "0"}
    )
    assert "warning: DICOMNODE_DICOM_PORT is not a setting" in result.stderr


def test_check_config_runs_the_checks_serve_runs() -> None:
    """An unknown ONNX Runtime provider, which serve refuses, fails check-config too (one line, exit 2);
    so does a port another program holds."""
    result = CliRunner().invoke(
        app, ["check-config"], env={"DICOMNODE_INFERENCE__PROVIDERS": "CPU", "DICOMNODE_WEB__PORT": "0"}
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: DICOMNODE_INFERENCE__PROVIDERS: unknown ONNX Runtime provider CPU; this onnxruntime offers "
        + ", ".join(onnxruntime.get_available_providers())
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        held = CliRunner().invoke(
            app, ["check-config"],
            env={"DICOMNODE_DICOM__HOST": "127.0.0.1", "DICOMNODE_DICOM__PORT": str(port),
                 "DICOMNODE_WEB__PORT": "0"},
        )  # fmt: skip
    assert held.exit_code == 2
    assert held.stderr.splitlines() == [
        f"error: DICOMNODE_DICOM__PORT: port {port} on 127.0.0.1 is taken by another program; "
        "free it or pick another"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PACS", [CallerRule(ae_title="PACS")]),
        (
            "PACS, CT1@192.168.1.20 ,",
            [CallerRule(ae_title="PACS"), CallerRule(ae_title="CT1", host="192.168.1.20")],
        ),
        (
            '["PACS@10.0.0.5", "MR 1"]',
            [CallerRule(ae_title="PACS", host="10.0.0.5"), CallerRule(ae_title="MR 1")],
        ),
        ("", []),
    ],
)
def test_allowed_callers_parsing(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[CallerRule]
) -> None:
    """ALLOWED_CALLERS accepts ``AE`` and ``AE@host``, comma-separated or as a JSON list."""
    monkeypatch.setenv("DICOMNODE_DICOM__ALLOWED_CALLERS", value)
    assert load_settings().dicom.allowed_callers == expected


def test_caller_rule_allows_only_its_title_and_host() -> None:
    """A rule with a host admits its AE title from that address only; without one, from anywhere."""
    pinned = CallerRule.parse("PACS@10.0.0.5")
    anywhere = CallerRule.parse("PACS")
    assert pinned.allows("PACS", "10.0.0.5")
    assert not pinned.allows("PACS", "10.0.0.6")
    assert not pinned.allows("OTHER", "10.0.0.5")
    assert anywhere.allows("PACS ", "172.16.0.1")


def test_invalid_allowed_caller_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AE title longer than 16 characters in the allow-list is reported as that list's variable."""
    monkeypatch.setenv("DICOMNODE_DICOM__ALLOWED_CALLERS", "GOOD,AETITLEMUCHTOOLONG@10.0.0.1")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    lines = str(raised.value).splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("DICOMNODE_DICOM__ALLOWED_CALLERS[1].ae_title: ")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DICOMNODE_DICOM__PORT", "not-a-port"),
        ("DICOMNODE_DICOM__PORT", "70000"),
        ("DICOMNODE_STORAGE__MIN_FREE_MB", "-1"),
        ("DICOMNODE_LOGGING__FORMAT", "xml"),
        ("DICOMNODE_DICOM__AE_TITLE", "BACK\\SLASH"),
    ],
)
def test_check_config_bad_value_prints_one_line_and_exits_2(variable: str, value: str) -> None:
    """``dicomnode check-config`` with one bad value prints one line naming its variable, exit 2."""
    result = CliRunner().invoke(app, ["check-config"], env={variable: value})
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert variable in lines[0]


def test_check_config_prints_effective_settings(tmp_path: Path) -> None:
    """``dicomnode check-config --config FILE`` exits 0 and prints the merged settings as JSON."""
    config = str(_write_toml(tmp_path, TOML))
    port = free_port()
    result = CliRunner().invoke(
        app,
        ["check-config", "--config", config],
        env={"DICOMNODE_DICOM__PORT": str(port), "DICOMNODE_WEB__PORT": "0"},
    )
    assert result.exit_code == 0, result.stderr
    assert f'"port": {port}' in result.stdout
    assert '"ae_title": "FILENODE"' in result.stdout


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    """``serve`` with its web port taken exits 2 with one line naming the setting: no traceback, and
    nothing logged as listening before it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("DICOMNODE_")}
        env.update(
            DICOMNODE_STORAGE__DATA_DIR=str(tmp_path / "data"), DICOMNODE_DICOM__PORT=str(free_port()),
            DICOMNODE_WEB__HOST="127.0.0.1", DICOMNODE_WEB__PORT=str(port),
        )  # fmt: skip
        served = subprocess.run(
            [*dicomnode_command(), "serve"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert served.returncode == 2
    assert served.stderr.splitlines() == [
        f"error: DICOMNODE_WEB__PORT: port {port} on 127.0.0.1 is taken by another program; "
        "free it or pick another"
    ]
    assert served.stdout == ""


def test_every_setting_is_in_the_readme_table() -> None:
    """Each setting check-config prints has a row in README.md's table (alone, or as ``/ KEY`` in the
    row of its section)."""
    rows = [
        line
        for line in (REPO_ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `DICOMNODE_")
    ]
    missing = []
    for name in setting_variables(Settings):
        section, key = name.rsplit("__", 1)
        if not any(f"`{name}`" in row or (f"`{section}__" in row and f"`{key}`" in row) for row in rows):
            missing.append(name)
    assert missing == []
