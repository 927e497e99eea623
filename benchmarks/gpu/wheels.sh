#!/usr/bin/env bash
# The wheels benchmarks/gpu/check.py installs on a GPU machine that has no network: what cleanmetta and its
# mettagrid and atari extras need beyond what that machine's image already holds, for CPython 3.12 (by
# default) on manylinux x86-64. Run it here, from anywhere in the checkout:
#
#     bash benchmarks/gpu/wheels.sh              # -> benchmarks/gpu/wheels/ (git ignores it)
#     bash benchmarks/gpu/wheels.sh DIR 3.11     # elsewhere, for another Python (e.g. to try them out here)
#
# pip resolves the project's requirements for that platform; a wheel is kept unless the image has its
# package. It prints each wheel kept or left out, and the total; it fails when the wheels and the rest of the
# working tree together pass the 64 MiB that may travel to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="${1:-benchmarks/gpu/wheels}"
python="${2:-3.12}"  # the GPU machine's
limit_mib=64

# The Python packages of the GPU machine's image (Python 3.12, torch 2.11 with CUDA; its package list as
# published 2026-11-17), names normalised as pip does.
image="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp"
image=$(echo $image)  # one line, one space between names
# Carried although the image has them: pydantic (mettagrid's) needs typing-extensions >= 4.16, and the
# image's version is not known; a newer typing-extensions serves older code too.
carry_anyway="typing-extensions"

# The project's requirements and its mettagrid and atari extras, less the packages the image has (pip would
# otherwise fetch torch's CUDA build, about 1 GB, only for it to be left out).
requirements=$(python3 - "$image" <<'EOF'
import re, sys, tomllib
image = set(sys.argv[1].split())
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["mettagrid"] \
        + project["optional-dependencies"]["atari"]:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    if re.sub(r"[-_.]+", "-", name).lower() not in image:
        print(requirement)
EOF
)
echo "requirements beyond the image: $(echo $requirements)"

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
# shellcheck disable=SC2086  # one argument per requirement
python3 -m pip download -q --disable-pip-version-check -d "$download" --only-binary=:all: --python-version "$python" \
    --implementation cp --abi "cp${python/./}" --abi abi3 --abi none --platform manylinux_2_34_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any $requirements \
    > "$download/pip.log" 2>&1 || {
    grep -v "^WARNING: Location" "$download/pip.log" >&2
    echo "error: pip could not download the wheels (its message is above)" >&2
    exit 1
}

mib() { awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 1048576 }'; }
rm -rf "$dest"
mkdir -p "$dest"
for wheel in "$download"/*.whl; do
    file=$(basename "$wheel")
    name=$(echo "${file%%-*}" | tr '[:upper:]_.' '[:lower:]--')
    if [[ " $image " == *" $name "* && " $carry_anyway " != *" $name "* ]]; then
        printf '  left out  %-60s the image has %s\n' "$file" "$name"
    else
        cp "$wheel" "$dest/"
        printf '  kept      %-60s %6s MiB\n' "$file" "$(mib "$(stat -c %s "$wheel")")"
    fi
done

wheels=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null \
    | awk '/\ttotal$/ {sum += $1} END {print sum + 0}')  # xargs may split the list: one total per part
total=$((wheels + tree))
printf 'wheels: %d files, %s MiB in %s; with the rest of the working tree %s MiB of %d MiB\n' \
    "$(ls "$dest"/*.whl | wc -l)" "$(mib "$wheels")" "$dest" "$(mib "$total")" "$limit_mib"
if (( total > limit_mib * 1048576 )); then
    echo "error: the wheels and the working tree pass the $limit_mib MiB that may travel; carry fewer wheels or" \
         "move large untracked files out of the checkout" >&2
    exit 1
fi
