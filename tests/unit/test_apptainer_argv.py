import pytest

from hpc_bridge.containers.apptainer import Bind, UnsafeValue, exec_argv


def test_exec_argv_keeps_every_value_one_argument() -> None:
    argv = exec_argv("/opt/apptainer", "/img/a.sif", ["echo", "a b", "$(x)"],
                     binds=[Bind("/data/in", "/in", read_only=True)],
                     env={"GREETING": "hi, there=1"}, workdir="/in", gpu=True)
    assert argv == ["env", "APPTAINERENV_GREETING=hi, there=1", "/opt/apptainer", "--quiet", "exec",
                    "--containall", "--cleanenv", "--nv", "--bind", "/data/in:/in:ro", "--pwd", "/in",
                    "/img/a.sif", "echo", "a b", "$(x)"]


@pytest.mark.parametrize("bind", [Bind("/a,b", "/x"), Bind("/a", "/x:y"), Bind("rel", "/x"),
                                  Bind("/a\n", "/x")])
def test_unbindable_paths_are_refused(bind: Bind) -> None:
    with pytest.raises(UnsafeValue):
        exec_argv("apptainer", "i.sif", ["true"], binds=[bind])


@pytest.mark.parametrize("env", [{"A-B": "1"}, {"1A": "1"}, {"A;B": "1"}, {"A": "x\0y"}])
def test_bad_environment_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(UnsafeValue):
        exec_argv("apptainer", "i.sif", ["true"], env=env)


def test_empty_command_is_refused() -> None:
    with pytest.raises(UnsafeValue, match="empty"):
        exec_argv("apptainer", "i.sif", [])


def test_env_values_are_escaped_for_apptainers_own_evaluation() -> None:
    argv = exec_argv("apptainer", "i.sif", ["true"], env={"X": 'a $(id) `id` \\ "q"'})
    assert argv[1] == 'APPTAINERENV_X=a \\$(id) \\`id\\` \\\\ "q"'
    with pytest.raises(UnsafeValue, match="carriage"):
        exec_argv("apptainer", "i.sif", ["true"], env={"X": "a\r\n"})
