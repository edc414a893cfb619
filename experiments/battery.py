r"""An adversarial battery: every bad input exits 2 with one line, and no rerun is silently wrong.

  python -m experiments.battery --workdir=runs/battery
  python -m experiments.battery --workdir=runs/battery --only=flags,npz   # some categories

Re-creates the cases of issue 14 (over 150) as command lines of ``experiments.sweep`` with tiny
settings: bad flags, bad npz files it generates, float32 ranges, label problems, workdir lock and
overwrite, out-of-space writes (``RLIMIT_FSIZE``), checkpoint corruption (flipped bytes, wrong
step, wrong learning rate in the state, short history, …), changed data or versions, and ``kill -9``
at seeded random moments followed by a resume (also on another number of devices), compared with an
uninterrupted run. Prints a table per category: cases, exit-2 count (one line, ``error: …``),
tracebacks (any other failure: exit status not 0 or 2, a traceback, more than one line) and silently
wrong results (exit 0 where an error was due, results that differ from the uninterrupted run, or a
corrupted checkpoint that yields results). Exits 1 if any traceback or silently wrong result.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from . import checkpoint_edits
from .cli import fail, make_workdir, number, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/battery", "Where the cases' files and workdirs go.")
flags.DEFINE_string("jobs", "2", "Cases run at once.")
flags.DEFINE_list("only", [], "Run only these categories (default: all).")

TINY = ["--steps=10", "--eval_every=5", "--num_lrs=1", "--seeds=1", "--hidden=8", "--batch_size=16"]
KILL = [
    "--loss=ce,mse",
    "--num_lrs=3",
    "--seeds=2",
    "--steps=300",
    "--eval_every=20",
    "--hidden=16",
    "--batch_size=32",
]
# short and stable: compared to rtol 1e-5
DEVICES = [
    "--loss=ce,mse",
    "--lrs=0.01,0.1,0.5",
    "--seeds=2",
    "--steps=60",
    "--eval_every=20",
    "--hidden=16",
    "--batch_size=64",
]
SWEEP = [sys.executable, "-u", "-m", f"{__package__}.sweep"]


@dataclasses.dataclass
class Outcome:
    """What a case did: ``exit2`` (the one-line error it owed), ``ok`` (ran and was right),
    ``traceback`` (any other failure) or ``wrong`` (silently wrong); ``detail`` says why."""

    kind: str
    detail: str = ""


@dataclasses.dataclass
class Case:
    category: str
    name: str
    run: Callable[[pathlib.Path], Outcome]


def sweep(args: Sequence[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SWEEP, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def judge(proc: subprocess.CompletedProcess, want_error: bool, contains: str = "") -> Outcome:
    """Exit 2 with one ``error:`` line (containing ``contains``) where an error is due."""
    lines = proc.stderr.strip().splitlines()
    if proc.returncode not in (0, 2) or "Traceback" in proc.stderr:
        return Outcome("traceback", f"exit {proc.returncode}: {(lines or [''])[-1][:150]}")
    if proc.returncode == 2:
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return Outcome("traceback", f"exit 2 but {len(lines)} lines: {proc.stderr[:150]}")
        if not want_error:
            return Outcome("wrong", f"refused a valid run: {lines[0][:150]}")
        if contains not in lines[0]:
            return Outcome("wrong", f"expected {contains!r} in {lines[0][:150]}")
        return Outcome("exit2", lines[0])
    return Outcome("wrong", "exit 0 where an error was due") if want_error else Outcome("ok")


def results_text(workdir: pathlib.Path) -> str:
    document = json.loads((workdir / "results.json").read_text())
    document.pop("timing")
    document.pop("environment", None)  # devices differ between device counts
    return json.dumps(document, sort_keys=True)


def close_results(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Every config's curves equal to float32 rounding (another device count)."""
    load = lambda w: json.loads((w / "results.json").read_text())["configs"]
    for x, y in zip(load(a), load(b), strict=True):
        if {k: v for k, v in x.items() if k not in ("curves", "final")} != {
            k: v for k, v in y.items() if k not in ("curves", "final")
        }:
            return False
        for m, values in x["curves"].items():
            u, v = np.array(values, float), np.array(y["curves"][m], float)
            if not np.allclose(u, v, rtol=1e-5, atol=1e-6, equal_nan=True):
                return False
    return True


