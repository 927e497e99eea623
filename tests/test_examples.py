import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ["direct_training_with_components.py", "functional_training_example.py", "structured_config_training.py"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
    out = subprocess.run([sys.executable, os.path.join("examples", name)], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "agent steps" in out.stdout or "evaluated mean return" in out.stdout
