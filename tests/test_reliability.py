"""Failure paths that must end in one clear message, never in lost or silently wrong files: a full disk,
a power cut during a directory swap, two writers on one run dir, planted data and weight files, a corrupt
cache, a fault-injection variable left set. Each test is tiny: no chains, no model training beyond 40 images.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pickle
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from imgcollapse import faults, lock, store
from imgcollapse.data import ImageSet
from imgcollapse.data.torchvision_sets import CIFAR10Unverified
from imgcollapse.errors import UserError, WriteFailed
from imgcollapse.lock import CLAIM_DIR, LOCK_FILE, RunDirLocked, RunLock
from imgcollapse.metrics import features
from imgcollapse.metrics.features import ExtractorUnavailable, classifier_fingerprint, load_inception
from imgcollapse.store import atomic_write, atomic_write_dir

REPO = Path(__file__).resolve().parents[1]


def leftovers(folder: Path) -> list[str]:
    """Temporary names (`.<name>.<random>.tmp`) a writer left in `folder`."""
    return sorted(p.name for p in folder.glob(".*.tmp"))


# 1. A full disk is WriteFailed (exit 4) on every write path ------------------------------------------------------
def in_full_disk_child(action: Callable[[], None], limit: int = 4096) -> dict:
    """Run `action` in a forked child whose files cannot grow past `limit` bytes (writes fail with EFBIG, as on a
    full disk); returns what it raised: {"type", "message", "errno", "path"} or {"type": None}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing it
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            try:
                action()
                result: dict = {"type": None}
            except BaseException as e:
                result = {"type": type(e).__name__, "message": str(e), "errno": getattr(e, "errno", None),
                          "path": str(getattr(e, "path", ""))}
            os.write(write_end, json.dumps(result).encode())  # a pipe is not subject to RLIMIT_FSIZE
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks).decode())


def test_full_disk_safetensors_save_through_atomic_write_dir_is_write_failed(tmp_path):
    target = tmp_path / "gen_000" / "model"
    result = in_full_disk_child(lambda: atomic_write_dir(
        target, lambda tmp: save_file({"w": torch.zeros(10_000)}, tmp / "vae.safetensors")))
    assert result["type"] == "WriteFailed", result
    assert result["path"] == str(target) and str(target) in result["message"]
    assert result["errno"] == errno.EFBIG  # carried over from safetensors' "os error 27"
    assert not target.exists() and leftovers(target.parent) == []


def test_full_disk_torch_save_through_atomic_write_is_write_failed(tmp_path):
    target = tmp_path / "cache" / "classifier.pt"
    result = in_full_disk_child(lambda: atomic_write(target, lambda tmp: torch.save({"w": torch.zeros(10_000)}, tmp)))
    assert result["type"] == "WriteFailed", result  # torch raises RuntimeError("... unexpected pos ...")
    assert result["path"] == str(target) and str(target) in result["message"]
    assert not target.exists() and leftovers(target.parent) == []


def test_full_disk_np_savez_through_atomic_write_is_write_failed(tmp_path):
    target = tmp_path / "samples.npz"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, images=np.zeros((100, 100), dtype=np.uint8))

    result = in_full_disk_child(lambda: atomic_write(target, write))
    assert result["type"] == "WriteFailed", result
    assert result["errno"] == errno.EFBIG and str(target) in result["message"]
    assert not target.exists() and leftovers(tmp_path) == []


def test_full_disk_lock_file_is_write_failed_naming_run_lock(tmp_path):
    result = in_full_disk_child(lambda: RunLock(tmp_path).acquire(), limit=8)
    assert result["type"] == "WriteFailed", result
    assert result["path"] == str(tmp_path / LOCK_FILE) and LOCK_FILE in result["message"]
    assert not (tmp_path / CLAIM_DIR).exists()  # the claim is given back whatever happens


@pytest.mark.parametrize("error", [RuntimeError("size mismatch for weight"), ValueError("bad shape"),
                                   KeyError("state_dict")])