# ------------------------------------------------------------------------------------ cases


def flag_cases() -> list[Case]:
    bad = [
        "--loss=hinge",
        "--loss=",
        "--loss=ce,ce",
        "--lrs=0",
        "--lrs=-1",
        "--lrs=fast",
        "--lrs=nan",
        "--lrs=inf",
        "--lrs=0.1,0.1",
        "--lr_min=0",
        "--lr_min=1 --lr_max=0.1",
        "--num_lrs=0",
        "--num_lrs=x",
        "--seeds=0",
        "--seeds=-1",
        "--seeds=1.5",
        "--first_seed=-1",
        "--first_seed=4294967296",
        "--first_seed=4294967295 --seeds=2",
        "--data_seed=-1",
        "--data_seed=4294967296",
        "--steps=0",
        "--steps=-5",
        "--steps=1e3",
        "--batch_size=0",
        "--batch_size=100000",
        "--eval_every=0",
        "--hidden=0",
        "--hidden=-8",
        "--hidden=8,",
        "--hidden=",
        "--model=resnet",
        "--activation=swish",
        "--optimizer=lbfgs",
        "--schedule=step",
        "--dataset=cifar",
        "--dataset=npz:",
        "--workdir=",
        "--axis=foo=1",
        "--axis=weight_decay=",
        "--axis=learning_rate=0.1",
        "--axis=momentum=1",
        "--axis=label_smoothing=1.5",
        "--axis=warmup_steps=2.5",
        "--axis=k=1 --loss=ce",
        "--weight_decay=-1",
        "--momentum=0.5 --axis=momentum=0.1",
        "--label_noise=1",
        "--num_processes=2",
        "--process_id=0",
        "--coordinator_address=localhost:1",
        "--distributed",
        "--distributed --num_processes=2 --process_id=5",
        "--no_such_flag",
        "extra_arg",
    ]
    return [
        Case("flags", b, lambda d, b=b: judge(sweep([*TINY, f"--workdir={d}/w", *b.split()]), True))
        for b in bad
    ]


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _base(n: int = 64, d: int = 4, classes: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.normal(size=(n, d)),
        y_train=np.arange(n) % classes,
        x_test=rng.normal(size=(16, d)),
        y_test=np.arange(16) % classes,
    )


def _with(**change) -> bytes:
    return _npz_bytes(**{k: v for k, v in {**_base(), **change}.items() if v is not None})


