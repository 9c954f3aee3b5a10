"""Fault tests: what a user sees when data, config, checkpoints, the process or a rank go wrong.

Every case runs a real tool file as ``__main__`` in its own process (its own argv, stdout, stderr and
exit status), so the exit code and stderr asserted here are what a user gets. To pay torch's import
(3-8 s of CPU) once rather than per case, runs are forked from a pre-imported interpreter
(``ZYGOTE``, two of them, so independent cases run two at a time);
``test_zygote_run_equals_a_plain_python_run`` checks that this gives the same exit code and stderr
as ``python tools/train_val.py``, and the 2-process case runs under a real ``torchrun``.
Faults that need timing (a kill mid-epoch or mid-write, a rank failing) go through
``FAULT_WRAPPER``: a tiny script that patches one function of the child, then runs
``tools/train_val.py`` as ``__main__``. The catalogue is docs/RELIABILITY.md.
"""
import csv
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.test_train_val import _free_port, make_config
from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for one tool run on a loaded 2-core machine

ZYGOTE = r"""
# Test-only fork server: import the tools once, then per request fork a child that runs a script as
# __main__ (its argv, env, stdout/stderr files). Replies per request: the child's pid, its exit code.
import json, os, runpy, sys
sys.path.insert(0, os.environ["UNIAD_TEST_ROOT"])
import tools.train_val  # noqa: F401  torch, torchvision, timm: the expensive part
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child becomes the tool; Python's own exit handling gives its status
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        os.environ.update(request["env"])
        sys.argv = [request["script"], *request["args"]]
        sys.path[0] = os.path.dirname(request["script"])
        runpy.run_path(request["script"], run_name="__main__")
        sys.exit(0)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""

FAULT_WRAPPER = r'''
"""Test-only: patch one function of tools/train_val.py's process, then run it as __main__."""
import io, os, runpy, sys, time
ROOT = os.environ["UNIAD_TEST_ROOT"]
sys.path.insert(0, ROOT)
MODE, MARKER = os.environ["UNIAD_TEST_FAULT"], os.environ.get("UNIAD_TEST_MARKER", "")
PID_DIR = os.environ.get("UNIAD_TEST_PID_DIR")
if PID_DIR:
    with open(os.path.join(PID_DIR, "rank%s.pid" % os.environ.get("RANK", "0")), "w") as f:
        f.write(str(os.getpid()))


