#!/usr/bin/env bash
# Packs what an offline GPU machine lacks into one folder (default .offline/):
#   wheels/      the Python packages a CUDA image with jax, flax, optax and
#                orbax usually lacks (grain, array_record, jaxopt,
#                ml_collections, portpicker), at the versions installed here,
#                built for the target's Python (default 3.12, x86-64 Linux);
#   corpus.tar   the default corpus (Debian's linux-doc-6.1, English files),
#                unpacked by stage.sh at its Debian path;
#   MANIFEST     what was packed, when, and the corpus' sha256 as results
#                record it.
# Run it where pip reaches PyPI, in the repository root, with this project
# installed (`pip install -e .`) and the corpus present; then send the folder
# with the repository (24 MB) and run experiments/offline/stage.sh there.
#
#   experiments/offline/prepare.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY_TARGET=${1:-3.12}
BUNDLE=${BUNDLE:-.offline}
PACKAGES="grain array_record jaxopt ml_collections portpicker"

# The corpus where familial_jax looks for it, and its hash as results record
# it (fails with the install command when it is absent).
read -r CORPUS SHA < <(python3 -c "
from familial_jax import data
from familial_jax.data import sources
print(sources.DEFAULT_CORPUS_DIRS[0], data.default_corpus().describe()['sha256'])")
pins=$(python3 - $PACKAGES <<'EOF'
import importlib.metadata, sys
missing = []
for name in sys.argv[1:]:
  try:
    print(f"{name}=={importlib.metadata.version(name)}")
  except importlib.metadata.PackageNotFoundError:
    missing.append(name)
if missing:
  sys.exit(f"prepare: {missing} not installed here; run pip install -e . first")
EOF
)
rm -rf "$BUNDLE/wheels"
mkdir -p "$BUNDLE/wheels"
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version "$PY_TARGET" --implementation cp $platforms \
  -d "$BUNDLE/wheels" $pins
tar -cf "$BUNDLE/corpus.tar" -C / --exclude='*/translations' \
  "${CORPUS#/}"
{
  echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) for Python $PY_TARGET"
  echo "$pins"
  echo "corpus $CORPUS sha256 $SHA"
} > "$BUNDLE/MANIFEST"
cat "$BUNDLE/MANIFEST"
du -sh "$BUNDLE"
