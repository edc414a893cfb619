r"""Runs every experiment and gathers their figures and numbers into one report.md.

  python -m experiments.report                          # full settings
  python -m experiments.report --fast                   # a quick look
  python -m experiments.report --publish=docs/report    # full settings, then update the docs

Each experiment runs as its own process (``python -m experiments.NAME``) into a folder of --workdir
(``runs/report``, git-ignored), beside its stdout log and checkpoints; the report embeds their PNGs
and sets every number beside its reference value. ``--publish=DIR`` then copies report.md and only the
PNGs it embeds, at the same relative paths, into DIR, so the published copy's links resolve and no run
output (logs, checkpoints, per-run folders) ever lands in the docs.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

from softcls_jax.files import atomic_write
from softcls_jax.results import atomic_write_json, atomic_write_text

from .cli import FlagError, fail, make_workdir, parse_flags
from .formatting import confident_start_row, square_loss_table, within

FLAGS = flags.FLAGS
flags.DEFINE_bool("fast", False, "Smaller settings for a quick look; numbers are then rougher.")
flags.DEFINE_string(
    "workdir", "runs/report", "Output directory: report.md and one folder per experiment."
)
flags.DEFINE_list(
    "only",
    [],
    "Run only these experiments (default: all); the report still shows every experiment whose "
    "results are in --workdir.",
)
flags.DEFINE_bool(
    "render_only",
    False,
    "Run nothing: rebuild report.md from the results already in --workdir.",
)
flags.DEFINE_string(
    "publish",
    None,
    "Also copy report.md and the PNGs it embeds (same relative paths) into this directory, "
    "e.g. docs/report; nothing else of the run.",
)

FAST = {
    "error_surface": ["--points=81"],
    "gradients": ["--points=120"],
    "confident_start": ["--epochs=5", "--seeds=3", "--lrs=0.1,1,10,100"],
    "calibration": ["--steps=1500", "--seeds=2"],
    "label_noise": ["--steps=500", "--seeds=2", "--fractions=0,0.3,0.6"],
    "mnist1d_baselines": ["--steps=1000", "--seeds=2"],
    "mnist_cnn": [
        "--steps=300",
        "--seeds=2",
        "--widths=0.5,1",
        "--depths=1,2",
        "--study_seeds=1",
        "--resnet_steps=200",
        "--resnet_seeds=1",
    ],
    "square_loss_classes": ["--classes=10,100", "--steps=300", "--seeds=1"],
    "sweep": ["--loss=ce,mse", "--steps=500", "--seeds=2"],
}
EXPERIMENTS = tuple(FAST)


def run_all(workdir: pathlib.Path, fast: bool, only: Sequence[str]) -> None:
    """Runs the experiments, each into ``workdir/NAME`` with its stdout and ``run.json`` (wall
    seconds, and whether it ran with ``--fast``), so a later render knows how each was made."""
    for name in only or EXPERIMENTS:
        args = [sys.executable, "-m", f"{__package__}.{name}", f"--workdir={workdir / name}"]
        if name == "sweep":
            args.append("--overwrite")
        args += FAST[name] if fast else (["--loss=ce,mse"] if name == "sweep" else [])
        print(f"running {name} ...", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"{name} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
        (workdir / name / "stdout.txt").write_text(proc.stdout)
        atomic_write_json(workdir / name / RUN_FILE, {"seconds": seconds, "fast": fast})


RUN_FILE = "run.json"


def runs(workdir: pathlib.Path) -> dict[str, dict]:
    """Each experiment's ``run.json`` in ``workdir``: how the run that wrote its results was made."""
    return {name: run for name in EXPERIMENTS if (run := _load(workdir, name, RUN_FILE))}


def _load(workdir: pathlib.Path, name: str, file: str) -> dict | None:
    path = workdir / name / file
    return json.loads(path.read_text()) if path.exists() else None


def _section(title: str, figure: str, columns: Sequence[str], align: str) -> list[str]:
    """A section's heading, its figure and its table's header; ``align``: ``l``/``r`` per column."""
    alt = pathlib.Path(figure).stem.replace("_", " ")
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return [f"## {title}", "", f"![{alt}]({figure})", "", "| " + " | ".join(columns) + " |", rule]


