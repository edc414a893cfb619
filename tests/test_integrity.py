"""Resume integrity and the last bad inputs (issue 14): fingerprint, lock, checked checkpoints,
device-independent resume, write errors, and inputs that used to end in a traceback."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import checkpoint_edits
from softcls_jax import checkpoint, data, files, models, sweep
from tests import checkpoint_files

TINY = sweep.SweepSpec(
    losses=("ce",),
    learning_rates=(0.1, 0.3),
    seeds=(0,),
    hidden=(8,),
    steps=20,
    eval_every=10,
    batch_size=32,
)


def _npz(path, seed=0, **extra):
    rng = np.random.default_rng(seed)
    arrays = dict(
        x_train=rng.normal(size=(64, 4)),
        y_train=np.arange(64) % 3,
        x_test=rng.normal(size=(16, 4)),
        y_test=np.arange(16) % 3,
    )
    np.savez(path, **{**arrays, **extra})
    return path


def _without_timing(document):
    """The document as JSON text without its timing (text: NaN == NaN)."""
    return json.dumps({k: v for k, v in document.items() if k != "timing"}, default=str)


# ---------------------------------------------------------------- 1. fingerprint


def test_changed_data_is_refused_naming_the_change(tmp_path):
    path = _npz(tmp_path / "d.npz")
    spec = sweep.SweepSpec(**{**TINY.__dict__, "dataset": f"npz:{path}", "batch_size": 16})
    sweep.run_sweep(spec, tmp_path / "w")
    recorded = json.loads((tmp_path / "w" / "spec.json").read_text())["fingerprint"]
    assert set(recorded["versions"]) == {"jax", "jaxlib", "flax", "optax", "numpy"}
    _npz(path, seed=1)  # same shapes, other values
    with pytest.raises(
        sweep.SettingError,
        match=rf"of other data \(npz:{path} changed: sha256 "
        rf"{recorded['data']['sha256'][:12]}… -> [0-9a-f]{{12}}…\)",
    ):
        sweep.run_sweep(spec, tmp_path / "w")
    assert sweep.run_sweep(spec, tmp_path / "w", overwrite=True)["settings"]["steps"] == 20


def test_other_package_versions_are_refused(tmp_path):
    sweep.run_sweep(TINY, tmp_path)
    spec_json = json.loads((tmp_path / "spec.json").read_text())
    spec_json["fingerprint"]["versions"]["jax"] = "0.0.1"
    (tmp_path / "spec.json").write_text(json.dumps(spec_json))
    with pytest.raises(sweep.SettingError, match=r"other package versions \(jax 0\.0\.1 -> "):
        sweep.run_sweep(TINY, tmp_path)


def test_a_workdir_written_before_the_newer_settings_still_resumes(tmp_path):
    """spec.json of a sweep from before depth, width, augment and weight_decay_mask existed: their
    defaults are what it trained with, so the same command resumes it."""
    first = sweep.run_sweep(TINY, tmp_path)
    spec_json = json.loads((tmp_path / "spec.json").read_text())
    for name in sweep.ADDED_SETTINGS:
        spec_json.pop(name)
    (tmp_path / "spec.json").write_text(json.dumps(spec_json))
    assert _without_timing(sweep.run_sweep(TINY, tmp_path)) == _without_timing(first)


# ---------------------------------------------------------------- 2. lock


def test_a_workdir_in_use_is_refused_naming_the_pid_even_with_overwrite(tmp_path):
    sweep.run_sweep(TINY, tmp_path)
    with files.DirLock(tmp_path):  # another sweep holds it
        for overwrite in (False, True):
            with pytest.raises(sweep.SettingError, match=rf"in use by process {os.getpid()}"):
                sweep.run_sweep(TINY, tmp_path, overwrite=overwrite)
        assert (tmp_path / "results.json").exists()  # --overwrite deleted nothing
    sweep.run_sweep(TINY, tmp_path)  # released: usable again


def test_the_lock_dies_with_its_process(tmp_path):
    code = f"from softcls_jax.files import DirLock; DirLock({str(tmp_path)!r}).acquire(); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        while not (tmp_path / ".lock").exists() or not (tmp_path / ".lock").read_text():
            pass
        with pytest.raises(files.LockedError) as e:
            files.DirLock(tmp_path).acquire()
        assert e.value.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()
    files.DirLock(tmp_path).acquire().release()  # kill -9 released it


# ---------------------------------------------------------------- 3. checked checkpoints


def _set_step(state, history):
    return state._replace(step=jnp.asarray(10, jnp.int32)), history


def _set_lr(state, history):
    lr = state.hparams["learning_rate"]
    return state._replace(hparams={**state.hparams, "learning_rate": lr * 2}), history


def _short_history(state, history):
    return state, history[:-1]


def _bad_steps(state, history):
    return state, [{**h, "step": s} for h, s in zip(history, (0, 7, 20), strict=True)]


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_step, r"its state is at step 10, its history ends at step 20"),
        (_set_lr, r"other learning_rate values than the spec: config \(0, 0\) has 0.2, the spec"),
        (_short_history, r"its state is at step 20, its history ends at step 10"),
        (_bad_steps, r"history of steps \[0, 7, 20\], expected \[0, 10, 20\]"),
    ],
)
def test_a_checkpoint_inconsistent_with_itself_or_the_spec_is_refused(tmp_path, edit, message):
    sweep.run_sweep(TINY, tmp_path)
    (tmp_path / "results.json").unlink()
    checkpoint_edits.edit(tmp_path, edit)
    with pytest.raises(sweep.SettingError, match=message + r".*; remove it or use --overwrite"):
        sweep.run_sweep(TINY, tmp_path)
    assert not (tmp_path / "results.json").exists()  # no corrupted checkpoint yields results


def test_a_flipped_bit_in_a_weight_fails_its_digest(tmp_path):
    """orbax reads such a file back without complaint (its checks cover the structure, not the
    numbers): the digest finds it, naming the array."""
    sweep.run_sweep(TINY, tmp_path)
    largest = checkpoint_files.array_files(tmp_path / checkpoint.DIRECTORY)[0]  # the kernels
    raw = bytearray(largest.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of a weight, inside zstd's stored (raw) block
    largest.write_bytes(bytes(raw))
    with pytest.raises(
        sweep.SettingError,
        match=r"is corrupted: state\.params\[.*\]\.value does not match its digest",
    ):
        sweep.run_sweep(TINY, tmp_path)


@pytest.mark.parametrize("item", ["state", "history"])
def test_truncated_files_are_refused(tmp_path, item):
    sweep.run_sweep(TINY, tmp_path)
    for path in checkpoint_files.array_files(tmp_path / checkpoint.DIRECTORY, item):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(sweep.SettingError, match=r"checkpoint .* is (unreadable|corrupted)"):
        sweep.run_sweep(TINY, tmp_path)


def test_a_checkpoint_of_another_sweep_is_refused(tmp_path):
    """A foreign checkpoint copied into a workdir: another model's arrays are named."""
    other = sweep.SweepSpec(**{**TINY.__dict__, "hidden": (12,)})
    sweep.run_sweep(other, tmp_path / "other")
    sweep.run_sweep(TINY, tmp_path / "w")
    shutil.rmtree(tmp_path / "w" / checkpoint.DIRECTORY)
    shutil.copytree(tmp_path / "other" / checkpoint.DIRECTORY, tmp_path / "w" / "checkpoint")
    with pytest.raises(
        sweep.SettingError,
        match=r"does not match this sweep's model and grid: state\.params.* is float32\[1, 2, 12\], "
        r"expected .* float32\[1, 2, 8\]",
    ):
        sweep.run_sweep(TINY, tmp_path / "w")


