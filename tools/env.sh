#!/usr/bin/env bash
# Set up (once) the virtual environment of this project, then run a command inside it.
#
#   bash tools/env.sh python train_net.py --config-file configs/quickstart/rtdetrv2_r18_toy.py
#   bash tools/env.sh python -m pytest tests
#
# Idempotent: every step checks first and does nothing when it is already satisfied, so torch
# is installed once per environment. The environment lives outside the checkout
# ($DFINE_VENV, default ~/.cache/dfine/venv) so that fresh clones on the same machine reuse it.
#
# detectron2 is taken from the first of these that works (the step used is printed):
#   1. a detectron2 that the environment can already import;
#   2. the official repository (latest main), built from source;
#   3. pb1-detectron2==0.6 from PyPI (the v0.6 release's Python files without the C++ sources),
#      pinned by hash, installed as pure Python with a generated `detectron2._C` that has no
#      compiled ops, plus the Pillow >= 10 fix (`Image.LINEAR` was removed).
# DFINE_DETECTRON2=main asks for detectron2 main from its repository and nothing else
# (tools/test_detectron2_main.sh, in an environment of its own).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DFINE_VENV:-$HOME/.cache/dfine/venv}"
TORCH_SPEC="${DFINE_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.2}"
D2_OFFICIAL="git+https://github.com/facebookresearch/detectron2.git"
PB1_URL="https://files.pythonhosted.org/packages/60/26/48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
PB1_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# detectron2 0.6's own requirements, with upper bounds that 0.6 needs on today's registries.
D2_DEPS=(Pillow matplotlib pycocotools termcolor yacs tabulate cloudpickle tqdm tensorboard
         "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" "omegaconf>=2.1,<2.4" "hydra-core>=1.1" packaging)

say() { echo "[env] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment at $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet "$@"; }

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  say "installing $TORCH_SPEC (several GB, a few minutes, once)"
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi

if ! "$PY" -c "import fvcore, pycocotools, cv2, scipy, pytest, omegaconf, tensorboard, onnx, onnxruntime, ruff" 2>/dev/null; then
  say "installing Python dependencies"
  pip_install "${D2_DEPS[@]}" opencv-python-headless scipy pytest onnx onnxruntime ruff
fi

install_pb1_detectron2() {
  local tmp
  tmp="$(mktemp -d)"
  curl -fsSL --retry 3 -o "$tmp/pb1.tar.gz" "$PB1_URL"
  echo "$PB1_SHA256  $tmp/pb1.tar.gz" | sha256sum -c --quiet -
  tar -xzf "$tmp/pb1.tar.gz" -C "$tmp"
  local src="$tmp/pb1-detectron2-0.6"
  # Pillow >= 10 removed Image.LINEAR; it was an alias of Image.BILINEAR.
  sed -i 's/Image\.LINEAR/Image.BILINEAR/g' "$src/detectron2/data/transforms/transform.py"
  cat > "$src/detectron2/_C.py" <<'PYEOF'
"""Stand-in for detectron2's compiled extension: this detectron2 0.6 was installed as pure Python.

The DETR-family models of this project need no compiled op. Anything else that asks for one
gets a clear error instead of an ImportError at import time.
"""


def get_compiler_version():
    return "none (pure-Python install, no compiled ops)"


def get_cuda_version():
    return "none (pure-Python install, no compiled ops)"


def has_cuda():
    return False


def __getattr__(name):
    raise RuntimeError(
        f"detectron2._C.{name} is a compiled op, but this detectron2 was installed without its "
        "C++ extension (pb1-detectron2 0.6, pure Python). Install detectron2 from its official "
        "repository to use it; the models of this project do not need it."
    )
PYEOF
  # A setup.py without the C++ extension and without the import of torch at build time.
  cat > "$src/setup.py" <<'PYEOF'
from setuptools import find_packages, setup

setup(name="detectron2", version="0.6", packages=find_packages(include=["detectron2", "detectron2.*"]))
PYEOF
  rm -f "$src/pyproject.toml" "$src/setup.cfg"
  pip_install --no-build-isolation --no-deps "$src"
  rm -rf "$tmp"
}

if [ "${DFINE_DETECTRON2:-}" = "main" ]; then
  # tools/test_detectron2_main.sh: detectron2 main, built from its repository, or nothing.
  if ! "$PY" -c 'import detectron2, sys; sys.exit(detectron2.__version__.startswith("0.6"))' 2>/dev/null; then
    timeout 20 git ls-remote "${D2_OFFICIAL#git+}" HEAD >/dev/null 2>&1 || {
      say "DFINE_DETECTRON2=main, but the official repository is not reachable"; exit 1; }
    pip_install --no-build-isolation "$D2_OFFICIAL"
  fi
  say "detectron2: main, built from the official repository"
elif D2_AT="$("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))' 2>/dev/null)"; then
  say "detectron2: step 1, using the importable installation at $D2_AT"
elif timeout 20 git ls-remote "${D2_OFFICIAL#git+}" HEAD >/dev/null 2>&1 \
     && pip_install --no-build-isolation "$D2_OFFICIAL"; then
  say "detectron2: step 2, built from the official repository"
else
  say "detectron2: official repository not reachable; step 3, pb1-detectron2==0.6 as pure Python"
  install_pb1_detectron2
fi

# The editable install must point at this checkout (the environment is shared between clones).
if ! "$PY" -c "import dfine, os, sys; sys.exit(not dfine.__file__.startswith(os.path.join('$ROOT', '')))" 2>/dev/null; then
  say "installing dfine from $ROOT (editable)"
  pip_install --no-build-isolation --no-deps -e "$ROOT"
fi

export PATH="$VENV/bin:$PATH"
cd "$ROOT"
if [ "$#" -gt 0 ]; then
  exec "$@"
fi