def signal_and_wait():
    """Tell the test we are at the chosen point, then wait there to be killed."""
    with open(MARKER, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


if MODE == "pause_epoch2":  # after the first step of epoch 2 (epoch 1's checkpoint is written)
    import utils.engine as engine
    log_iteration = engine._log_iteration

    def log_then_pause(plan, it, *args):
        log_iteration(plan, it, *args)
        if plan.epoch == 1 and it == 0:
            signal_and_wait()
    engine._log_iteration = log_then_pause
elif MODE == "slow_save":  # half of epoch 2's checkpoint is on disk when the kill comes
    import torch
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and hasattr(f, "write"):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            signal_and_wait()
        return real_save(obj, f, *args, **kwargs)
    torch.save = slow_save
elif MODE == "rank1_raise_epoch2":  # rank 1 fails as epoch 2 starts; rank 0 waits in a collective
    import utils.engine as engine
    train_one_epoch = engine.train_one_epoch

    def train_or_fail(model, loader, criterion, optimizer, plan, *args, **kwargs):
        if os.environ.get("RANK") == "1" and plan.epoch == 1:
            raise RuntimeError("injected fault: rank 1 fails at the start of epoch 2")
        return train_one_epoch(model, loader, criterion, optimizer, plan, *args, **kwargs)
    engine.train_one_epoch = train_or_fail
else:
    raise SystemExit("unknown UNIAD_TEST_FAULT=%r" % MODE)
sys.argv[0] = os.path.join(ROOT, "tools", "train_val.py")
runpy.run_path(sys.argv[0], run_name="__main__")
'''


# ------------------------------------------------------------------------------------ helpers
def tool_env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               UNIAD_DIST_TIMEOUT="60", UNIAD_TEST_ROOT=str(ROOT))
    env.pop("UNIAD_TRACEBACK", None)
    env.update(extra)
    return env


class Zygote:
    """A pre-imported interpreter that forks one child per tool run, one run at a time."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / "zygote.py"
        script.write_text(ZYGOTE)
        self.proc = subprocess.Popen([sys.executable, str(script)], env=tool_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def start(self, script: Path, args: list, env: dict) -> "ToolRun":
        self.count += 1
        out, err = self.folder / f"run{self.count}.out", self.folder / f"run{self.count}.err"
        request = {"script": str(script), "args": [str(a) for a in args], "env": env,
                   "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = self.proc.stdout.readline()
        if not pid:
            raise RuntimeError(f"the test zygote died (rc={self.proc.poll()})")
        return ToolRun(self, int(pid), out, err, [str(script), *request["args"]])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@dataclass
class ToolRun:
    """One tool run in a zygote child; ``wait()`` gives its CompletedProcess."""
    zygote: Zygote
    pid: int
    out: Path
    err: Path
    args: list

    def wait(self) -> subprocess.CompletedProcess:
        try:
            code = int(self.zygote.proc.stdout.readline())
        finally:
            POOL.free.put(self.zygote)
        return subprocess.CompletedProcess(self.args, code, self.out.read_text(), self.err.read_text())

    def alive(self) -> bool:
        """Running (a finished child stays a zombie until the zygote reaps it: not alive)."""
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"


class ZygotePool:
    """Two zygotes, started by the first tool run (tests that run no tool pay nothing)."""

    def __init__(self):
        self.free: "queue.Queue[Zygote]" = queue.Queue()
        self.made: list = []
        self.folder = None
        self.lock = threading.Lock()

    def get(self) -> Zygote:
        with self.lock:
            if not self.made:
                self.made = [Zygote(self.folder / f"zygote{i}") for i in range(2)]
                for zygote in self.made:
                    self.free.put(zygote)
        return self.free.get(timeout=TIMEOUT)

    def close(self) -> None:
        for zygote in self.made:
            zygote.close()
        self.made, self.free = [], queue.Queue()


POOL = ZygotePool()


@pytest.fixture(scope="module", autouse=True)
def zygotes(tmp_path_factory):
    POOL.folder = tmp_path_factory.mktemp("zygotes")
    yield POOL
    POOL.close()


def start_tool(script: str, *args, **env: str) -> ToolRun:
    """Start ``tools/<script> ARGS`` (or the script at a path) in a free zygote."""
    path = Path(script) if os.sep in script else ROOT / "tools" / script
    return POOL.get().start(path, list(args), env)


def run_tool(script: str, *args, **env: str) -> subprocess.CompletedProcess:
    return start_tool(script, *args, **env).wait()


def train_args(config: Path, *opts: str, evaluate: bool = False) -> list:
    return ["--config", config] + (["-e"] if evaluate else []) + (["--opts", *opts] if opts else [])


def train(config: Path, *opts: str, evaluate: bool = False) -> subprocess.CompletedProcess:
    return run_tool("train_val.py", *train_args(config, *opts, evaluate=evaluate))


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """Exit ``code``, one ``error:`` paragraph naming the culprit, no traceback."""
    detail = f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.returncode == code, detail
    assert "Traceback" not in proc.stderr, detail
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error")]
    assert len(lines) == 1, detail
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: the marker file appears iff code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_payload(path: Path, marker: Path) -> Path:
    """A checkpoint-looking file whose unpickling would run code (a ``__reduce__`` payload)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, str(path))
    return path


def write_wrapper(folder: Path) -> Path:
    wrapper = folder / "fault_wrapper.py"
    wrapper.write_text(FAULT_WRAPPER)
    return wrapper


def start_wrapped(mode: str, config: Path, marker: Path) -> ToolRun:
    """The training tool under FAULT_WRAPPER (``mode`` picks the patch), in a zygote child."""
    return start_tool(str(write_wrapper(config.parent)), *train_args(config),
                      UNIAD_TEST_FAULT=mode, UNIAD_TEST_MARKER=str(marker))


def wait_for(marker: Path, run: ToolRun, seconds: float = TIMEOUT) -> None:
    deadline = time.time() + seconds
    while not marker.exists():
        if not run.alive():
            proc = run.wait()
            raise AssertionError(f"the run ended (rc={proc.returncode}) before the fault point:\n"
                                 f"{proc.stderr[-3000:]}")
        if time.time() > deadline:
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
            raise AssertionError(f"the run did not reach the fault point in {seconds} s")
        time.sleep(0.2)


def sigkill(run: ToolRun) -> None:
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait().returncode == -signal.SIGKILL


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def latest(exp: Path) -> Path:
    return exp / "checkpoints" / "ckpt.pth.tar"


# ------------------------------------------------------------------ the independent quick cases
def _meta_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_meta(path: Path, records: list, extra_text: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + extra_text)
    return path


def _corrupt_copy(data: Path, dest: Path) -> Path:
    """A copy of the dataset with the 2nd training image of class alpha cut to half its bytes."""
    shutil.copytree(data, dest)
    victim = dest / "alpha/train/good/001.png"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return dest


def quick_cases(root: Path, data: Path) -> dict:
    """name -> zero-argument callable returning the CompletedProcess of one tool run."""
    cfg = make_config(root, data)
    train_meta = _meta_lines(data / "train.json")
    missing = _write_meta(root / "train_missing.json",
                          train_meta + [{"filename": "alpha/train/good/999.png", "label": 0, "clsname": "alpha"}])
    malformed = _write_meta(root / "train_malformed.json", train_meta[:2],
                            '{"filename": "alpha/train/good/002.png", "label": 0\n')
    empty = root / "train_empty.json"
    empty.write_text("\n")
    typo_dir = root / "typo"
    typo_dir.mkdir()
    typo_cfg = typo_dir / "config.yaml"
    typo_cfg.write_text(cfg.read_text().replace("max_epoch:", "max_epohc:"))
    corrupt = _corrupt_copy(data, root / "corrupt_data")
    corrupt_dir = root / "corrupt"
    corrupt_dir.mkdir()
    corrupt_cfg = make_config(corrupt_dir, corrupt)
    no_defect = _write_meta(root / "test_no_defect.json", [r for r in _meta_lines(data / "test.json")
                                                             if not (r["clsname"] == "beta" and r["label"] == 1)])
    evil = write_payload(root / "evil.pth.tar", root / "pwned_eval")
    write_payload(root / "evil_init.pth.tar", root / "pwned_init")
    write_payload(root / "evil_ckpts" / "ckpt.pth.tar", root / "pwned_resume")
    write_payload(root / "evil_original.pth.tar", root / "pwned_convert")
    return {
        "missing_image": lambda: train(cfg, f"dataset.train.meta_file={missing}", "saver.log_dir=log_missing"),
        "corrupt_image": lambda: train(corrupt_cfg, "dataset.workers=1"),
        "malformed_meta": lambda: train(cfg, f"dataset.train.meta_file={malformed}", "saver.log_dir=log_bad"),
        "empty_meta": lambda: train(cfg, f"dataset.train.meta_file={empty}", "saver.log_dir=log_empty"),
        "typo_yaml": lambda: train(typo_cfg),
        "typo_opts": lambda: train(cfg, "trainer.max_epohc=3"),
        "wrong_type": lambda: train(cfg, "trainer.max_epoch=two"),
        "payload_eval": lambda: train(cfg, f"saver.load_path={evil}", "saver.log_dir=log_evil", evaluate=True),
        "payload_load_path": lambda: train(cfg, f"saver.load_path={root / 'evil_init.pth.tar'}",
                                           "saver.log_dir=log_evil_init"),
        "payload_resume": lambda: train(cfg, "saver.auto_resume=True", f"saver.save_dir={root / 'evil_ckpts'}",
                                        "saver.log_dir=log_evil_resume"),
        "payload_convert": lambda: run_tool("convert_official_ckpt.py", "--input", root / "evil_original.pth.tar",
                                            "--output", root / "converted.pth.tar"),
        "no_defect_class": lambda: train(cfg, f"dataset.test.meta_file={no_defect}", "trainer.max_epoch=1",
                                         "saver.save_dir=ckpt_no_defect", "saver.log_dir=log_no_defect"),
    }


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_dataset, pool):
    """Future of the uninterrupted 2-epoch run (the reference for exact resume)."""
    exp = tmp_path_factory.mktemp("baseline")
    cfg = make_config(exp, tiny_dataset)
    return exp, pool.submit(train, cfg)


def baseline_done(baseline) -> Path:
    exp, future = baseline
    proc = future.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exp


@pytest.fixture(scope="module")
def quick(tmp_path_factory, tiny_dataset, pool, baseline):
    root = tmp_path_factory.mktemp("quick")
    return root, {name: pool.submit(fn) for name, fn in quick_cases(root, tiny_dataset).items()}


def result(quick, name: str) -> subprocess.CompletedProcess:
    return quick[1][name].result()


# ----------------------------------------------------------------------------------- data faults
def test_missing_image_names_the_file_and_meta_line(quick):
    assert_user_error(result(quick, "missing_image"), "filename not found", "alpha/train/good/999.png",
                      "train_missing.json:13")


def test_corrupt_image_in_a_worker_names_the_file_and_meta_line(quick):
    assert_user_error(result(quick, "corrupt_image"), "cannot decode image file", "alpha/train/good/001.png",
                      "train.json:2")


def test_malformed_meta_line_names_file_and_line(quick):
    assert_user_error(result(quick, "malformed_meta"), "train_malformed.json:3", "malformed JSON")


def test_empty_meta_file_is_named(quick):
    assert_user_error(result(quick, "empty_meta"), "train_empty.json", "is empty")


def test_class_without_defects_gives_nan_with_a_warning_and_completes(quick):
    root, _ = quick
    proc = result(quick, "no_defect_class")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the warning goes through the run's logger: console (stdout) and log/train.log
    warning = "beta_pixel_auc is nan: class 'beta' has 0 defective"
    assert warning in proc.stdout and warning in (root / "log_no_defect/train.log").read_text()
    record = json.loads((root / "log_no_defect/metrics.jsonl").read_text().splitlines()[-1])
    assert record["beta_pixel_auc"] is None and record["beta_max_auc"] is None  # nan, written as null
    assert record["alpha_pixel_auc"] is not None and record["mean_pixel_auc"] == record["alpha_pixel_auc"]
    assert load_checkpoint(str(root / "ckpt_no_defect/ckpt.pth.tar"))["epoch"] == 1


# --------------------------------------------------------------------------------- config faults
def test_key_typo_in_yaml_names_the_nearest_key(quick):
    assert_user_error(result(quick, "typo_yaml"), "unknown config key 'trainer.max_epohc'",
                      "did you mean 'max_epoch'")


def test_key_typo_in_opts_names_the_nearest_key(quick):
    assert_user_error(result(quick, "typo_opts"), "unknown config key 'trainer.max_epohc'",
                      "did you mean 'max_epoch'")


def test_wrong_value_type_names_key_and_value(quick):
    assert_user_error(result(quick, "wrong_type"), "config key 'trainer.max_epoch'", "expected an integer",
                      "'two'")


# ------------------------------------------------------------------------ malicious checkpoints
def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    """The payload really runs code under weights_only=False, so the refusals below mean something."""
    path = write_payload(tmp_path / "evil.pth.tar", tmp_path / "marker")
    torch.load(str(path), weights_only=False)
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("case, named, marker", [
    ("payload_eval", "evil.pth.tar", "pwned_eval"),                    # -e with saver.load_path
    ("payload_load_path", "evil_init.pth.tar", "pwned_init"),          # training from saver.load_path
    ("payload_resume", "evil_ckpts/ckpt.pth.tar", "pwned_resume"),     # saver.auto_resume
])
def test_payload_given_to_train_val_is_refused(quick, case, named, marker):
    root, _ = quick
    assert_user_error(result(quick, case), "refusing to load", named)
    assert not (root / marker).exists()


def test_payload_given_to_the_converter_is_refused(quick):
    root, _ = quick
    proc = result(quick, "payload_convert")
    assert proc.returncode == 2 and "refusing to load" in proc.stderr, proc.stderr[-3000:]
    assert not (root / "pwned_convert").exists() and not (root / "converted.pth.tar").exists()


# ------------------------------------------------------------------------------ process faults
def test_sigkill_mid_epoch_then_auto_resume_equals_uninterrupted_run(tmp_path, tiny_dataset, baseline):
    cfg = make_config(tmp_path, tiny_dataset)
    marker = tmp_path / "in_epoch2"
    proc = start_wrapped("pause_epoch2", cfg, marker)
    wait_for(marker, proc)
    sigkill(proc)
    assert load_checkpoint(str(latest(tmp_path)))["epoch"] == 1
    resumed = train(cfg, "saver.auto_resume=True")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (tmp_path / "log/train.log").read_text()
    mine, ref = load_checkpoint(str(latest(tmp_path))), load_checkpoint(str(latest(baseline_done(baseline))))
    assert mine["epoch"] == ref["epoch"] == 2
    assert_same_tensors(mine["state_dict"], ref["state_dict"], "weights")
    for index, state in ref["optimizer"]["state"].items():
        assert_same_tensors(mine["optimizer"]["state"][index], state, f"optimizer state {index}")
    assert mine["best_metric"] == ref["best_metric"] and mine["metrics"] == ref["metrics"]


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_dataset):
    cfg = make_config(tmp_path, tiny_dataset)
    marker = tmp_path / "writing"
    proc = start_wrapped("slow_save", cfg, marker)
    wait_for(marker, proc)
    sigkill(proc)
    ckpt_dir = tmp_path / "checkpoints"
    partial = list(ckpt_dir.glob(".ckpt.pth.tar.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the kill did land mid-write
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint|not a PyTorch checkpoint"):
        load_checkpoint(str(partial[0]))
    kept = load_checkpoint(str(latest(tmp_path)))
    assert kept["epoch"] == 1 and kept["state_dict"]
    assert load_checkpoint(str(ckpt_dir / "ckpt_best.pth.tar"))["epoch"] == 1


def test_non_finite_loss_stops_with_epoch_and_iteration_and_keeps_the_checkpoint(tmp_path, tiny_dataset):
    """A real config that diverges: lr x1e30 from epoch 2 (MultiStepLR with the original's timing)."""
    cfg = make_config(tmp_path, tiny_dataset, warmup_epochs=0)
    proc = train(cfg, "trainer.lr_scheduler.type=MultiStepLR",
                 "trainer.lr_scheduler.kwargs={milestones: [0], gamma: 1.0e+30}")
    assert_user_error(proc, "non-finite loss", "at epoch 2, iteration", "lower trainer.optimizer.kwargs.lr", code=3)
    kept = load_checkpoint(str(latest(tmp_path)))
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_one_rank_failing_stops_every_process_without_hanging(tmp_path, tiny_dataset):
    """A real torchrun with 2 processes; rank 1 raises as epoch 2 starts, rank 0 waits in a collective."""
    cfg = make_config(tmp_path, tiny_dataset)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(write_wrapper(tmp_path)), *map(str, train_args(cfg))]
    env = tool_env(UNIAD_TEST_FAULT="rank1_raise_epoch2", UNIAD_TEST_PID_DIR=str(pid_dir))
    start = time.time()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the 2-process run hung after rank 1 failed") from exc
    assert proc.returncode != 0
    assert "injected fault: rank 1 fails at the start of epoch 2" in proc.stderr
    pids = [int(p.read_text()) for p in sorted(pid_dir.glob("rank*.pid"))]
    assert len(pids) == 2
    for pid in pids:  # both ranks are gone, not left hanging in a collective
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert load_checkpoint(str(latest(tmp_path)))["epoch"] == 1  # epoch 1 finished before the fault
    assert time.time() - start < 240


def test_zygote_run_equals_a_plain_python_run(quick):
    """The harness: ``python tools/train_val.py`` gives the same exit code and stderr as a zygote run."""
    root, _ = quick
    plain = subprocess.run([sys.executable, str(ROOT / "tools/train_val.py"), "--config", str(root / "config.yaml"),
                            "--opts", "trainer.max_epoch=two"], env=tool_env(), capture_output=True, text=True,
                           timeout=TIMEOUT)
    forked = result(quick, "wrong_type")
    assert (plain.returncode, plain.stderr) == (forked.returncode, forked.stderr)


# ---------------------------------------------------------------- inference and export tools
def test_infer_and_export_refuse_a_payload_checkpoint(tmp_path, tiny_dataset):
    cfg = make_config(tmp_path, tiny_dataset)
    image = next(tiny_dataset.rglob("good/000.png"))
    for tool, outputs in (("infer.py", ["--input", image, "--output", tmp_path / "out"]),
                          ("export_onnx.py", ["--output", tmp_path / "model.onnx"])):
        marker = tmp_path / f"pwned_{tool}"
        evil = write_payload(tmp_path / f"evil_{tool}.pth.tar", marker)
        proc = run_tool(tool, "--config", cfg, "--checkpoint", evil, *outputs)
        assert proc.returncode == 2 and "refusing to load" in proc.stderr, f"{tool}: {proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, tool
        assert not marker.exists(), tool
    assert not (tmp_path / "model.onnx").exists() and not list((tmp_path / "out").rglob("*.npy"))


def test_infer_and_export_name_a_missing_checkpoint(tmp_path, tiny_dataset):
    cfg = make_config(tmp_path, tiny_dataset)
    image = next(tiny_dataset.rglob("good/000.png"))
    for tool, outputs in (("infer.py", ["--input", image, "--output", tmp_path / "out"]),
                          ("export_onnx.py", ["--output", tmp_path / "model.onnx"])):
        proc = run_tool(tool, "--config", cfg, "--checkpoint", tmp_path / "nope.pth.tar", *outputs)
        assert proc.returncode == 2 and "nope.pth.tar" in proc.stderr and "does not exist" in proc.stderr, tool
        assert "Traceback" not in proc.stderr, tool


def test_infer_lists_a_corrupt_image_and_scores_the_others(tmp_path, tiny_dataset, baseline):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, source in enumerate(sorted(tiny_dataset.rglob("test/good/*.png"))[:2]):
        shutil.copy(source, folder / f"ok{i}.png")
    good = (folder / "ok0.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 2])
    ckpt = latest(baseline_done(baseline))
    proc = run_tool("infer.py", "--config", make_config(tmp_path, tiny_dataset), "--checkpoint", ckpt,
                    "--input", folder, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["filename"]: row for row in csv.DictReader((tmp_path / "out/results.csv").open())}
    assert len(rows) == 3
    broken = next(row for name, row in rows.items() if "broken" in name)
    assert "broken.png" in broken["error"] and not broken["score"]
    scored = [row for name, row in rows.items() if Path(name).name.startswith("ok")]
    assert len(scored) == 2
    assert all(row["score"] and not row["error"] for row in scored)
    assert len(list((tmp_path / "out/maps").glob("*.npy"))) == 2


# ------------------------------------------------------------------- the CLI wrapper itself
def _raise_from_repo(tmp_path):
    """A ValueError raised by a check in this repository (an undecodable image)."""
    from datasets.image_reader import decode_image_file
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    decode_image_file(str(bad), 1)


def test_cli_classifies_own_checks_as_user_errors_and_library_errors_as_bugs(tmp_path):
    from utils.cli import exit_code_for, user_message
    from utils.config_helper import ConfigError
    from utils.engine import NonFiniteLossError
    with pytest.raises(ValueError) as own:
        _raise_from_repo(tmp_path)
    assert exit_code_for(own.value) == 2
    with pytest.raises(RuntimeError) as torch_error:
        torch.zeros(2).view(3)
    assert exit_code_for(torch_error.value) is None  # raised inside torch: keeps its traceback
    with pytest.raises(KeyError) as lookup:
        {}["missing"]  # noqa: B018 - a plain lookup bug, not a check
    assert exit_code_for(lookup.value) is None
    assert exit_code_for(ConfigError("x")) == 2 and exit_code_for(NonFiniteLossError("x")) == 3
    assert exit_code_for(FileNotFoundError("f")) == 2
    text = "evaluator.key_metric 'x' is not computed"
    assert user_message(KeyError(text)) == text  # without the repr quotes of str(KeyError)


def test_cli_reads_through_the_dataloader_worker_wrapper(tmp_path):
    from torch._utils import ExceptionWrapper
    from utils.cli import exit_code_for, user_message
    try:
        _raise_from_repo(tmp_path)
    except ValueError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError) as exc:
        wrapped.reraise()
    assert exit_code_for(exc.value) == 2
    assert user_message(exc.value).startswith("cannot decode image file") and "bad.png" in user_message(exc.value)


def test_cli_prints_one_line_names_the_rank_and_shows_the_traceback_on_request(tmp_path, capsys, monkeypatch):
    from utils.cli import run_cli

    def main():
        _raise_from_repo(tmp_path)

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error (rank 1): cannot decode image file") and len(
        err.strip().splitlines()) == 1
    monkeypatch.setenv("UNIAD_TRACEBACK", "1")
    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" in err and "decode_image_file" in err

    def buggy():
        return [][1]
    with pytest.raises(IndexError):  # unknown errors are not caught: Python prints them, exit 1
        run_cli(buggy)