def test_a_bug_in_a_write_callback_is_not_disguised_as_a_full_disk(tmp_path, error):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error

    with pytest.raises(type(error)) as e:
        atomic_write(tmp_path / "x.json", write)
    assert not isinstance(e.value, WriteFailed)
    with pytest.raises(type(error)):
        atomic_write_dir(tmp_path / "model", lambda tmp: write(tmp / "w.bin"))
    assert list(tmp_path.iterdir()) == []


def test_an_oserror_behind_another_exception_is_write_failed(tmp_path):
    def write(tmp: Path) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("the library wrapped it") from e

    with pytest.raises(WriteFailed, match="No space left on device") as e:
        atomic_write(tmp_path / "x.bin", write)
    assert e.value.errno == errno.ENOSPC and e.value.path == tmp_path / "x.bin"


# 2. atomic_write_dir: the whole new tree is durable before the swap, and the old one stays until then ------------
def write_tree(files: dict[str, str]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)

    return write


def read_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(params=["exchange", "two renames"])
def swap(request, monkeypatch) -> str:
    """Both ways of swapping: renameat2's atomic exchange, and the fallback for file systems without it."""
    if request.param == "two renames":
        monkeypatch.setattr(store, "_exchange", lambda a, b: False)
    return request.param


def test_atomic_write_dir_keeps_the_old_tree_when_the_write_fails(tmp_path, swap):
    target = tmp_path / "model"
    atomic_write_dir(target, write_tree({"config.json": "old", "sub/w.bin": "old weights"}))

    def fail(tmp: Path) -> None:
        write_tree({"config.json": "new"})(tmp)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed):
        atomic_write_dir(target, fail)
    assert read_tree(target) == {"config.json": "old", "sub/w.bin": "old weights"}
    assert leftovers(tmp_path) == []


