#!/usr/bin/env bash
# Peak resident memory of nanoGPT's train.py and of `apoptosis train`, same corpus (our default),
# same model (4 layers, width 128, block 64, batch 12), 200 steps each, measured by /usr/bin/time -v.
# Usage, from the repository root: bash docs/results/speed/rss_side_by_side.sh PATH/TO/nanoGPT
# (a checkout of the public nanoGPT repository; PYTHON defaults to .venv/bin/python, a virtual
# environment with this package installed). Needs GNU time (/usr/bin/time -v, Linux).
set -euo pipefail
nano=$(cd "$1" && pwd)
python=$(cd "$(dirname "${PYTHON:-.venv/bin/python}")" && pwd)/$(basename "${PYTHON:-.venv/bin/python}")
work=$(mktemp -d)
data="$nano/data/apoptosis_char"
trap 'rm -rf "$work" "$data"' EXIT

# our default corpus in nanoGPT's character format: train.bin / val.bin (uint16 ids) and meta.pkl
mkdir -p "$data"
"$python" - "$data" <<'PY'
import pickle, sys
from pathlib import Path
import numpy as np
from apoptosis.core.data import shakespeare_text
out, text = Path(sys.argv[1]), shakespeare_text()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
ids = np.array([stoi[c] for c in text], dtype=np.uint16)
cut = int(len(ids) * 0.9)  # our val_fraction: the last 10%
ids[:cut].tofile(out / "train.bin")
ids[cut:].tofile(out / "val.bin")
(out / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}))
PY

(cd "$nano" && /usr/bin/time -v "$python" train.py config/train_shakespeare_char.py --dataset=apoptosis_char \
    --device=cpu --compile=False --eval_iters=20 --log_interval=50 --block_size=64 --batch_size=12 --n_layer=4 \
    --n_head=4 --n_embd=128 --max_iters=200 --lr_decay_iters=200 --dropout=0.0 --out_dir="$work/nano-out" \
    >/dev/null 2>"$work/nano.time")
/usr/bin/time -v "$(dirname "$python")/apoptosis" train --steps 200 --runs-dir "$work" --name ours \
    >/dev/null 2>"$work/ours.time"
/usr/bin/time -v "$(dirname "$python")/apoptosis" train --steps 200 --runs-dir "$work" --name noplots \
    --set trainer.plots=false >/dev/null 2>"$work/noplots.time"

peak() { awk '/Maximum resident/ {print int($NF / 1024)}' "$1"; }
nano_mb=$(peak "$work/nano.time")
for run in nano ours noplots; do
    mb=$(peak "$work/$run.time")
    awk -v run="$run" -v mb="$mb" -v base="$nano_mb" 'BEGIN {printf "%-7s peak RSS %5d MB  (%.2fx nanoGPT)\n", run, mb, mb / base}'
done