def test_a_checkpoint_of_the_earlier_format_is_a_clear_error(tmp_path):
    sweep.run_sweep(TINY, tmp_path)
    (tmp_path / "checkpoint.msgpack").write_bytes(b"softcls-jax checkpoint 2\n")
    with pytest.raises(sweep.SettingError, match=r"holds checkpoint\.msgpack, .* earlier"):
        sweep.run_sweep(TINY, tmp_path)
    sweep.run_sweep(TINY, tmp_path, overwrite=True)
    assert not (tmp_path / "checkpoint.msgpack").exists()


# ---------------------------------------------------------------- 4. another device count

WORKER = textwrap.dedent("""
    import json, sys
    from softcls_jax import sweep
    spec = sweep.SweepSpec(losses=("ce", "mse"), learning_rates=(0.01, 0.1, 0.5), seeds=(0, 1),
                           hidden=(16,), steps=60, eval_every=20, batch_size=64)
    class Stop(Exception): pass
    def stop(step, *_):
        if step == int(sys.argv[2]): raise Stop
    try:
        sweep.run_sweep(spec, sys.argv[1], on_progress=stop, on_resume=print)
    except Stop:
        print("stopped")
""")


def _worker(devices, workdir, stop_at=-1):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(workdir), str(stop_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def _curves(workdir):
    doc = json.loads((workdir / "results.json").read_text())
    return [(c["loss"], c["learning_rate"], c["seed"], c["curves"]) for c in doc["configs"]]


# 4 -> 1 also in test_sharding (two processes, and BatchNorm + Dropout): slow here
@pytest.mark.parametrize("first, then", [(1, 4), pytest.param(4, 1, marks=pytest.mark.slow)])
def test_resume_on_another_number_of_devices_equals_an_uninterrupted_run(tmp_path, first, then):
    assert _worker(first, tmp_path / "resumed", stop_at=40) == ["stopped"]  # 2 chunks saved
    assert _worker(then, tmp_path / "resumed") == ["40"]  # resumed at step 40, 3 rates on 4 devices
    _worker(1, tmp_path / "reference")
    for a, b in zip(_curves(tmp_path / "resumed"), _curves(tmp_path / "reference"), strict=True):
        assert a[:3] == b[:3]
        for metric, values in a[3].items():
            np.testing.assert_allclose(
                np.array(values, float),
                np.array(b[3][metric], float),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{a[:3]} {metric}",
            )


# ---------------------------------------------------------------- 5. write errors, temporaries


def test_out_of_space_exits_cleanly_and_the_last_good_checkpoint_resumes(tmp_path, monkeypatch):
    """The second checkpoint's writing fails as orbax reports a full disk (the text it gave on a
    real full tmpfs); the first stays and resumes."""
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step > 10:
            raise ValueError(
                f"RESOURCE_EXHAUSTED: Error writing in OCDBT database at {tmp_path}: Failed to "
                f"write 18263 bytes to file 5: No space left on device [os_error_code='{errno.ENOSPC}']"
            )
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(sweep.SettingError, match=rf"cannot write to {tmp_path}: No space left"):
        sweep.run_sweep(TINY, tmp_path)
    monkeypatch.undo()
    resumed_at = []
    document = sweep.run_sweep(TINY, tmp_path, on_resume=resumed_at.append)
    assert resumed_at == [10]  # the checkpoint of the first chunk survived
    assert _without_timing(document) == _without_timing(sweep.run_sweep(TINY, tmp_path / "ref"))


def test_temporaries_of_a_crash_are_removed_and_nothing_else(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    ours = [".summary.md.x9", ".results.json.q", ".write_test.123"]
    theirs = [".other.tmp", "notes.txt", ".summary.mdx"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    orphan = tmp_path / checkpoint.DIRECTORY / f"10{ocp.step.TMP_DIR_SUFFIX}"  # orbax's, of a crash
    orphan.mkdir(parents=True)
    sweep.run_sweep(TINY, tmp_path)
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(ours) and set(theirs) <= left
    assert not orphan.exists()


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        files.atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------- 6. bad inputs


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x_train=np.zeros((64, 0)), x_test=np.zeros((16, 0))), r"x_train has no features"),
        (dict(x_train=np.full((64, 4), 1e39)), r"x_train holds 1e\+39, beyond float32's range"),
        (dict(x_train=np.ones((64, 4)) * 1j), r"x_train is complex"),
        (dict(y_train=np.arange(64) % 3 * 2), r"skip 1 class\(es\) .* largest label 4: 3;"),
        (
            dict(y_test=np.r_[np.arange(15) % 3, 2**32 + 1]),
            r"skip 4294967294 class.*: 3…4294967296",
        ),
        (dict(num_classes=np.asarray(2)), r"y_train has label 2, out of range for 2 classes"),
        (dict(num_classes=np.asarray([3])), r"num_classes must be a scalar integer array"),
    ],
)
def test_bad_npz_contents_are_clear_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        data.load_npz(str(_npz(tmp_path / "d.npz", **change)))


