#!/usr/bin/env bash
# One command from a fresh clone to poems: a virtualenv, the package, then `poetry-gpt pipeline`.
#
#   scripts/quickstart.sh [RAW.txt]
#
# RAW defaults to dataset/raw.txt when it exists; otherwise the public chinese-poetry Tang poems are
# downloaded into dataset/ (needs internet). Offline, pass your own file. The run trains the `tiny`
# preset for a few minutes on 2 CPU cores (QUICKSTART_CONFIG / QUICKSTART_STEPS / QUICKSTART_RUN change that).
set -euo pipefail
cd "$(dirname "$0")/.."
RAW="${1:-}"
CONFIG="${QUICKSTART_CONFIG:-tiny}"
STEPS="${QUICKSTART_STEPS:-3000}"
RUN="${QUICKSTART_RUN:-runs/quickstart}"
VENV="${QUICKSTART_VENV:-.venv}"

if [ ! -x "$VENV/bin/poetry-gpt" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e .
fi
PG="$VENV/bin/poetry-gpt"

if [ -z "$RAW" ]; then
  if [ -f dataset/raw.txt ]; then
    RAW=dataset/raw.txt
  else
    echo "No RAW given and no dataset/raw.txt: downloading the chinese-poetry Tang poems (needs internet)..."
    "$PG" corpus download --dest dataset/chinese-poetry --out dataset/raw.txt
    RAW=dataset/raw.txt
  fi
fi

"$PG" pipeline "$RAW" --run "$RUN" --config "$CONFIG" --epochs 1 --steps-per-epoch "$STEPS" --quiet --overwrite
echo "Generate more with: $PG generate --run $RUN 春眠不觉晓"
