"""TensorBoard events with HParams, the persistent compilation cache, the progress bar."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from softcls_jax import engine, runner

TINY = [
    "--loss=ce,mse",
    "--lrs=0.05,0.5",
    "--seeds=2",
    "--steps=20",
    "--eval_every=10",
    "--hidden=8",
    "--batch_size=32",
]


def _sweep(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_tensorboard_events_match_results_json(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    proc = _sweep(*TINY, "--lrs=0.05,1e3", "--axis", "weight_decay=0,1e-3", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    document = json.loads((tmp_path / "results.json").read_text())
    board = tmp_path / runner.TENSORBOARD
    assert len(list(board.iterdir())) == len(document["configs"]) == 16
    diverged = 0
    for config in document["configs"]:
        name = ",".join(
            f"{k}={config[k]:g}" if isinstance(config[k], float) else f"{k}={config[k]}"
            for k in ("loss", "learning_rate", "weight_decay", "seed")
        )
        events = EventAccumulator(str(board / name))
        events.Reload()
        assert set(events.Tags()["scalars"]) <= set(engine.METRICS)
        for metric in engine.METRICS:
            expected = [
                (s, v)
                for s, v in zip(config["curves"]["step"], config["curves"][metric], strict=True)
                if v is not None
            ]
            got = [(e.step, e.value) for e in events.Scalars(metric)] if expected else []
            assert [s for s, _ in got] == [s for s, _ in expected], (name, metric)
            np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6)
        diverged += config["diverged"]
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["loss"].string_value == config["loss"]
        assert math.isclose(start.hparams["learning_rate"].number_value, config["learning_rate"])
        assert math.isclose(start.hparams["weight_decay"].number_value, config["weight_decay"])
        assert start.hparams["seed"].number_value == config["seed"]
        assert "_hparams_/session_end_info" in content
    assert diverged > 0  # lr 1e3 diverges: its NaN metrics are left out, the rest still logged


def test_no_tensorboard_flag(tmp_path):
    proc = _sweep(*TINY, "--notensorboard", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / runner.TENSORBOARD).exists()


def test_compilation_cache_makes_a_rerun_compile_almost_nothing(tmp_path):
    cache = f"--compilation_cache_dir={tmp_path / 'cache'}"
    runs = {}
    for name, extra in (("first", []), ("again", []), ("other_values", ["--lrs=0.01,0.2"])):
        proc = _sweep(*TINY, cache, *extra, f"--workdir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    first, again, other = (runs[n].pop("timing") for n in ("first", "again", "other_values"))
    assert again["compile_s"] < first["compile_s"] / 4, (first, again)
    assert other["compile_s"] < first["compile_s"] / 4, (first, other)  # values are data
    assert runs["first"] == runs["again"]  # bitwise: the cached programs compute the same
    assert any(p.name.startswith("jit_") for p in (tmp_path / "cache").iterdir())


def test_no_compilation_cache_flag(tmp_path):
    proc = _sweep(
        *TINY,
        "--nocompilation_cache",
        f"--compilation_cache_dir={tmp_path / 'c'}",
        f"--workdir={tmp_path / 'w'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(terminal, capsys):
    from experiments.cli import Progress

    progress = Progress()
    progress.terminal = terminal
    record = {"test_accuracy": np.array([[0.5, np.nan]])}
    progress(10, 20, record, 1.0)
    progress(20, 20, record, 2.0)
    progress.close()
    out, err = capsys.readouterr()
    if terminal:
        assert out == "" and "20/20" in err and "diverged 1/2" in err
    else:
        assert out.splitlines()[0].startswith("[10/20]") and "diverged 1/2" in out and err == ""


def test_console_command_runs_from_any_directory(tmp_path):
    # pip install made softcls-sweep; outside the repository there is no "experiments" to import.
    script = pathlib.Path(sys.executable).parent / "softcls-sweep"
    proc = subprocess.run(
        [
            str(script),
            "--loss=ce",
            "--num_lrs=1",
            "--seeds=1",
            "--steps=10",
            "--eval_every=10",
            "--hidden=8",
            "--workdir=out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "results.json").exists()
    probe = "import importlib.util as u; print(u.find_spec('experiments'), u.find_spec('softcls_experiments') is not None)"
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert found == ["None", "True"]