def test_num_classes_in_the_npz_allows_absent_classes(tmp_path):
    d = data.load_npz(str(_npz(tmp_path / "d.npz", num_classes=np.asarray(5))))
    assert d.num_classes == 5


def test_corrupted_npz_members_are_named(tmp_path):
    path = _npz(tmp_path / "d.npz")
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF  # inside x_train's data: a bad CRC
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"array x_train is corrupted \(Bad CRC-32"):
        data.load_npz(str(path))


def test_cnn1d_needs_a_minimum_length():
    with pytest.raises(ValueError, match=r"cnn1d needs sequences of at least 3 features"):
        models.make_model("cnn1d", 1, 10)
    models.make_model("cnn1d", 3, 10)


def _cli(*args, env=None):
    tiny = [
        "--steps=10",
        "--eval_every=5",
        "--num_lrs=1",
        "--seeds=1",
        "--hidden=8",
        "--batch_size=16",
    ]
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *tiny, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir="], "error: --workdir: must not be empty"),
        (["--hidden=", "--workdir=unused"], "error: --hidden: give at least one hidden width"),
        (["--first_seed=4294967296"], "error: --first_seed: must be an integer in [0, 2**32)"),
        (["--process_id=1"], "error: --process_id: needs --distributed"),
        (["--coordinator_address=localhost:1"], "error: --coordinator_address: needs --num_proc"),
        (["--distributed"], "error: --distributed: jax.distributed.initialize failed: "),
        (["--dataset=mnist1d"], "error: --dataset: mnist1d: cannot write its cache"),
    ],
)
def test_cli_inputs_that_used_to_be_tracebacks_exit_2(tmp_path, args, message):
    (tmp_path / "file").write_text("")
    proc = _cli(
        f"--workdir={tmp_path / 'w'}",
        *args,
        env={"SOFTCLS_CACHE": str(tmp_path / "file" / "cache")},
    )
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "w").exists()  # nothing written before every input is valid


