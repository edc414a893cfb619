"""Table rows shared by an experiment and the report (no flags here: importing it defines none)."""

from __future__ import annotations


def confident_start_row(r: dict) -> str:
    """One table row; a loss that diverged at every learning rate says so."""
    ref = "" if r["reference"] is None else f"{r['reference']:.1f}"
    if r["test_accuracy_mean"] is None:
        return f"| {r['model']} | {r['start']} | {r['loss']} | – | diverged at every lr | {ref} |"
    return (f"| {r['model']} | {r['start']} | {r['loss']} | {r['learning_rate']:.3g} | "
            f"{r['test_accuracy_mean']:.1f} ± {r['test_accuracy_std']:.1f} | {ref} |")  # fmt: skip
