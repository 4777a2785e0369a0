from pathlib import Path

import pytest

from hpc_bridge.config import ConfigError, load_config

from ..conftest import ROOT


def test_dev_config_resolves_relative_paths_against_its_file() -> None:
    cfg = load_config(ROOT / "site_config" / "dev.yaml")
    assert cfg.database == ROOT / "var" / "hpc-bridge.sqlite"
    assert cfg.apptainer.binary.is_absolute()


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "site_config" / "example.yaml")
    assert cfg.service.environment == "prod"


def test_bare_binary_name_is_left_for_path_lookup(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("auth: {mode: none}\napptainer:\n  binary: apptainer\n  image_dirs: [img]\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.apptainer.binary == Path("apptainer")
    assert cfg.apptainer.image_dirs == [tmp_path / "img"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server: {port: 0}\n", "server.port"),
        ("slurm: {partitions: debug, unknown_key: 1}\n", "slurm.partitions"),
        ("slurm: {unknown_key: 1}\n", "slurm.unknown_key"),
        ("slurm: {submit_as: no-such-user-hpcb}\n", "does not exist"),
        ("[1, 2]\n", "mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(("section", "value"), [("storage: {work_root: /scratch/my work}", "storage.work_root"),
                                              ("storage: {work_root: /}", "storage.work_root"),
                                              ("crypt4gh: {private_tmp: '/tmp/$x'}", "crypt4gh.private_tmp")])
def test_work_root_must_be_plain(tmp_path: Path, section: str, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"auth: {{mode: none}}\n{section}\n")
    with pytest.raises(ConfigError, match=value):
        load_config(path)


def test_data_roots_may_not_overlap_the_work_root_or_image_cache(tmp_path: Path) -> None:
    for storage, apptainer in (
        (f"{{work_root: {tmp_path}/scratch/work, data_roots: [{tmp_path}/scratch]}}", "{}"),
        (f"{{work_root: {tmp_path}/work, data_roots: [{tmp_path}/work/sub]}}", "{}"),
        (f"{{work_root: {tmp_path}/work, data_roots: [{tmp_path}/data]}}", f"{{cache_dir: {tmp_path}/data/img}}"),
    ):
        path = tmp_path / "site.yaml"
        path.write_text(f"auth: {{mode: none}}\nstorage: {storage}\napptainer: {apptainer}\n")
        with pytest.raises(ConfigError, match="overlap"):
            load_config(path)


def test_auth_must_be_chosen_explicitly(tmp_path: Path) -> None:
    """No silent default: a site without an auth section would otherwise run open or not at all."""
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 8000}\n")
    with pytest.raises(ConfigError, match="auth: Field required"):
        load_config(path)


def test_auth_key_files_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("auth:\n  issuers:\n    - {issuer: 'https://id.example.org', jwks_file: keys/jwks.json}\n"
                    "storage: {one_shared_space: true}\n")
    cfg = load_config(path)
    assert cfg.auth.issuers[0].jwks_file == tmp_path / "keys" / "jwks.json"


def test_per_user_limits_override_only_what_they_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("auth: {mode: none}\nlimits:\n  max_cpu_cores: 4\n  max_active_tasks: 10\n"
                    "  users:\n    'https://id.example.org#alice': {max_active_tasks: 100}\n")
    limits = load_config(path).limits
    assert limits.for_owner("https://id.example.org#alice").max_active_tasks == 100
    assert limits.for_owner("https://id.example.org#alice").max_cpu_cores == 4
    assert limits.for_owner("https://id.example.org#bob").max_active_tasks == 10


def _limits_config(tmp_path: Path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text("auth: {mode: none}\n" + text)
    return load_config(path)


def test_the_server_reads_the_site_request_limit_or_the_largest_default(tmp_path: Path) -> None:
    assert _limits_config(tmp_path, "limits: {max_request_bytes: 4096}\n").server_request_bytes == 4096
    default = _limits_config(tmp_path, "")
    assert default.server_request_bytes == default.wes_request_bytes == (256 + 8 + 1) * 1024**2
    small_wes = _limits_config(tmp_path, "wes: {max_attachments_bytes: 1, max_params_bytes: 1024}\n")
    assert small_wes.server_request_bytes == 16 * 1024**2  # a tesTask's default


def test_a_user_request_limit_above_what_the_server_reads_is_refused(tmp_path: Path) -> None:
    user = "  users:\n    'https://id.example.org#alice': {max_request_bytes: %d}\n"
    assert _limits_config(tmp_path, "limits:\n  max_request_bytes: 8192\n" + user % 8192)
    with pytest.raises(ConfigError, match=r"limits.users\[https://id.example.org#alice\].max_request_bytes \(8193\)"):
        _limits_config(tmp_path, "limits:\n  max_request_bytes: 8192\n" + user % 8193)


def test_caps_keep_a_task_rows_log_tails_bounded(tmp_path: Path) -> None:
    assert _limits_config(tmp_path, "limits: {caps: {max_executors: 128}}\n").limits.caps.max_executors == 128
    with pytest.raises(ConfigError, match="log_tail_bytes is 16908288 bytes"):
        _limits_config(tmp_path, "limits: {caps: {max_executors: 129}}\n")
    with pytest.raises(ConfigError, match="log_tail_bytes"):
        _limits_config(tmp_path, "storage: {log_tail_bytes: 16777216}\n")
    with pytest.raises(ConfigError, match="max_tags"):
        _limits_config(tmp_path, "limits: {caps: {max_tags: 501}}\n")  # filters past SQLite's expression depth
