"""Settings: defaults < TOML file < environment, and one-line errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.config import CallerRule, load_settings
from node.errors import ConfigError
from tests.support import clear_dicomnode_env


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


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    """A misspelt key in the TOML file is refused rather than ignored."""
    with pytest.raises(ConfigError, match="DICOMNODE_DICOM__PROT"):
        load_settings(_write_toml(tmp_path, "[dicom]\nprot = 104\n"))


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
    assert lines[0].startswith("DICOMNODE_DICOM__ALLOWED_CALLERS: ")


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
    result = CliRunner().invoke(
        app, ["check-config", "--config", config], env={"DICOMNODE_DICOM__PORT": "13000"}
    )
    assert result.exit_code == 0, result.stderr
    assert '"port": 13000' in result.stdout
    assert '"ae_title": "FILENODE"' in result.stdout
