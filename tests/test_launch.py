"""`hvdgan launch`: the command line composed for each launcher, its errors, that it runs the command and
passes its exit status on, and how it passes a stop on (stand-in launchers). Fast: nothing here starts ranks."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hvdgan.dist import launch as L
from hvdgan.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = "jobs/digits-demo.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def dry(*args, env=None):
    result = CliRunner().invoke(main, ["launch", "--dry-run", *args], env=env or {})
    return result, (shlex.split(result.output.strip().splitlines()[-1]) if result.exit_code == 0 else None)


def test_horovodrun_line():
    result, cmd = dry("--np", "2", DEMO, "--", "--max-steps", "10")
    assert result.exit_code == 0, result.output
    assert Path(cmd[0]).name == "horovodrun"
    assert cmd[1:5] == ["-np", "2", "-H", "localhost:2"]
    assert cmd[5:7] == ["env", "--block-signal=USR1,TERM,INT,HUP"]  # until hvdgan train has its handlers
    assert Path(cmd[7]).name == "hvdgan"
    assert cmd[8:] == ["train", "--job", DEMO, "--max-steps", "10"]


def test_horovodrun_controller_and_hosts():
    _, cmd = dry("--np", "4", "--gloo", "-H", "a:2,b:2", DEMO)
    assert cmd[1:6] == ["-np", "4", "--gloo", "-H", "a:2,b:2"]
    _, cmd = dry("--np", "2", "--mpi", DEMO)
    assert "--mpi" in cmd and "--gloo" not in cmd


def test_hvdgan_is_the_running_environments():
    """Every rank must run the install that launched it (the venv's console script when there is one)."""
    _, cmd = dry("--np", "2", DEMO)
    exe = cmd[cmd.index("train") - 1]
    venv_exe = Path(sys.executable).with_name("hvdgan")
    if venv_exe.exists():
        assert exe == str(venv_exe)
    assert L.train_argv("j.yaml", ["--x"])[-4:] == ["train", "--job", "j.yaml", "--x"]


def test_mpirun_line(monkeypatch):
    env = {"HOROVOD_FUSION_THRESHOLD": "0", "NCCL_DEBUG": "INFO", "HVDGAN_TRAIN_SEED": "3", "UNRELATED": "x"}
    result, cmd = dry("--np", "2", "--launcher", "mpirun", DEMO, env=env)
    assert result.exit_code == 0, result.output
    assert Path(cmd[0]).name == "mpirun"
    line = " ".join(cmd)
    assert "--bind-to none" in line and "--map-by slot" in line and "-np 2" in line
    exported = {cmd[i + 1] for i, a in enumerate(cmd) if a == "-x"}
    assert {"HOROVOD_FUSION_THRESHOLD", "NCCL_DEBUG", "HVDGAN_TRAIN_SEED", "PATH"} <= exported
    assert "UNRELATED" not in exported
    assert ("--allow-run-as-root" in cmd) == (os.geteuid() == 0)
    assert cmd[cmd.index("train"):] == ["train", "--job", DEMO]


def test_mpirun_allow_run_as_root_only_as_root(monkeypatch):
    monkeypatch.setattr(L.os, "geteuid", lambda: 1000)
    assert "--allow-run-as-root" not in L.compose(2, DEMO, launcher="mpirun", env={})
    monkeypatch.setattr(L.os, "geteuid", lambda: 0)
    assert "--allow-run-as-root" in L.compose(2, DEMO, launcher="mpirun", env={})


def test_mpirun_hosts_and_hostfile(tmp_path):
    cmd = L.compose(4, DEMO, launcher="mpirun", hosts="a:2,b:2", env={})
    assert cmd[cmd.index("-H") + 1] == "a:2,b:2" and "--oversubscribe" not in cmd
    hf = tmp_path / "hosts"
    hf.write_text("a slots=2\nb slots=2\n")
    cmd = L.compose(4, DEMO, launcher="mpirun", hostfile=str(hf), env={})
    assert cmd[cmd.index("--hostfile") + 1] == str(hf)


def test_srun_line(tmp_path):
    result, cmd = dry("--np", "2", "--launcher", "srun", DEMO, "--", "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert cmd[:3] == ["srun", "--mpi=pmix", "--ntasks=2"]
    assert cmd[cmd.index("train"):] == ["train", "--job", DEMO, "--resume", "auto"]
    assert "--nodelist=a,b" in L.compose(4, DEMO, launcher="srun", hosts="a:2,b:2")
    hf = tmp_path / "hosts"
    hf.write_text("# nodes\na slots=2\nb:2\n")
    assert "--nodelist=a,b" in L.compose(4, DEMO, launcher="srun", hostfile=str(hf))


@pytest.mark.parametrize("np_", ["0", "-1"])
def test_bad_np(np_):
    result = CliRunner().invoke(main, ["launch", "--dry-run", "--np", np_, DEMO])
    assert result.exit_code == 2
    assert "--np" in result.output and np_ in result.output


def test_np_required():
    result = CliRunner().invoke(main, ["launch", "--dry-run", DEMO])
    assert result.exit_code == 2 and "--np" in result.output


def test_missing_job_file_is_named():
    result = CliRunner().invoke(main, ["launch", "--dry-run", "--np", "2", "jobs/no-such-job.yaml"])
    assert result.exit_code != 0
    assert "jobs/no-such-job.yaml" in result.output and "not found" in result.output


def test_bad_job_file_is_named(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("data: data/digits\nbatch_sise: 64\n")
    result = CliRunner().invoke(main, ["launch", "--dry-run", "--np", "2", str(job)])
    assert result.exit_code != 0
    assert str(job) in result.output and "batch_sise" in result.output


def test_gloo_needs_horovodrun():
    result = CliRunner().invoke(main, ["launch", "--dry-run", "--np", "2", "--launcher", "mpirun", "--gloo", DEMO])
    assert result.exit_code == 2 and "--gloo" in result.output


def test_unknown_launcher():
    result = CliRunner().invoke(main, ["launch", "--dry-run", "--np", "2", "--launcher", "qsub", DEMO])
    assert result.exit_code == 2 and "qsub" in result.output


def _fake_launcher(tmp_path, code):
    """A stand-in `srun` on PATH that records its arguments and exits with `code`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "srun"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/args"\nexit {code}\n')
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("code", [0, 3])
def test_runs_the_command_and_passes_its_exit_status(tmp_path, code):
    env = _fake_launcher(tmp_path, code)
    proc = subprocess.run([sys.executable, "-c", "from hvdgan.cli import main; main()", "launch", "--np", "2",
                           "--launcher", "srun", DEMO, "--", "--max-steps", "5"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == code, proc.stderr
    printed = shlex.split(proc.stdout.strip().splitlines()[-1])
    args = (tmp_path / "args").read_text().split("\n")[:-1]
    assert printed[1:] == args  # what was printed is what ran
    assert args[:2] == ["--mpi=pmix", "--ntasks=2"] and args[-5:] == ["train", "--job", DEMO, "--max-steps", "5"]


def test_launcher_not_found(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no srun anywhere
    proc = subprocess.run([sys.executable, "-c", "from hvdgan.cli import main; main()", "launch", "--np", "2",
                           "--launcher", "srun", DEMO], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode != 0
    assert "cannot start srun" in proc.stderr


def test_launch_help_lists_the_launchers():
    result = CliRunner().invoke(main, ["launch", "--help"])
    assert result.exit_code == 0
    for word in ("horovodrun", "mpirun", "srun", "--dry-run", "--hostfile", "--gloo"):
        assert word in result.output


# ------------------------------------------------------------------------------------------- job files
JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def test_the_shipped_job_files_are_there():
    assert {p.name for p in JOBS} >= {"digits-demo.yaml", "cifar10-dcgan64.yaml", "cifar10-dcgan32.yaml"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_loads_and_validates(path):
    from hvdgan.config import build, load_job_file

    values = load_job_file(path)
    cfg = build(values, str(path))
    assert cfg.dataset.data and cfg.output.out.startswith("runs/")
    # an override on top of the file (what a command-line option does) still validates
    assert build({**values, "max_steps": 5}, str(path)).schedule.max_steps == 5


def test_cifar10_dcgan64_is_the_seed_setting():
    from hvdgan.config import build, load_job_file

    cfg = build(load_job_file(REPO / "jobs/cifar10-dcgan64.yaml")).flat()
    keys = ("image_size", "batch_size", "lr_g", "lr_d", "beta1", "beta2", "loss", "epochs")
    assert tuple(cfg[k] for k in keys) == (64, 64, 2e-4, 2e-4, 0.5, 0.999, "bce", 25)
    assert cfg["data"] == "data/cifar10-64"


def test_digits_demo_is_small():
    from hvdgan.config import build, load_job_file

    cfg = build(load_job_file(REPO / DEMO)).flat()
    assert (cfg["data"], cfg["image_size"]) == ("data/digits", 32)
    assert cfg["max_steps"] and cfg["checkpoint_every"] < cfg["max_steps"]
    # minutes on 2 CPU ranks: at most 128k images through D per rank (5,500 steps x 8 now: 44k)
    assert cfg["max_steps"] * cfg["batch_size"] * cfg["d_steps"] <= 2000 * 64


# ------------------------------------------------------------------ mpirun's MCA default, network interface
def _mca(cmd):
    return [(cmd[i + 1], cmd[i + 2]) for i, a in enumerate(cmd) if a == "-mca"]


def test_mpirun_mca_is_a_default_a_site_can_change():
    assert _mca(L.compose(2, DEMO, launcher="mpirun", env={})) == [("pml", "ob1"), ("btl", "^openib")]
    assert _mca(L.compose(2, DEMO, launcher="mpirun", env={"HVDGAN_MPIRUN_MCA": "pml=ucx osc=ucx"})) == \
        [("pml", "ucx"), ("osc", "ucx")]
    assert _mca(L.compose(2, DEMO, launcher="mpirun", env={"HVDGAN_MPIRUN_MCA": ""})) == []
    result, cmd = dry("--np", "2", "--launcher", "mpirun", "--mca", "pml=ucx", "--mca", "btl=self,vader", DEMO,
                      env={"HVDGAN_MPIRUN_MCA": "pml=ob1"})
    assert result.exit_code == 0, result.output
    assert _mca(cmd) == [("pml", "ucx"), ("btl", "self,vader")]  # --mca replaces the environment's default


def test_bad_mca_is_named():
    result, _ = dry("--np", "2", "--launcher", "mpirun", "--mca", "pml", DEMO)
    assert result.exit_code == 2 and "--mca" in result.output and "'pml'" in result.output
    result, _ = dry("--np", "2", "--launcher", "mpirun", DEMO, env={"HVDGAN_MPIRUN_MCA": "pml=ob1 =x"})
    assert result.exit_code == 2 and "HVDGAN_MPIRUN_MCA" in result.output
    result, _ = dry("--np", "2", "--mca", "pml=ucx", DEMO)
    assert result.exit_code == 2 and "--mca is mpirun's" in result.output


def test_network_interface_per_launcher():
    _, cmd = dry("--np", "4", "-H", "a:2,b:2", "--iface", "ib0", DEMO)
    assert cmd[cmd.index("--network-interface") + 1] == "ib0"
    _, cmd = dry("--np", "4", "-H", "a:2,b:2", "--launcher", "mpirun", DEMO, env={"HVDGAN_NET_IFACE": "eth1"})
    assert ("btl_tcp_if_include", "eth1") in _mca(cmd) and ("oob_tcp_if_include", "eth1") in _mca(cmd)
    assert "NCCL_SOCKET_IFNAME=eth1" in cmd
    _, cmd = dry("--np", "4", "--launcher", "srun", "--iface", "eth1", DEMO)
    export = next(a for a in cmd if a.startswith("--export="))
    assert export.split(",") == ["--export=ALL", "OMPI_MCA_btl_tcp_if_include=eth1", "NCCL_SOCKET_IFNAME=eth1",
                                 "HOROVOD_GLOO_IFACE=eth1"]
    assert cmd.index(export) < cmd.index("train")
    _, cmd = dry("--np", "2", DEMO)
    assert "--network-interface" not in cmd  # no interface given: the launcher chooses


def test_horovodrun_hostfile_becomes_hosts(tmp_path):
    """horovodrun's own hostfile parser fails on comments and blank lines: launch passes -H instead."""
    hf = tmp_path / "hosts"
    hf.write_text("# the nodes\nnode1 slots=2\n\nnode2:2   # second\nnode3\n")
    result, cmd = dry("--np", "5", "--hostfile", str(hf), DEMO)
    assert result.exit_code == 0, result.output
    assert cmd[cmd.index("-H") + 1] == "node1:2,node2:2,node3:1" and "--hostfile" not in cmd
    hf.write_text("node1 slots=two\n")
    result, _ = dry("--np", "2", "--hostfile", str(hf), DEMO)
    assert result.exit_code == 2 and str(hf) in result.output and "line 1" in result.output


# ------------------------------------------------------------------ the supervisor (hvdgan/dist/supervise.py)
# Stand-in launchers: each records the signal it got and exits like the real one would. The real launchers,
# with real ranks, are stopped the same way in tests/test_faults.py.
STAND_IN = """#!{python}
import json, os, signal, sys, time
got = []
for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda n, f: got.append(n))
open(sys.argv[1] + ".pid", "w").write(str(os.getpid()))
while not got:
    time.sleep(0.02)
open(sys.argv[1] + ".got", "w").write(signal.Signals(got[0]).name)
if os.environ.get("PREEMPTED"):  # what rank 0 writes when the ranks stopped on a signal
    open(os.path.join(sys.argv[1], "result.json"), "w").write(json.dumps({{"status": "preempted", "step": 7}}))
sys.exit(1)  # as horovodrun does when its ranks exit 75
"""


def _supervised(tmp_path, name, preempted=True):
    """`supervise([NAME, OUT], OUT)` in a process of its own, with NAME a stand-in launcher."""
    fake = tmp_path / name
    fake.write_text(STAND_IN.format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "run"
    out.mkdir()
    code = f"import sys; from hvdgan.dist.supervise import supervise; sys.exit(supervise({[str(fake), str(out)]!r}, {str(out)!r}))"
    env = dict(os.environ, PREEMPTED="1" if preempted else "")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    pid_file = Path(f"{out}.pid")
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.02)
    return proc, out, int(pid_file.read_text())


@pytest.mark.parametrize("launcher,sig,passed", [("mpirun", "SIGTERM", "SIGUSR1"), ("srun", "SIGHUP", "SIGUSR1"),
                                                 ("horovodrun", "SIGINT", "SIGTERM")])
def test_a_stop_becomes_the_launchers_gentle_stop_and_exit_75(tmp_path, launcher, sig, passed):
    """mpirun and srun forward USR1 to every rank (a TERM would kill them soon after); horovodrun --gloo
    passes its TERM on. The launcher's 1 becomes 75 because the run says it stopped on a signal."""
    proc, out, _ = _supervised(tmp_path, launcher)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=30)
    assert Path(f"{out}.got").read_text() == passed
    assert proc.returncode == 75, err
    assert f"{sig}: every rank stops after its step, with a checkpoint ({passed} to {launcher})" in err
    assert "the run stopped at step 7" in err and "exit status 75" in err


def test_a_failure_keeps_the_launchers_status(tmp_path):
    proc, out, _ = _supervised(tmp_path, "mpirun", preempted=False)
    (out / "result.json").write_text('{"status": "preempted", "step": 3}')  # an earlier launch's: not this one's
    os.utime(out / "result.json", (time.time() - 3600,) * 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err


def test_the_launcher_dies_with_hvdgan_launch(tmp_path):
    """SIGKILL to `hvdgan launch`: its launcher goes too (and the launcher's ranks with it: tests/test_faults.py)."""
    proc, out, pid = _supervised(tmp_path, "mpirun")
    proc.kill()
    proc.wait()
    try:
        for _ in range(250):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the launcher outlived hvdgan launch by 5 s")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_launcher_that_dies_of_the_stop_while_starting_is_a_stop(tmp_path):
    """horovodrun dies of a TERM before it has its handler, which is before any rank exists: nothing was
    lost, so the status is 75 (resume), not 143."""
    fake = tmp_path / "horovodrun"
    fake.write_text(f"#!{sys.executable}\nimport os, sys, time\nopen(sys.argv[1], 'w').write('up')\ntime.sleep(60)\n")
    fake.chmod(0o755)
    up = tmp_path / "up"
    code = f"import sys; from hvdgan.dist.supervise import supervise; sys.exit(supervise({[str(fake), str(up)]!r}, None))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    for _ in range(500):
        if up.exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "the run stopped before any rank started (the launcher's status: 143)" in err