def _closing(text: str) -> list[str]:
    return ["", text, ""]


def render(workdir: pathlib.Path, made: dict[str, dict]) -> str:
    fast = [name for name, run in made.items() if run["fast"]]
    settings = (
        "full" if not fast else f"--fast (smaller runs, rougher numbers) for {', '.join(fast)}"
    )
    out = [
        "# softcls-jax report",
        "",
        f"Settings: {settings}. "
        "Every number below was written by its experiment's run (each experiment's wall time "
        "is at the end); references are beside them.",
        "",
    ]
    if es := _load(workdir, "error_surface", "error_surface.json"):
        out += _section(
            "1. Error surface (C13)",
            "error_surface/error_surface.png",
            ["where", "CE", "MSE", "‖∂CE/∂z‖", "‖∂MSE/∂z‖"],
            "lrrrr",
        )
        for where, v in es["corners"].items():
            out.append(
                f"| {where} | {v['ce']:.3g} | {v['mse']:.3g} | {v['ce_grad_norm']:.3g} | {v['mse_grad_norm']:.3g} |"
            )
        out += _closing(
            "Expected (C13): MSE is flat (gradient ≈ 0) in the wrong-but-confident corner, CE is steep."
        )
    if gr := _load(workdir, "gradients", "gradients.json"):
        out += _section(
            "2. Gradient against confidence (C11)",
            "gradients/gradients.png",
            ["ŷ_p", "CE ‖∂L/∂z‖", "CE ŷ_p − 1", "MSE ‖∂L/∂z‖", "MSE 2ŷ_p(1 − ŷ_p)²"],
            "rrrrr",
        )
        for r in gr["table"]:
            out.append(
                f"| {r['p_target']:.3g} | {r['ce_full']:.3g} | {r['ce_target_path']:.3g} | "
                f"{r['mse_full']:.3g} | {r['mse_target_path']:.3g} |"
            )
        out += _closing(
            "Expected (C11): CE's push stays near 1 when wrong; MSE's vanishes as ŷ_p → 0."
        )
    if cs := _load(workdir, "confident_start", "confident_start.json"):
        out += _section(
            "3. Confidently wrong start (C13, Golik et al. 2013)",
            "confident_start/confident_start.png",
            ["model", "start", "loss", "lr (chosen on val)", "test accuracy (%)", "reference (%)"],
            "lllrrr",
        )
        out += [confident_start_row(r) for r in cs["rows"]]
        d, ref = cs["diagnostics"], cs["diagnostics_reference"]
        out += _closing(
            "Protocol and reference: the digits essay's companion code (digits / 16, 1,077 / 270 / "
            "450 stratified split, output weights of std 0.01 or 4.0, CE vs ½ Σ (p − y)², SGD batch "
            f"32, {cs['epochs']} epochs). Selection: each learning rate is chosen by mean validation "
            "accuracy over seeds 0–2 (ties to the smaller rate); test accuracy is then reported over "
            f"seeds 0–{cs['seeds'] - 1}. Confident start of softmax regression, ours [reference]: "
            f"{d['tiny_p']:.0f} [{ref['tiny_p']}] training digits with p_true < 1e-8, where the "
            f"logit-gradient norm averages {d['se_grad_norm']:.3f} [{ref['se_grad_norm']}] for "
            f"squared error and {d['ce_grad_norm']:.3f} [{ref['ce_grad_norm']}] for CE; test loss "
            f"{d['test_loss']:.2f} [{ref['test_loss']}] nats; mean top probability "
            f"{d['mean_top_p']:.3f} [{ref['mean_top_p']}]."
        )
    if ca := _load(workdir, "calibration", "calibration.json"):
        out += _section(
            "4. Calibration (C14, Guo et al. 2017)",
            "calibration/reliability.png",
            [
                "loss",
                "T",
                "accuracy before → after (%)",
                "ECE before → after",
                "NLL before → after",
            ],
            "lrrrr",
        )
        for r in ca["summary"]:
            if r.get("diverged"):
                out.append(f"| {r['loss']} | diverged | | | |")
                continue
            out.append(
                f"| {r['loss']} | {r['temperature']:.3f} | {100 * r['accuracy_before']:.2f} → "
                f"{100 * r['accuracy_after']:.2f} | {r['ece_before']:.4f} → {r['ece_after']:.4f} | "
                f"{r['nll_before']:.3f} → {r['nll_after']:.3f} |"
            )
        bound = any(r.get("temperature_at_bound") for r in ca["summary"])
        out += _closing(
            "Protocol: the MNIST-1D paper's MLP and recipe (Adam 1e-2, batch 100, 6000 steps), so "
            "nothing is selected; T is fitted per model on a 20 % validation split of the training "
            "data, ECE (15 bins) and NLL are measured on test. Expected (Guo et al.): temperature "
            "scaling lowers ECE and leaves accuracy unchanged."
            + (" A fitted T reached the end of its search interval." if bound else "")
        )
    if ln := _load(workdir, "label_noise", "label_noise.json"):
        out += _section(
            "5. Label noise (C15)",
            "label_noise/label_noise.png",
            ["noise", "loss", "test accuracy (%)", "final train CE"],
            "rlrr",
        )
        for r in ln["rows"]:
            if r["runs"]:
                out.append(
                    f"| {r['fraction']:g} | {r['loss']} | {r['test_accuracy_mean']:.1f} ± "
                    f"{r['test_accuracy_std']:.1f} | {r['train_ce_mean']:.3f} |"
                )
        out += _closing(
            "Selection: none; one learning rate for every loss and noise level "
            f"({ln.get('settings', {}).get('lr', 'the default')}). Expected (C15): with noisy "
            "labels the training CE stays above 0."
        )
    if sq := _load(workdir, "square_loss_classes", "square_loss_classes.json"):
        out += [
            "## 6. Square loss as the number of classes grows (Hui & Belkin 2021)",
            "",
            "![square loss classes](square_loss_classes/square_loss_classes.png)",
            "",
            square_loss_table(sq["rows"]),
        ]
        out += _closing(
            "Selection: the learning rate (and k, M of the rescaled square loss) with the highest "
            "mean validation accuracy over seeds; test accuracy only reported. Expected (Demirkaya "
            "et al. 2020; Hui & Belkin 2021): plain square loss falls behind CE as C grows; the "
            "rescaling (k on the true class, target M) closes the gap."
        )
    if mb := _load(workdir, "mnist1d_baselines", "mnist1d_baselines.json"):
        out += _section(
            "7. MNIST-1D baselines and the shuffled control (Greydanus & Kobak)",
            "mnist1d_baselines/mnist1d_baselines.png",
            [
                "inputs",
                "model",
                "loss",
                "test accuracy (%)",
                "paper (CE, %)",
                "notebook, last step (CE, %)",
                "within 3 points",
            ],
            "llllrrl",
        )
        for r in mb["rows"]:
            acc = (
                "diverged"
                if r["test_accuracy_mean"] is None
                else f"{r['test_accuracy_mean']:.1f} ± {r['test_accuracy_std']:.1f}"
            )
            ref = lambda key, r=r: "" if r.get(key) is None else f"{r[key]:g}"
            out.append(
                f"| {r.get('inputs', 'original')} | {r['model']} | {r['loss']} | {acc} | "
                f"{ref('paper')} | {ref('notebook')} | {within(r)} |"
            )
        st = mb["settings"]
        out += _closing(
            f"Protocol: the paper's fixed recipe (Adam, lr {st['lr']:g}, batch {st['batch_size']}, "
            f"{st['steps']} steps, test accuracy at the last step), {st['seeds']} seeds; nothing is "
            "selected. Shuffled: one fixed permutation of the 40 positions (NumPy seed "
            f"{st.get('shuffle_seed', 42)}, as the paper's notebook) for every example. References: "
            "the paper's figure, and its notebook's last-step numbers (one seed)."
        )
    if mc := _load(workdir, "mnist_cnn", "mnist_cnn.json"):
        out += _section(
            "8. MNIST with the 2-D CNN: losses and calibration (Hui & Belkin 2021; "
            "Guo et al. 2017)",
            "mnist_cnn/mnist_cnn.png",
            [
                "loss",
                "lr (chosen on val)",
                "val accuracy (%)",
                "test accuracy (%)",
                "T",
                "test ECE before → after",
                "test NLL before → after",
            ],
            "lrrrrrr",
        )
        cal = {r["loss"]: r for r in mc["calibration"]}
        for b in mc["losses"]:
            c = cal.get(b["loss"])
            if c is None or c.get("diverged"):
                continue
            out.append(
                f"| {b['loss']} | {b['learning_rate']:g} | {100 * b['val_accuracy']:.2f} | "
                f"{100 * b['test_accuracy']:.2f} | {c['temperature']:.3f} | "
                f"{c['ece_before']:.4f} → {c['ece_after']:.4f} | "
                f"{c['nll_before']:.3f} → {c['nll_after']:.3f} |"
            )
        st, parity = mc["settings"], mc.get("parity")
        gap = (
            ""
            if parity is None
            else (
                f" Square loss − CE: {parity['square_minus_ce']:+.2f} points on test (reference: Hui & "
                f"Belkin report parity on MNIST; tolerance ±{mc['square_parity']:g}): "
                f"{'within' if parity['within'] else 'NOT within'}."
            )
        )
        out += _closing(
            f"Protocol: {st['dataset']} ({st['train']} train / {st['val']} validation / "
            f"{st['test']} test), LeNet-5-like cnn2d, Adam, batch {st['batch_size']}, {st['steps']} "
            f"steps, {st['seeds']} seeds. Selection: {mc['selection']['rule']}; test metrics only "
            f"reported. T fitted per model on the validation split.{gap}"
        )
        out += [
            "| width × | dense layers | parameters | test accuracy (%) | test ECE before T | "
            "test ECE after T |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in mc["architectures"]:
            if r.get("diverged"):
                out.append(f"| {r['width']:g} | {r['depth']} | | diverged | | |")
                continue
            out.append(
                f"| {r['width']:g} | {r['depth']} | {r['params']} | "
                f"{100 * r['accuracy_before']:.2f} | {r['ece_before']:.4f} ± "
                f"{r['ece_before_std']:.4f} | {r['ece_after']:.4f} |"
            )
        out += _closing(
            f"Width and depth: CE at the rate chosen for CE above, {st['study_seeds']} seeds per "
            "architecture (mean ± std over seeds); width multiplies every conv's channels and dense "
            "width; depth counts hidden dense layers (2 is LeNet-5). Expected (Guo et al. 2017): "
            "ECE before temperature scaling grows with width and depth; after it, small."
        )
        if rn := mc.get("resnet"):
            out += _resnet_rows(rn, mc["square_parity"], mc["settings"]["train"])
    if (workdir / "sweep" / "summary.md").exists():
        summary = (workdir / "sweep" / "summary.md").read_text()
        body = summary.split("\n## ", 1)[1].split("\n## Diverged")[
            0
        ]  # from the table to the best lrs
        out += [
            "## 9. The default sweep",
            "",
            "![accuracy vs lr](sweep/accuracy_vs_lr.png)",
            "",
            "### " + body,
            "",
        ]
    out += ["## Run time", "", ", ".join(f"{k}: {v['seconds']:.0f} s" for k, v in made.items()), ""]
    return "\n".join(out)


_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")  # ![alt](path)


def embedded_images(markdown: str) -> list[str]:
    """The paths of the images ``markdown`` embeds, in order, each once."""
    return list(dict.fromkeys(_IMAGE.findall(markdown)))


def publish(workdir: pathlib.Path, dest: pathlib.Path) -> list[str]:
    """Copies ``workdir/report.md`` and the images it embeds into ``dest``; returns their paths.

    Relative paths are kept, so the copy's links resolve. Files already in ``dest`` stay: ``dest`` may
    hold other documents, and a copy never deletes what it did not write.
    """
    report = (workdir / "report.md").read_text()
    images = embedded_images(report)
    for rel in images:  # the report links its own figures; anything else is a bug in render()
        path = pathlib.PurePosixPath(rel)
        if path.is_absolute() or ".." in path.parts or not (workdir / path).is_file():
            raise RuntimeError(f"report.md embeds {rel!r}, not a figure of {workdir}")
    for rel in images:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest / rel, (workdir / rel).read_bytes())
    atomic_write_text(dest / "report.md", report)
    return ["report.md", *images]