def _corrupt_member(crc: bool) -> bytes:
    raw = _npz_bytes(**_base())
    if crc:
        b = bytearray(raw)
        b[300] ^= 0xFF
        return bytes(b)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(raw)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z,
    ):
        for info in src.infolist():
            content = src.read(info)
            z.writestr(
                info.filename,
                content[: len(content) // 2] if "x_train" in info.filename else content,
            )
    return out.getvalue()


def npz_files() -> dict[str, tuple[str, bytes | None, list[str]]]:
    """name -> (category, file bytes or None for no file, extra flags)."""
    obj = io.BytesIO()
    np.save(obj, np.array([1, None], dtype=object), allow_pickle=True)
    with_obj = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(_npz_bytes(**_base()))) as src,
        zipfile.ZipFile(with_obj, "w") as z,
    ):
        for info in src.infolist():
            z.writestr(info, obj.getvalue() if "x_train" in info.filename else src.read(info))
    npy = io.BytesIO()
    np.save(npy, np.zeros((4, 4)))
    base = _npz_bytes(**_base())
    x = _base()["x_train"]
    y = _base()["y_train"]
    cases = {
        "missing file": ("npz", None, []),
        "not a zip": ("npz", b"hello world", []),
        "single .npy": ("npz", npy.getvalue(), []),
        "empty file": ("npz", b"", []),
        "truncated file": ("npz", base[: len(base) // 2], []),
        "bad CRC member": ("npz", _corrupt_member(True), []),
        "truncated member": ("npz", _corrupt_member(False), []),
        "object array": ("npz", with_obj.getvalue(), []),
        "missing y_test": ("npz", _with(y_test=None), []),
        "zero features": ("npz", _with(x_train=np.zeros((64, 0)), x_test=np.zeros((16, 0))), []),
        "1-D x_train": ("npz", _with(x_train=np.zeros(64)), []),
        "3-D x_train": ("npz", _with(x_train=np.zeros((64, 2, 2))), []),
        "rows != labels": ("npz", _with(y_train=y[:60]), []),
        "features differ": ("npz", _with(x_test=np.zeros((16, 5))), []),
        "empty test split": ("npz", _with(x_test=np.zeros((0, 4)), y_test=np.zeros(0, int)), []),
        "NaN feature": ("npz", _with(x_train=np.where(np.eye(64, 4) > 0, np.nan, x)), []),
        "inf feature": ("npz", _with(x_test=np.full((16, 4), np.inf)), []),
        "complex features": ("npz", _with(x_train=x * 1j), []),
        "string features": ("npz", _with(x_train=np.full((64, 4), "a")), []),
        "float labels": ("npz", _with(y_train=y + 0.5), []),
        "bool labels": ("npz", _with(y_train=y > 0), []),
        "one class": ("npz", _with(y_train=np.zeros(64, int), y_test=np.zeros(16, int)), []),
        "num_classes array": ("npz", _with(num_classes=np.array([3])), []),
        "num_classes float": ("npz", _with(num_classes=np.array(3.0)), []),
        "num_classes 1": ("npz", _with(num_classes=np.array(1)), []),
        "num_classes 10**9": ("npz", _with(num_classes=np.array(10**9)), []),
        "cnn1d on 1 feature": (
            "npz",
            _with(x_train=x[:, :1], x_test=x[:16, :1]),
            ["--model=cnn1d"],
        ),
        "cnn1d on 2 features": (
            "npz",
            _with(x_train=x[:, :2], x_test=x[:16, :2]),
            ["--model=cnn1d"],
        ),
        "batch > train set": ("npz", _with(x_train=x[:8], y_train=y[:8]), []),
        "features 1e39": ("float32", _with(x_train=np.full((64, 4), 1e39)), []),
        "features -1e39": ("float32", _with(x_test=np.full((16, 4), -1e39)), []),
        "features 1e300": ("float32", _with(x_train=x * 1e300), []),
        "features float128 1e4000": (
            "float32",
            _with(x_train=np.full((64, 4), np.longdouble("1e4000"))),
            [],
        ),
        "stray label 99": ("labels", _with(y_train=np.r_[y[:63], 99]), []),
        "label 10**6": ("labels", _with(y_test=np.r_[np.arange(15) % 3, 10**6]), []),
        "label 2**32+1": ("labels", _with(y_train=np.r_[y[:63], 2**32 + 1]), []),
        "label 2**63-1": ("labels", _with(y_train=np.r_[y[:63], 2**63 - 1]), []),
        "label uint64 max": (
            "labels",
            _with(
                y_train=np.r_[y[:63], 0].astype(np.uint64)
                - np.r_[np.zeros(63, np.uint64), np.uint64(1)]
            ),
            [],
        ),
        "gap in labels": (
            "labels",
            _with(y_train=np.arange(64) % 3 * 2, y_test=np.arange(16) % 3 * 2),
            [],
        ),
        "negative label": ("labels", _with(y_train=np.r_[y[:63], -1]), []),
        "label >= num_classes": ("labels", _with(num_classes=np.array(2)), []),
        "test label >= num_classes": (
            "labels",
            _with(num_classes=np.array(3), y_test=np.r_[np.arange(15) % 3, 3]),
            [],
        ),
        "train labels of 1 class + test": ("labels", _with(y_train=np.zeros(64, int)), []),
        "labels as int8 -128": (
            "labels",
            _with(y_test=np.r_[np.arange(15) % 3, -128].astype(np.int8)),
            [],
        ),
    }
    return cases


def npz_cases(root: pathlib.Path) -> list[Case]:
    out = []
    for i, (name, (category, content, extra)) in enumerate(npz_files().items()):
        path = root / f"data{i}.npz"
        if content is not None:
            path.write_bytes(content)

        def run(d, path=path, extra=extra):
            return judge(sweep([*TINY, f"--dataset=npz:{path}", f"--workdir={d}/w", *extra]), True)

        out.append(Case(category, name, run))
    for name, lrs in (
        ("--lrs=1e300", "1e300"),
        ("--lrs=1e-50", "1e-50"),
        ("--lrs=1e39", "1e39"),
        ("--lr_min=1e-50 --lr_max=1", None),
    ):
        args = [f"--lrs={lrs}"] if lrs else name.split()
        out.append(
            Case(
                "float32",
                name,
                lambda d, a=args: judge(sweep([*TINY, f"--workdir={d}/w", *a]), True),
            )
        )
    for axis in (
        "init_scale=1e300",
        "init_scale=1e-50",
        "weight_decay=1e300",
        "k=1e39",
        "M=1e-300",
        "warmup_steps=1e300",
        "weight_decay=1e-300",
    ):
        args = [f"--axis={axis}", "--loss=square"]
        out.append(
            Case(
                "float32",
                axis,
                lambda d, a=args: judge(sweep([*TINY, f"--workdir={d}/w", *a]), True),
            )
        )
    (root / "cache_is_a_file").write_text("")
    out.append(
        Case(
            "npz",
            "unwritable SOFTCLS_CACHE",
            lambda d: judge(
                sweep(
                    [*TINY, "--dataset=mnist1d", f"--workdir={d}/w"],
                    env={"SOFTCLS_CACHE": str(root / "cache_is_a_file" / "c")},
                ),
                True,
                "cache",
            ),
        )
    )
    return out


def _finished(base: pathlib.Path, d: pathlib.Path) -> pathlib.Path:
    """A copy of a finished tiny sweep's workdir, its results removed."""
    w = d / "w"
    shutil.copytree(base, w)
    (w / "results.json").unlink()
    return w


def checkpoint_cases(base: pathlib.Path, reference: pathlib.Path) -> list[Case]:
    """Corrupted checkpoints of the finished sweep ``base`` (``reference``: a copy of its
    results). A case is right if it exits 2 in one line, or if what it read back was intact: some
    bytes of orbax's files hold no array data read back (every digest then matches), and the
    results must equal the uncorrupted run's."""
    import jax

    def corrupt(change: Callable[[pathlib.Path], None]) -> Callable[[pathlib.Path], Outcome]:
        def run(d: pathlib.Path) -> Outcome:
            w = _finished(base, d)
            change(w)
            proc = sweep([*TINY, f"--workdir={w}"])
            if proc.returncode == 0 and "Traceback" not in proc.stderr:
                if results_text(w) == results_text(reference):
                    return Outcome("ok", "the changed bytes held no array data read back")
                return Outcome("wrong", "a corrupted checkpoint yielded other results")
            return judge(proc, True)

        return run

    def step_dir(w: pathlib.Path) -> pathlib.Path:
        (step,) = [p for p in (w / "checkpoint").iterdir() if p.name.isdigit()]
        return step

    def files(w: pathlib.Path, item: str) -> list[pathlib.Path]:
        """The item's files, largest first (for the state: the weights' chunks)."""
        found = [p for p in (step_dir(w) / item).rglob("*") if p.is_file()]
        return sorted(found, key=lambda p: (p.stat().st_size, str(p)), reverse=True)

    def flip(item: str, which: int, where: float) -> Callable[[pathlib.Path], None]:
        def change(w: pathlib.Path) -> None:
            path = files(w, item)[which]
            raw = bytearray(path.read_bytes())
            raw[int(where * (len(raw) - 1))] ^= 0x10
            path.write_bytes(bytes(raw))

        return change

    def leaf(state: Any, i: int, value: Any) -> Any:
        leaves = jax.tree.leaves(state)
        leaves[i] = value
        return jax.tree.unflatten(jax.tree.structure(state), leaves)

    def steps(history: list[dict], *values: int) -> list[dict]:
        return [{**h, "step": v} for h, v in zip(history, values, strict=True)]

    edits: dict[str, Callable[[Any, list[dict]], tuple[Any, list]]] = {
        "wrong step": lambda s, h: (s._replace(step=np.asarray(5, np.int32)), h),
        "step beyond steps": lambda s, h: (
            s._replace(step=np.asarray(15, np.int32)),
            steps(h, 0, 5, 15),
        ),
        "wrong lr in state": lambda s, h: (
            s._replace(hparams={"learning_rate": s.hparams["learning_rate"] * 2}),
            h,
        ),
        "short history": lambda s, h: (s, h[:-1]),
        "history steps off chunking": lambda s, h: (s, steps(h, 0, 4, 10)),
        "metric of other shape": lambda s, h: (
            s,
            [{**r, "test_accuracy": np.zeros((1, 2), np.float32)} for r in h],
        ),
        "weight of other shape": lambda s, h: (leaf(s, 0, np.zeros((1, 1, 3), np.float32)), h),
        "weight as float64": lambda s, h: (
            leaf(s, 0, np.asarray(jax.tree.leaves(s)[0], np.float64)),
            h,
        ),
        "missing leaf": lambda s, h: (s._replace(params=jax.tree.leaves(s.params)[:-1]), h),
        "diverged in the future": lambda s, h: (
            s._replace(diverged_at=np.full(np.shape(s.diverged_at), 99, np.int32)),
            h,
        ),
        "another model's weights": lambda s, h: (
            s._replace(params={"other": np.zeros((1, 1, 4), np.float32)}),
            h,
        ),
    }
    cases = [
        Case("checkpoint", name, corrupt(lambda w, e=e: checkpoint_edits.edit(w, e)))
        for name, e in edits.items()
    ]
    for which in (0, 1):  # the two largest files of the state: the weights' chunks
        for where in (0.0, 0.1, 0.5, 0.9, 1.0):
            name = f"flipped bit in state file {which} at {where:.0%}"
            cases.append(Case("checkpoint", name, corrupt(flip("state", which, where))))
    for item in ("history", "meta"):
        cases.append(Case("checkpoint", f"flipped bit in {item}", corrupt(flip(item, 0, 0.5))))

    def each(item: str, change: Callable[[pathlib.Path], None]) -> Callable[[pathlib.Path], None]:
        return lambda w: [change(p) for p in files(w, item)]

    raw_changes = {
        "state truncated to half": each(
            "state", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        ),
        "state files empty": each("state", lambda p: p.write_bytes(b"")),
        "state files garbage": each("state", lambda p: p.write_bytes(b"\x00garbage" * 10)),
        "meta garbage": each("meta", lambda p: p.write_bytes(b"{not json")),
        "history removed": lambda w: shutil.rmtree(step_dir(w) / "history"),
        "meta of another format": each("meta", lambda p: p.write_text('{"format": "other"}')),
        "a file for the directory": lambda w: (
            shutil.rmtree(w / "checkpoint"),
            (w / "checkpoint").write_bytes(b"x"),
        ),
        "the earlier one-file format": lambda w: (w / "checkpoint.msgpack").write_bytes(b"x"),
    }
    cases += [Case("checkpoint", n, corrupt(c)) for n, c in raw_changes.items()]
    return cases


def _holding_lock(w: pathlib.Path) -> subprocess.Popen:
    w.mkdir(parents=True, exist_ok=True)
    code = (
        f"from softcls_jax.files import DirLock; DirLock({str(w)!r}).acquire(); "
        "print('locked', flush=True); input()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    proc.stdout.readline()
    return proc


def workdir_cases(base: pathlib.Path, reference: pathlib.Path, root: pathlib.Path) -> list[Case]:
    def locked(overwrite: bool, same: bool) -> Callable[[pathlib.Path], Outcome]:
        def run(d: pathlib.Path) -> Outcome:
            w = _finished(base, d) if same else d / "w"
            holder = _holding_lock(w)
            try:
                extra = ["--overwrite"] if overwrite else []
                out = judge(sweep([*TINY, f"--workdir={w}", *extra]), True, f"process {holder.pid}")
                if same and not (w / "checkpoint").is_dir():
                    return Outcome("wrong", "--overwrite deleted a locked sweep's files")
                return out
            finally:
                holder.kill()
                holder.wait()

        return run

    def other_settings(d: pathlib.Path) -> Outcome:
        return judge(
            sweep([*TINY, f"--workdir={_finished(base, d)}", "--steps=20"]), True, "other settings"
        )

    def overwrite_ok(d: pathlib.Path) -> Outcome:
        w = _finished(base, d)
        out = judge(sweep([*TINY, f"--workdir={w}", "--steps=20", "--overwrite"]), False)
        return (
            out
            if out.kind != "ok"
            or json.loads((w / "results.json").read_text())["settings"]["steps"] == 20
            else Outcome("wrong", "overwrite kept old settings")
        )

    def temporaries(d: pathlib.Path) -> Outcome:
        w = _finished(base, d)
        for name in (
            ".summary.md.x1",
            ".results.json.y",
            ".write_test.9",
        ):
            (w / name).write_text("x")
        (w / "mine.txt").write_text("keep")
        out = judge(sweep([*TINY, f"--workdir={w}"]), False)
        left = sorted(p.name for p in w.iterdir() if p.name.startswith(".") and p.name != ".lock")
        if out.kind == "ok" and (left or not (w / "mine.txt").exists()):
            return Outcome("wrong", f"temporaries left {left} or a foreign file removed")
        return out

    def out_of_space(limit: int) -> Callable[[pathlib.Path], Outcome]:
        def limited() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        def run(d: pathlib.Path) -> Outcome:
            w = d / "w"
            out = judge(sweep([*TINY, f"--workdir={w}"], preexec_fn=limited), True, "cannot write")
            if out.kind != "exit2":
                return out
            if [p.name for p in w.iterdir() if p.name.startswith(".") and p.name != ".lock"]:
                return Outcome("wrong", "an out-of-space write left a temporary")
            again = judge(sweep([*TINY, f"--workdir={w}"]), False)
            if again.kind != "ok":
                return again
            same = results_text(w) == results_text(reference)
            return out if same else Outcome("wrong", "the resumed results differ")

        return run

    (root / "a_file").write_text("")
    return [
        Case("workdir", "locked, same sweep", locked(False, True)),
        Case("workdir", "locked, --overwrite", locked(True, True)),
        Case("workdir", "locked, new workdir", locked(False, False)),
        Case("workdir", "locked, new, --overwrite", locked(True, False)),
        Case("workdir", "other settings", other_settings),
        Case("workdir", "--overwrite replaces", overwrite_ok),
        Case("workdir", "temporaries of a crash", temporaries),
        Case(
            "workdir",
            "is a file",
            lambda d: judge(sweep([*TINY, f"--workdir={root / 'a_file'}"]), True),
        ),
        Case(
            "workdir",
            "under a file",
            lambda d: judge(sweep([*TINY, f"--workdir={root / 'a_file' / 'w'}"]), True),
        ),
        Case("workdir", "out of space: plots", out_of_space(20_000)),
        Case("workdir", "out of space: checkpoint", out_of_space(600)),
    ]


def data_change_cases(root: pathlib.Path) -> list[Case]:
    def changed(kind: str) -> Callable[[pathlib.Path], Outcome]:
        def run(d: pathlib.Path) -> Outcome:
            path = d / "data.npz"
            path.write_bytes(_npz_bytes(**_base()))
            args = [*TINY, f"--dataset=npz:{path}", f"--workdir={d}/w"]
            first = judge(sweep(args), False)
            if first.kind != "ok":
                return first
            spec = d / "w" / "spec.json"
            if kind == "same shape, other values":
                path.write_bytes(_npz_bytes(**_base(seed=1)))
            elif kind == "one label changed":
                b = _base()
                b["y_train"][0] = 1
                path.write_bytes(_npz_bytes(**b))
            elif kind == "versions":
                doc = json.loads(spec.read_text())
                doc["fingerprint"]["versions"]["numpy"] = "1.0"
                spec.write_text(json.dumps(doc))
            elif kind == "no fingerprint":
                doc = json.loads(spec.read_text())
                doc.pop("fingerprint")
                spec.write_text(json.dumps(doc))
            elif kind == "spec.json garbage":
                spec.write_text("{not json")
            elif kind == "unchanged":
                out = judge(sweep(args), False)
                return out
            return judge(sweep(args), True, "")

        return run

    kinds = (
        "same shape, other values",
        "one label changed",
        "versions",
        "no fingerprint",
        "spec.json garbage",
        "unchanged",
    )
    return [Case("changed data", k, changed(k)) for k in kinds]


def kill_cases(
    reference: pathlib.Path, devices_reference: pathlib.Path, seed: int = 14
) -> list[Case]:
    rng = np.random.default_rng(seed)

    def killed(lines: int, delay: float, devices: tuple[int, int], kills: int = 1, args=KILL):
        def run(d: pathlib.Path) -> Outcome:
            w = d / "w"
            env = lambda n: {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
            for _ in range(kills):
                proc = subprocess.Popen(
                    [*SWEEP, *args, f"--workdir={w}"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    env={**os.environ, **env(devices[0])},
                )
                seen = 0
                for line in proc.stdout:
                    seen += line.startswith("[")
                    if seen > lines:
                        break
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            out = judge(sweep([*args, f"--workdir={w}"], env=env(devices[1])), False)
            if out.kind != "ok":
                return out
            if devices[0] == devices[1]:
                same = results_text(w) == results_text(reference)
            else:
                same = close_results(w, devices_reference)
            return out if same else Outcome("wrong", "resumed results differ")

        return run

    cases = []
    for _i in range(6):
        lines, delay = int(rng.integers(0, 6)), float(rng.uniform(0, 0.4))
        cases.append(
            Case("kill -9", f"after {lines} chunks + {delay:.2f} s", killed(lines, delay, (1, 1)))
        )
    cases.append(Case("kill -9", "three kills, then resume", killed(1, 0.1, (1, 1), kills=3)))
    cases.append(Case("kill -9", "1 device, resumed on 4", killed(0, 0.0, (1, 4), args=DEVICES)))
    cases.append(Case("kill -9", "4 devices, resumed on 1", killed(0, 0.0, (4, 1), args=DEVICES)))
    return cases


# ------------------------------------------------------------------------------------ main


def run_case(case: Case, d: pathlib.Path) -> Outcome:
    d.mkdir(parents=True, exist_ok=True)
    try:
        return case.run(d)
    except Exception as e:  # the battery's own failure counts as a traceback, named
        return Outcome("traceback", f"battery: {type(e).__name__}: {e}")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    jobs = number("jobs", FLAGS.jobs, int, minimum=1)
    root = make_workdir(FLAGS.workdir)
    for p in root.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    wanted = lambda c: not FLAGS.only or c in FLAGS.only
    base, reference = root / "base", root / "reference"
    setup = []
    if wanted("checkpoint") or wanted("workdir"):
        setup.append([*TINY, f"--workdir={base}"])
    if wanted("kill -9") or wanted("workdir"):
        setup.append([*KILL, f"--workdir={reference}"])
        setup.append([*DEVICES, f"--workdir={root / 'devices_reference'}"])
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for proc in pool.map(sweep, setup):
            if proc.returncode != 0:
                fail(f"the reference sweeps failed: {proc.stderr[-300:]}")
    tiny_reference = root / "tiny_reference"
    if base.exists():
        shutil.copytree(base, tiny_reference)
    cases = [
        *flag_cases(),
        *npz_cases(root),
        *checkpoint_cases(base, tiny_reference),
        *workdir_cases(base, tiny_reference, root),
        *data_change_cases(root),
        *kill_cases(reference, root / "devices_reference"),
    ]
    cases = [c for c in cases if wanted(c.category)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        outcomes = list(
            pool.map(lambda ic: run_case(ic[1], root / f"case{ic[0]}"), enumerate(cases))
        )
    table: dict[str, list[int]] = {}
    for case, out in zip(cases, outcomes, strict=True):
        row = table.setdefault(case.category, [0, 0, 0, 0, 0])
        row[0] += 1
        row[{"exit2": 1, "ok": 2, "traceback": 3, "wrong": 4}[out.kind]] += 1
        if out.kind in ("traceback", "wrong"):
            print(f"{out.kind.upper()}: [{case.category}] {case.name}: {out.detail}")
    print("\n| category | cases | exit 2 | ran right | tracebacks | silently wrong |")
    print("|---|---:|---:|---:|---:|---:|")
    for category, row in table.items():
        print(f"| {category} | " + " | ".join(map(str, row)) + " |")
    total = [sum(r[i] for r in table.values()) for i in range(5)]
    print("| **all** | " + " | ".join(map(str, total)) + " |")
    print(f"\n{total[0]} cases in {time.perf_counter() - start:.0f} s")
    if total[3] or total[4]:
        sys.exit(1)


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
