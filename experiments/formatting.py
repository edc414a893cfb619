"""Table rows shared by an experiment and the report (no flags here: importing it defines none)."""

from __future__ import annotations


def confident_start_row(r: dict) -> str:
    """One table row; a loss that diverged at every learning rate says so."""
    ref = "" if r["reference"] is None else f"{r['reference']:.1f}"
    if r["test_accuracy_mean"] is None:
        return f"| {r['model']} | {r['start']} | {r['loss']} | – | diverged at every lr | {ref} |"
    return (
        f"| {r['model']} | {r['start']} | {r['loss']} | {r['learning_rate']:.3g} | "
        f"{r['test_accuracy_mean']:.1f} ± {r['test_accuracy_std']:.1f} | {ref} |"
    )


def square_loss_table(rows: list[dict]) -> str:
    """square_loss_classes' table: per C and loss the choice made on validation."""
    lines = [
        "| C | loss | lr | k | M | val accuracy (%) | test accuracy (%) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["diverged_everywhere"]:
            lines.append(f"| {r['classes']} | {r['loss']} | diverged | | | | |")
            continue
        k = "" if r["k"] is None else f"{r['k']:g}"
        m = "" if r["M"] is None else f"{r['M']:g}"
        lines.append(
            f"| {r['classes']} | {r['loss']} | {r['learning_rate']:.3g} | {k} | {m} | "
            f"{r['val_accuracy']:.1f} | {r['test_accuracy']:.1f} |"
        )
    return "\n".join(lines)


def within(row: dict, points: float = 3.0) -> str:
    """``yes``/``NO``: is the row's mean test accuracy within ``points`` of its ``paper`` value
    (empty without one)."""
    if row.get("paper") is None or row.get("test_accuracy_mean") is None:
        return ""
    return "yes" if abs(row["test_accuracy_mean"] - row["paper"]) <= points else "NO"