def _resnet_rows(rn: dict, tolerance: float, train_size: int) -> list[str]:
    """Section 8's ResNet comparison: per loss its rate chosen on validation, test reported, and
    the square loss − CE gap against the same parity tolerance (points) as the CNN's."""
    rs = rn["settings"]
    out = [
        "| ResNet: loss | lr (chosen on val) | val accuracy (%) | test accuracy (%) | test NLL | "
        "test ECE |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for b in rn["losses"]:
        out.append(
            f"| {b['loss']} | {b['learning_rate']:g} | {100 * b['val_accuracy']:.2f} | "
            f"{100 * b['test_accuracy']:.2f} | {b['test_nll']:.3f} | {b['test_ece']:.4f} |"
        )
    acc = {b["loss"]: 100 * b["test_accuracy"] for b in rn["losses"]}
    gap = ""
    if {"ce", "square"} <= set(acc):
        diff = acc["square"] - acc["ce"]
        gap = (
            f" Square loss − CE: {diff:+.2f} points on test (tolerance ±{tolerance:g}): "
            f"{'within' if abs(diff) <= tolerance else 'NOT within'}."
        )
        if abs(diff) > tolerance:
            epochs = rs["steps"] * rs["batch_size"] / train_size
            gap += (
                f" This run is one short schedule (about {epochs:.0f} epochs at a constant rate, "
                f"{rs['seeds']} seeds, {len(rs['learning_rates'])} rates), not the reference's "
                "protocol (each loss trained to convergence with its own tuned schedule): it "
                "shows which loss is ahead at this budget, not a disagreement with the reference."
            )
    if "square" in acc:
        gap += (
            " Square loss's NLL and ECE are the softmax of scores trained toward 0 and 1, nearly "
            "uniform probabilities: no probability model without a fitted temperature (the CNN's "
            "table above fits one)."
        )
    return out + _closing(
        f"ResNet-{rs['depth']} with BatchNorm (first stage {rs['width']} channels, {rs['params']} "
        f"parameters), Adam, batch {rs['batch_size']}, {rs['steps']} steps, {rs['seeds']} seeds, "
        f"training minibatches augmented by random crops after 4 pixels of black padding (no flips: digits "
        f"are not mirror-symmetric), rates {', '.join(f'{v:g}' for v in rs['learning_rates'])}; "
        f"the same selection rule, evaluation in eval mode (BatchNorm's running statistics), "
        f"{rn['diverged']} diverged configs.{gap} Expected (Hui & Belkin 2021): square loss on "
        "par with CE on MNIST; MSE on the softmax, whose gradient vanishes on confident mistakes, "
        "behind or slower."
    )


def main(argv: Sequence[str]) -> None:
    del argv
    unknown = [name for name in FLAGS.only if name not in EXPERIMENTS]
    if unknown:
        fail(f"--only: unknown experiments {unknown}; expected some of {list(EXPERIMENTS)}")
    try:
        workdir = make_workdir(FLAGS.workdir)
        # Checked before the runs, so a bad --publish fails in a second, not after 15 minutes.
        dest = None if FLAGS.publish is None else make_workdir(FLAGS.publish, "publish")
    except FlagError as e:
        fail(str(e))
    if dest is not None and dest.resolve() == workdir.resolve():
        fail("--publish: must differ from --workdir (the report is already there)")
    try:
        if not FLAGS.render_only:
            run_all(workdir, FLAGS.fast, FLAGS.only)
        atomic_write_text(workdir / "report.md", render(workdir, runs(workdir)))
        print(f"wrote {workdir}/report.md")
        if dest is not None:
            print(f"published {', '.join(publish(workdir, dest))} to {dest}")
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
