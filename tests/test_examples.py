import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ["direct_training_with_components.py", "functional_training_example.py", "structured_config_training.py"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_leaves_nothing_behind(name, tmp_path):
    # the examples' temporary directories go where TMPDIR says: an empty one here, to look at afterwards
    out = subprocess.run([sys.executable, os.path.join("examples", name)], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "agent steps" in out.stdout or "evaluated mean return" in out.stdout
    assert [name for name in os.listdir(tmp_path) if not name.startswith("torchinductor_")] == []  # (torch's cache)
