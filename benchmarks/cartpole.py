"""CartPole-v1, cleanmetta against Stable-Baselines3: `benchmarks/compare.py --task cartpole`.

    python benchmarks/cartpole.py [compare.py flags]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["--task", "cartpole"]
    main()
