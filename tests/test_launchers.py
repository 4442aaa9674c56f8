"""The cluster launchers as a user on an Ascend server meets them, checked on CPU: which device each
process asks for, which ranks a rank-table server starts, the msrun command of a multi-node job, paths
relative to the caller's directory and one log directory per launch. The launch scripts run for real;
only the last hop (msrun itself, or train.py under a rank table) is a recording stub, because those
need Ascend devices."""
import os
import json
import stat
import subprocess
import sys
import time

import pytest

import mindspore as ms

from src.config import ARGS_CWD_ENV, PATH_KEYS, all_keys, load_config
from src.utils import runtime
from src.utils.rank_table import RankTableError, local_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart_cpu.yaml")


# ------------------------------------------------------------------------------------------------
# device id
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def set_device_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(ms, "set_device", lambda target, device_id=None: calls.append((target, device_id)))
    for key in ("RANK_TABLE_FILE", "DEVICE_ID", "MS_WORKER_NUM", "MS_NODE_ID", "MS_ROLE"):
        monkeypatch.delenv(key, raising=False)
    return calls


def _setup(overrides=()):
    cfg = load_config(QUICKSTART, list(overrides))
    return runtime.setup_context(cfg)


def test_unset_device_id_lets_mindspore_choose_standalone_and_under_msrun(set_device_calls, monkeypatch):
    _setup()  # standalone: MindSpore takes None as device 0
    monkeypatch.setenv("MS_WORKER_NUM", "8")  # what msrun exports to each of its workers
    monkeypatch.setenv("MS_NODE_ID", "3")
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    _setup()  # under msrun: None = negotiate a free device per worker (an explicit 0 sent all 8 to NPU 0)
    assert set_device_calls == [("CPU", None), ("CPU", None)]


def test_rank_table_device_and_explicit_device_id(set_device_calls, monkeypatch):
    monkeypatch.setenv("RANK_TABLE_FILE", "/tmp/hccl.json")
    monkeypatch.setenv("DEVICE_ID", "5")
    _setup()
    _setup(["--device_id=3"])  # an explicit value wins over everything
    assert set_device_calls == [("CPU", 5), ("CPU", 3)]


def test_default_config_leaves_device_id_unset():
    assert load_config(os.path.join(ROOT, "default_config.yaml")).device_id is None


# ------------------------------------------------------------------------------------------------
# rank table
# ------------------------------------------------------------------------------------------------
def _rank_table(path, servers=2, devices=8):
    table = {"version": "1.0", "server_count": str(servers), "status": "completed", "server_list": [
        {"server_id": f"10.0.0.{s + 1}", "host_nic_ip": "reserve", "device": [
            {"device_id": str(d), "device_ip": f"192.168.{s}.{d}", "rank_id": str(s * devices + d)}
            for d in range(devices)]} for s in range(servers)]}
    with open(path, "w") as f:
        json.dump(table, f)
    return str(path)


def test_rank_table_selects_this_server_by_id_position_or_address(tmp_path):
    path = _rank_table(tmp_path / "hccl.json")
    expected = (16, [(d, 8 + d) for d in range(8)])
    assert local_ranks(path, server_id="10.0.0.2") == expected
    assert local_ranks(path, server_id="1") == expected
    assert local_ranks(path, addresses={"node-b", "10.0.0.2"}) == expected
    with pytest.raises(RankTableError, match="SERVER_ID"):
        local_ranks(path, addresses={"10.9.9.9"})  # no match: never guess
    with pytest.raises(RankTableError, match="10.0.0.1, 10.0.0.2"):
        local_ranks(path, server_id="10.0.0.7")
    one = _rank_table(tmp_path / "one.json", servers=1, devices=4)
    assert local_ranks(one, addresses=set()) == (4, [(d, d) for d in range(4)])


def _stub(path, body):
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _stub_python(bin_dir, record_dir):
    """A `python` that records train.py invocations (env + argv) and runs everything else for real."""
    bin_dir.mkdir(exist_ok=True)
    return _stub(bin_dir / "python", f"""
if [ "${{1:-}}" = train.py ]; then
  shift
  {{ echo "DEVICE_ID=${{DEVICE_ID:-}} RANK_ID=${{RANK_ID:-}} RANK_SIZE=${{RANK_SIZE:-}}"
     echo "HCCL_CONNECT_TIMEOUT=${{HCCL_CONNECT_TIMEOUT:-}} $(grep Cpus_allowed_list /proc/self/status | tr -d '\\t')"
     printf '%s\\n' "$@"; }} \\
    > "{record_dir}/train_${{RANK_ID:-x}}.txt"
  exit 0
fi
exec {sys.executable} "$@"
""")


