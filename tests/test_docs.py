"""The documentation stays complete and navigable: docs/sweep.md names every flag of the sweep, the
README stays an introduction (at most 160 lines), and every relative link in the README and docs/
points to a file (and heading) that exists."""

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 160

# The flags the sweep's own modules define, read from absl in a fresh interpreter: the test
# process may have imported other experiments (each defines its own flags into the same global
# FLAGS), and absl's built-ins (--verbosity, --flagfile, --helpfull, ...) belong to absl.* modules.
_SWEEP_FLAGS = """
import json
from absl import flags
import experiments.sweep
by_module = flags.FLAGS.flags_by_module_dict()
print(json.dumps({m: sorted(f.name for f in fs) for m, fs in by_module.items()
                  if m.startswith(("experiments", "softcls"))}))
"""


def _sweep_flags() -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", _SWEEP_FLAGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_sweep_doc_names_every_sweep_flag():
    by_module = _sweep_flags()
    assert "experiments.sweep" in by_module and "experiments.cli" in by_module, by_module
    names = sorted({name for names in by_module.values() for name in names})
    assert len(names) > 30 and "loss" in names and "compilation_cache_dir" in names
    text = (DOCS / "sweep.md").read_text()
    missing = [n for n in names if not re.search(rf"(?<![\w-])--{re.escape(n)}(?!\w)", text)]
    assert not missing, (
        "docs/sweep.md does not name these flags of `python -m experiments.sweep`: "
        + ", ".join(f"--{n}" for n in missing)
        + " (add each with its help text from `python -m experiments.sweep --help`)"
    )


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines, at most {README_MAX_LINES}: move details to docs/"
    )


def _markdown_files() -> list[pathlib.Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_relative_links_resolve():
    broken = []
    for md in _markdown_files():
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in _LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            where = f"{md.relative_to(ROOT)} -> {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken relative links:\n" + "\n".join(broken)