def test_atomic_write_dir_replaces_the_old_tree_when_the_write_succeeds(tmp_path, swap):
    target = tmp_path / "model"
    atomic_write_dir(target, write_tree({"config.json": "old", "stale.bin": "x"}))
    atomic_write_dir(target, write_tree({"config.json": "new", "sub/w.bin": "new weights"}))
    assert read_tree(target) == {"config.json": "new", "sub/w.bin": "new weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old tree is gone, no temporary left


def test_a_failed_swap_puts_the_old_tree_back(tmp_path, monkeypatch):
    """Without an atomic exchange the old tree is renamed aside first; if the new one then cannot be renamed in,
    the old one goes back to its name."""
    target = tmp_path / "model"
    atomic_write_dir(target, write_tree({"config.json": "old"}))
    monkeypatch.setattr(store, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        if Path(dst) == target and Path(src).name.startswith(".model."):
            assert not target.exists()  # the old tree is aside, complete, under a .model.*.tmp name
            assert any(read_tree(tmp_path / name) == {"config.json": "old"} for name in leftovers(tmp_path))
            if read_tree(Path(src)) == {"config.json": "new"}:
                raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteFailed, match="Input/output error"):
        atomic_write_dir(target, write_tree({"config.json": "new"}))
    assert read_tree(target) == {"config.json": "old"} and leftovers(tmp_path) == []


def test_atomic_write_dir_fsyncs_every_file_and_directory_bottom_up(tmp_path, monkeypatch, swap):
    target = tmp_path / "model"
    atomic_write_dir(target, write_tree({"old.bin": "x"}))
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_dir(target, write_tree({"config.json": "{}", "unet/w.bin": "w", "unet/deep/x.bin": "x"}))
    key = {p: (p.stat().st_dev, p.stat().st_ino) for p in [target, *target.rglob("*")]}  # inodes survive renames
    for path, inode in key.items():
        assert inode in synced, f"{path.relative_to(tmp_path)} ({'dir' if path.is_dir() else 'file'}) never fsynced"
    for path in key:  # a directory is synced after everything in it, so its entries name persisted inodes
        if path.is_dir():
            assert all(synced.index(key[path]) > synced.index(key[child]) for child in path.iterdir())
    parent = (tmp_path.stat().st_dev, tmp_path.stat().st_ino)
    assert parent in synced and synced.index(parent) > synced.index(key[target])  # the swap itself persisted


# 3. The run-dir lock on clusters ------------------------------------------------------------------------------------
@pytest.fixture
def slurm(monkeypatch) -> Callable[..., None]:
    """Set this process's Slurm variables (all others cleared)."""
    for key in lock.SLURM_KEYS:
        monkeypatch.delenv(key, raising=False)

    def set_env(**values: str) -> None:
        for key in lock.SLURM_KEYS:
            monkeypatch.delenv(key, raising=False)
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return set_env


@pytest.fixture
def no_flock(monkeypatch) -> None:
    """A file system without flock (some NFS mounts): flock fails with ENOLCK."""

    def flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


def plant_holder(run_dir: Path, **changes) -> None:
    """A lock file as an unreleased holder left it, recorded by this process as it is now (its Slurm variables
    included) with `changes` (pid, host...); no flock is held: the holder is elsewhere, or gone."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({**lock.this_process(), **changes}) + "\n")


def test_the_lock_records_the_slurm_restart_count_step_and_task(tmp_path, slurm):
    slurm(SLURM_JOB_ID="77", SLURM_RESTART_COUNT="2", SLURM_STEP_ID="1", SLURM_PROCID="3")
    with RunLock(tmp_path):
        held = json.loads((tmp_path / LOCK_FILE).read_text())
    assert held["slurm"] == {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "2", "SLURM_STEP_ID": "1",
                             "SLURM_PROCID": "3"}


@pytest.mark.usefixtures("no_flock")
def test_two_steps_of_one_live_allocation_do_not_both_proceed(tmp_path, slurm):
    """Same job id, same restart count: another step (or task) of the allocation, running now."""
    slurm(SLURM_JOB_ID="77", SLURM_STEP_ID="0", SLURM_PROCID="0")  # no SLURM_RESTART_COUNT: never requeued
    plant_holder(tmp_path, pid=os.getppid())  # alive, on this host
    slurm(SLURM_JOB_ID="77", SLURM_STEP_ID="1", SLURM_PROCID="0")
    with pytest.raises(RunDirLocked, match=f"PID {os.getppid()}"):
        RunLock(tmp_path).acquire()
    slurm(SLURM_JOB_ID="77", SLURM_STEP_ID="0", SLURM_PROCID="1")
    plant_holder(tmp_path, host="node-b")  # task 1 of the same step, on another node of the allocation
    slurm(SLURM_JOB_ID="77", SLURM_STEP_ID="0", SLURM_PROCID="0")
    with pytest.raises(RunDirLocked, match="node-b"):
        RunLock(tmp_path).acquire()


@pytest.mark.parametrize("flock", ["flock", "no flock"])
def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, slurm, request, caplog, flock):
    if flock == "no flock":
        request.getfixturevalue("no_flock")
    slurm(SLURM_JOB_ID="77", SLURM_STEP_ID="0", SLURM_PROCID="0")  # the first run, pre-empted on node-b
    plant_holder(tmp_path, host="node-b")
    slurm(SLURM_JOB_ID="77", SLURM_RESTART_COUNT="1", SLURM_STEP_ID="0", SLURM_PROCID="0")
    with caplog.at_level(logging.WARNING, logger="imgcollapse"), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "requeued" in caplog.text and "node-b" in caplog.text
    slurm(SLURM_JOB_ID="78", SLURM_RESTART_COUNT="5")  # another job's restart count means nothing
    plant_holder(tmp_path, host="node-b")
    slurm(SLURM_JOB_ID="77", SLURM_RESTART_COUNT="6")
    with pytest.raises(RunDirLocked, match="node-b"):
        RunLock(tmp_path).acquire()


def test_with_node_local_flock_a_holder_on_another_host_is_refused_not_taken_over(tmp_path, slurm):
    """flock succeeds here (as NFS local_lock or Lustre localflock lets it on every node), but the file names an
    unreleased holder on another host: that host's process may well be running."""
    plant_holder(tmp_path, host="node-b", pid=123)
    with pytest.raises(RunDirLocked) as e:
        RunLock(tmp_path).acquire()
    message = str(e.value)
    assert "PID 123 on host node-b" in message and "another host" in message
    assert f"If that process is no longer running, delete {tmp_path / LOCK_FILE}" in message
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-b"  # untouched


def test_with_flock_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path, slurm, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant_holder(tmp_path, pid=dead.pid)
    with caplog.at_level(logging.WARNING, logger="imgcollapse"), RunLock(tmp_path):
        pass
    assert f"PID {dead.pid}" in caplog.text and "no longer running" in caplog.text


@pytest.mark.usefixtures("no_flock")
def test_without_flock_the_lock_file_is_read_and_written_inside_a_claim(tmp_path, slurm, monkeypatch):
    real_read, real_write = lock._read, lock._write
    seen = []

    def read(fd: int) -> dict | None:
        seen.append(("read", (tmp_path / CLAIM_DIR).is_dir()))
        return real_read(fd)

    def write(fd: int, info: dict) -> None:
        seen.append(("write", (tmp_path / CLAIM_DIR).is_dir()))
        real_write(fd, info)

    monkeypatch.setattr(lock, "_read", read)
    monkeypatch.setattr(lock, "_write", write)
    lk = RunLock(tmp_path)
    lk.acquire()
    assert seen[:2] == [("read", True), ("write", True)] and not (tmp_path / CLAIM_DIR).exists()
    lk.release()


@pytest.mark.usefixtures("no_flock")
def test_without_flock_a_claim_held_by_another_process_blocks(tmp_path, slurm):
    """Two processes that both read the file before either writes it would both see it free: the one that
    finds another's claim waits, then stops, instead of reading."""
    (tmp_path / CLAIM_DIR).mkdir(parents=True)  # another process is between its read and its write
    lk = RunLock(tmp_path)
    lk.claim_wait_s = 0.2
    start = time.monotonic()
    with pytest.raises(RunDirLocked, match="being claimed by another process"):
        lk.acquire()
    assert time.monotonic() - start >= 0.2
    assert (tmp_path / CLAIM_DIR).is_dir()  # never removed while it is fresh
    assert (tmp_path / LOCK_FILE).read_text() == ""  # nothing written


@pytest.mark.usefixtures("no_flock")
def test_a_stale_claim_is_removed_with_a_warning(tmp_path, slurm, caplog):
    claim = tmp_path / CLAIM_DIR
    claim.mkdir(parents=True)
    os.utime(claim, (time.time() - 3600, time.time() - 3600))  # left by a process killed an hour ago
    with caplog.at_level(logging.WARNING, logger="imgcollapse"), RunLock(tmp_path):
        assert not claim.exists()
    assert str(claim) in caplog.text


# 4. CIFAR-10 without md5 checks never unpickles code -------------------------------------------------------------
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class RunsCode:
    """What a planted batch file could hold: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def fake_cifar(root: Path, as_bytes: bool = False, planted: dict[str, object] | None = None,
               protocol: int = 2) -> dict[str, np.ndarray]:
    """cifar-10-batches-py with 4 images per batch, pickled as protocol-2 dicts like the official Python 2 files
    (`as_bytes`: bytes keys and names, as a Python 3 re-pack may have); `planted` replaces a file's content."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = {}
    key = (lambda k: k.encode()) if as_bytes else (lambda k: k)
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
        data[name] = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
        entry = {key("batch_label"): name, key("labels"): [0, 1, 2, 9], key("data"): data[name],
                 key("filenames"): [f"{name}_{j}.png" for j in range(4)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
    meta = {key("label_names"): [key(n) for n in NAMES], key("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    for name, content in (planted or {}).items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return data


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str keys", "bytes keys"])
def test_unverified_cifar_batches_load_without_unpickling_objects(tmp_path, as_bytes, protocol):
    data = fake_cifar(tmp_path, as_bytes, protocol=protocol)
    train = CIFAR10Unverified(str(tmp_path), train=True)
    test = CIFAR10Unverified(str(tmp_path), train=False)
    assert train.data.shape == (20, 32, 32, 3) and test.data.shape == (4, 32, 32, 3)
    assert np.array_equal(train.data[:4], data["data_batch_1"].reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))
    assert train.targets == [0, 1, 2, 9] * 5 and train.classes == NAMES


@pytest.mark.parametrize("planted", ["data_batch_3", "test_batch", "batches.meta"])
def test_a_batch_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path, planted):
    marker = tmp_path / "MARKER"
    fake_cifar(tmp_path, planted={planted: {"data": RunsCode(f"touch {marker}"), "labels": [0],
                                            "label_names": RunsCode(f"touch {marker}")}})
    with pytest.raises(UserError) as e:
        CIFAR10Unverified(str(tmp_path), train=planted != "test_batch")
    assert planted in str(e.value) and "system" in str(e.value)  # names the file and what it asked for
    assert not marker.exists()


# 5. Inception weights: not from /tmp, and a file that fails its check is never loaded -----------------------------
def test_the_inception_weights_default_to_the_cache_not_tmp(tmp_path):
    metrics = OmegaConf.load(REPO / "conf" / "metrics" / "default.yaml")
    config = OmegaConf.create({"cache_dir": str(tmp_path), "metrics": OmegaConf.to_container(metrics)})
    assert config.metrics.inception_weights == str(tmp_path / "inception" / features.NVLABS_FILE)


def test_a_file_failing_a_given_hash_is_refused_before_loading_and_garbage_when_loaded(tmp_path, monkeypatch):
    weights = tmp_path / "inception" / features.NVLABS_FILE
    weights.parent.mkdir()
    weights.write_bytes(b"planted by another user of this host")
    opened = []
    monkeypatch.setattr(features, "wrap_torchscript", lambda path, device: opened.append(path))
    with pytest.raises(ExtractorUnavailable, match="is not NVlabs'") as e:
        load_inception(weights, source="nvlabs", download_missing=False, nvlabs_sha1="0" * 40)
    assert features.file_sha1(weights) in str(e.value) and opened == []  # checked before torch.jit.load
    monkeypatch.undo()
    with pytest.raises(ExtractorUnavailable, match="not a TorchScript"):  # no hash to check: refused when loaded
        load_inception(weights, source="nvlabs", download_missing=False)


# 6. A corrupt classifier cache is rebuilt --------------------------------------------------------------------------
def tiny_set(seed: int, n: int = 40) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % 10, [str(c) for c in range(10)])


@pytest.mark.parametrize("content", [b"\x00garbage\xff" * 10, b"PK\x03\x04 cut off midway", "wrong keys"],
                         ids=["garbage", "truncated zip", "wrong keys"])
def test_a_corrupt_classifier_cache_is_rebuilt_with_a_warning(tmp_path, caplog, content):
    train, heldout = tiny_set(0), tiny_set(1, 20)
    path = tmp_path / "classifier" / f"{classifier_fingerprint(train, 1, 64, 1e-3, 0)}.pt"
    path.parent.mkdir()
    if content == "wrong keys":
        torch.save({"weights": 1}, path)
    else:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="imgcollapse"):
        classifier = features.load_or_train_classifier(train, heldout, tmp_path, epochs=1)
    assert str(path) in caplog.text and "training again" in caplog.text
    state = torch.load(path, weights_only=True)  # rebuilt: a good file in its place
    assert set(state) == {"state_dict", "accuracy"} and 0 <= classifier.accuracy <= 1
    again = features.load_or_train_classifier(train, heldout, tmp_path, epochs=1)  # and read back as it is
    assert again.accuracy == classifier.accuracy
    assert stat.S_ISREG(path.stat().st_mode) and leftovers(path.parent) == []


# 7. A leftover IMGCOLLAPSE_FAULT says so ---------------------------------------------------------------------------
def test_arming_a_fault_warns_loudly(caplog):
    try:
        with caplog.at_level(logging.WARNING, logger="imgcollapse"):
            faults.arm("write:2")
        [record] = [r for r in caplog.records if "fault injection armed" in r.getMessage()]
        assert record.levelno == logging.WARNING and record.name == "imgcollapse"
        message = record.getMessage()
        assert "IMGCOLLAPSE_FAULT=write:2" in message and "SIGKILL" in message and "unset it" in message
        caplog.clear()
        faults.arm(None)
        assert "fault injection" not in caplog.text  # disarming is silent
    finally:
        faults.arm(None)