# ---------------------------------------------------------------- 7. kill -9 at random moments

KILL_ARGS = [
    "--loss=ce,mse",
    "--num_lrs=3",
    "--seeds=2",
    "--steps=400",
    "--eval_every=20",
    "--hidden=16",
    "--batch_size=32",
]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(14)
    work = tmp_path / "killed"
    sweep_cmd = [sys.executable, "-u", "-m", "experiments.sweep", *KILL_ARGS]
    for _ in range(5):
        proc = subprocess.Popen(
            [*sweep_cmd, f"--workdir={work}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines = int(rng.integers(0, 4))  # after 0-3 progress lines (0: during start-up)...
        for line in proc.stdout:
            if line.startswith("[") and (lines := lines - 1) < 0:
                break
        try:
            proc.wait(timeout=float(rng.uniform(0, 0.5)))  # ...and a random moment later
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:  # it may have finished within the random delay: nothing to kill
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = subprocess.run(
        [*sweep_cmd, f"--workdir={work}"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    reference = subprocess.run(
        [*sweep_cmd, f"--workdir={tmp_path / 'ref'}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert reference.returncode == 0, reference.stderr
    load = lambda w: _without_timing(json.loads((w / "results.json").read_text()))
    assert load(work) == load(tmp_path / "ref")
    assert not [p for p in work.iterdir() if p.name.startswith(".") and p.name != ".lock"]