def test_rank_table_script_starts_only_this_servers_ranks(tmp_path):
    table = _rank_table(tmp_path / "hccl.json")
    record = tmp_path / "record"
    record.mkdir()
    python = _stub_python(tmp_path / "bin", record)
    env = dict(os.environ, PYTHON_BIN=python, SERVER_ID="10.0.0.2", LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.run(["bash", "scripts/run_distribute_train_ranktable.sh", table, QUICKSTART,
                           f"--output_dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "started 8 of 16 ranks" in proc.stdout
    started = sorted(os.listdir(record))
    assert started == sorted(f"train_{r}.txt" for r in range(8, 16))  # this server's ranks, no others
    for rank in range(8, 16):
        lines = (record / f"train_{rank}.txt").read_text().splitlines()
        assert lines[0] == f"DEVICE_ID={rank - 8} RANK_ID={rank} RANK_SIZE=16"
        assert f"--device_id={rank - 8}" in lines


def test_rank_table_script_binds_cores_and_sets_the_hccl_timeout(tmp_path):
    """Finding 10 of issue 22: each rank runs on its own share of the cores (taskset), HCCL_CONNECT_TIMEOUT is
    exported (600 unless the user set one), and BIND_CORE=False turns the binding off."""
    table = _rank_table(tmp_path / "hccl.json", servers=1, devices=2)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores to give each of 2 ranks its own")
    per_rank = len(cores) // 2
    for bind, timeout in (("True", None), ("False", "1200")):
        record = tmp_path / f"record_{bind}"
        record.mkdir()
        python = _stub_python(tmp_path / f"bin_{bind}", record)
        env = dict(os.environ, PYTHON_BIN=python, LOG_DIR=str(tmp_path / "logs"), BIND_CORE=bind)
        env.pop("HCCL_CONNECT_TIMEOUT", None)
        if timeout:
            env["HCCL_CONNECT_TIMEOUT"] = timeout
        proc = subprocess.run(["bash", "scripts/run_distribute_train_ranktable.sh", table, QUICKSTART,
                               f"--output_dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        for rank in range(2):
            line = (record / f"train_{rank}.txt").read_text().splitlines()[1]
            assert line.startswith(f"HCCL_CONNECT_TIMEOUT={timeout or 600} "), line
            allowed = line.split("Cpus_allowed_list:")[1]
            share = cores[rank * per_rank:(rank + 1) * per_rank]
            if bind == "True":
                assert _cpu_list(allowed) == share, (allowed, share)
            else:
                assert _cpu_list(allowed) == cores


def _cpu_list(text):
    """'0-2,5' -> [0, 1, 2, 5]"""
    out = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def test_rank_table_script_refuses_an_unknown_server(tmp_path):
    table = _rank_table(tmp_path / "hccl.json")
    python = _stub_python(tmp_path / "bin", tmp_path)
    proc = subprocess.run(["bash", "scripts/run_distribute_train_ranktable.sh", table, QUICKSTART], cwd=ROOT,
                          env=dict(os.environ, PYTHON_BIN=python, SERVER_ID="10.0.0.9"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "SERVER_ID=10.0.0.9 is not in" in proc.stderr and not list(tmp_path.glob("train_*.txt"))


# ------------------------------------------------------------------------------------------------
# msrun: multi-node command, relative paths, per-launch logs
# ------------------------------------------------------------------------------------------------
def _msrun(tmp_path, args, cwd=ROOT, **env):
    record = tmp_path / f"msrun_{time.monotonic_ns()}.txt"
    msrun = _stub(tmp_path / "msrun", f'{{ echo "ARGS_CWD=${ARGS_CWD_ENV}"; printf "%s\\n" "$@"; }} > "$RECORD"\n')
    full_env = dict(os.environ, PYTHON_BIN=sys.executable, MSRUN=msrun, RECORD=str(record), **env)
    full_env.pop(ARGS_CWD_ENV, None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_distribute_train.sh"), *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)
    lines = record.read_text().splitlines() if record.exists() else []
    return proc, lines


def test_multi_node_msrun_command(tmp_path):
    proc, lines = _msrun(tmp_path, ["8", QUICKSTART, f"--output_dir={tmp_path / 'run'}"],
                         NODE_NUM="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="9000")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--worker_num=16", "--local_worker_num=8", "--node_rank=1", "--master_addr=10.0.0.1",
                 "--master_port=9000", "--bind_core=True", "--distribute=true"):
        assert flag in lines, (flag, lines)
    proc, _ = _msrun(tmp_path, ["8", QUICKSTART], NODE_NUM="2", NODE_RANK="1")
    assert proc.returncode == 2 and "MASTER_ADDR" in proc.stderr
    proc, _ = _msrun(tmp_path, ["8", QUICKSTART], NODE_NUM="2", NODE_RANK="2", MASTER_ADDR="x")
    assert proc.returncode == 2 and "NODE_RANK=2 must be below NODE_NUM=2" in proc.stderr


def test_paths_relative_to_the_callers_directory(tmp_path):
    """`cd scripts && bash run_distribute_train.sh 2 ../configs/... --data_root=../data/x` (the model
    zoo habit): the config path reaches msrun absolute, and the relative --data_root resolves against
    scripts/, not against the repository root train.py runs in."""
    scripts = os.path.join(ROOT, "scripts")
    proc, lines = _msrun(tmp_path, ["2", "../configs/quickstart_cpu.yaml", "--data_root=../data/elsewhere",
                                    f"--output_dir={tmp_path / 'run'}"], cwd=scripts)
    assert proc.returncode == 0, proc.stderr
    assert lines[0] == f"ARGS_CWD={scripts}"
    config_path = lines[lines.index("--config_path") + 1]
    assert os.path.isabs(config_path) and os.path.samefile(config_path, QUICKSTART)
    rest = lines[lines.index("--distribute=true") + 1:]
    old = os.environ.get(ARGS_CWD_ENV)
    os.environ[ARGS_CWD_ENV] = scripts  # what train.py sees under the launcher
    try:
        cfg = load_config(config_path, rest)
    finally:
        os.environ.pop(ARGS_CWD_ENV) if old is None else os.environ.__setitem__(ARGS_CWD_ENV, old)
    assert cfg.data.data_root == os.path.join(ROOT, "data", "elsewhere")
    assert load_config(config_path, rest).data.data_root == "../data/elsewhere"  # python train.py run by hand


def test_every_launch_gets_its_own_log_directory(tmp_path):
    out = tmp_path / "run"
    dirs = []
    for _ in range(2):
        proc, lines = _msrun(tmp_path, ["2", QUICKSTART, f"--output_dir={out}"])
        assert proc.returncode == 0, proc.stderr
        dirs.append(next(a.split("=", 1)[1] for a in lines if a.startswith("--log_dir=")))
        time.sleep(1.1)  # the directory is named to the second
    assert dirs[0] != dirs[1]
    assert all(os.path.dirname(d) == str(out / "msrun_logs") and os.path.isdir(d) for d in dirs)


def test_path_keys_are_config_keys():
    keys = all_keys()
    assert all(keys[k] is str for k in PATH_KEYS)
    assert load_config(QUICKSTART, ["--ckpt_file=/x/best.ckpt"]).checkpoint_path == "/x/best.ckpt"


# ------------------------------------------------------------------------------------------------
# environment set-up (scripts/_venv.sh)
# ------------------------------------------------------------------------------------------------
def test_venv_setup_on_a_small_disk_fails_at_once_naming_the_space(tmp_path):
    """A real 8 MB tmpfs holds the environment (an existing venv whose install stamp is missing): the set-up
    stops before pip with the space it needs and has, and how to put the environment elsewhere."""
    import shutil

    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("no mount namespace here (unshare -rm) to mount a small filesystem")
    venv = tmp_path / "venv"
    venv.mkdir()
    script = (f'mount -t tmpfs -o size=8m tmpfs "{venv}" && mkdir "{venv}/bin" && '
              f'ln -s "{sys.executable}" "{venv}/bin/python" && '
              f'COUPALIGN_VENV="{venv}" bash -c \'source "{ROOT}/scripts/_venv.sh" requirements.txt '
              f'requirements-dev.txt; echo "not reached"\'')
    started = time.time()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not reached" not in proc.stdout and "installing" not in proc.stdout
    assert "needs about 9 GB free" in proc.stderr and "the disk has 0 GB" in proc.stderr
    assert "COUPALIGN_VENV" in proc.stderr
    assert time.time() - started < 30  # before pip, not minutes into it
