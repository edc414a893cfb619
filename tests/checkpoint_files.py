"""Test helpers: the files of a checkpoint directory's committed step, to corrupt them."""

import pathlib

import orbax.checkpoint as ocp


def step_dir(directory: pathlib.Path) -> pathlib.Path:
    """The directory of the latest committed step."""
    steps = ocp.utils.checkpoint_steps(directory)
    assert steps, f"no committed checkpoint in {directory}"
    return directory / str(max(steps))


def array_files(directory: pathlib.Path, item: str = "state") -> list[pathlib.Path]:
    """The files holding an item's array data (the chunks orbax's tensorstore wrote), largest
    first."""
    files = [p for p in (step_dir(directory) / item).rglob("*") if p.is_file()]
    data = [p for p in files if p.parent.name == "d"]
    return sorted(data, key=lambda p: p.stat().st_size, reverse=True)
