#!/usr/bin/env bash
# Run the test suite against detectron2 main, built from its repository, in a virtual environment of
# its own (default ~/.cache/dfine/venv-detectron2-main), as well as the release the README installs:
#
#   bash tools/test_detectron2_main.sh            # the whole suite
#   bash tools/test_detectron2_main.sh tests/test_train_net.py -x   # any pytest arguments
#
# The README's commands install detectron2 from its repository when it is reachable and fall back to
# the 0.6 release otherwise (tools/env.sh); CI runs whichever it gets. This script insists on main
# and fails when github.com cannot be reached, so a run says which detectron2 it tested.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- tests
export DFINE_VENV="${DFINE_VENV_DETECTRON2_MAIN:-$HOME/.cache/dfine/venv-detectron2-main}"
export DFINE_DETECTRON2=main
bash tools/env.sh python -c 'import detectron2; print("detectron2", detectron2.__version__, "from", detectron2.__file__)'
bash tools/env.sh python -m pytest -q -p no:cacheprovider "$@"
