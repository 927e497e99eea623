import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ["direct_training_with_components.py", "functional_training_example.py", "structured_config_training.py",
            "walkthrough.py"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_leaves_nothing_behind(name, tmp_path):
    # the examples' temporary directories go where TMPDIR says: an empty one here, to look at afterwards
    out = subprocess.run([sys.executable, os.path.join("examples", name)], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "agent steps" in out.stdout or "evaluated mean return" in out.stdout
    if name == "walkthrough.py":  # docs/reading.md shows its truncation, number for number
        with open(os.path.join(ROOT, "docs", "reading.md")) as f:
            rows = [line.split("|")[1:7] for line in f.read().splitlines() if re.match(r"\| (1[7-9]|2[01]) \|", line)]
        lines = out.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["t", "reward"]) + 1
        printed = [line.split()[:6] for line in lines[start:start + len(rows)]]
        assert [[cell.strip() for cell in row] for row in rows] == printed
    assert [name for name in os.listdir(tmp_path) if not name.startswith("torchinductor_")] == []  # (torch's cache)


def test_walkthrough_opens_as_a_notebook_of_prose_and_code_cells():
    # jupytext's percent format: `# %%` starts a code cell, `# %% [markdown]` a prose cell of `#` lines
    with open(os.path.join(ROOT, "examples", "walkthrough.py")) as f:
        cells = f.read().split("\n# %%")[1:]
    prose = [cell.split("\n", 1)[1] for cell in cells if cell.startswith(" [markdown]")]
    assert len(prose) == 8 and len(cells) == 16
    assert all(line.startswith("#") for cell in prose for line in cell.strip().splitlines())
