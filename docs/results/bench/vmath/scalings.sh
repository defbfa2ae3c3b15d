#!/bin/bash
# Issue 21 item 3: EKFAC's scalings every k steps (--scalings-period k) on the
# default autoencoder, 200 steps, against SGD in the same batch of runs.
B=${KFAC:-target/release/kfac}
O=${OUT:-out/scalings}
mkdir -p $O
$B train --optimizer sgd --threads 2 --quiet --out $O/sgd > /dev/null
for k in 1 2 5 20; do $B train --optimizer ekfac --scalings-period $k --threads 2 --quiet --out $O/ekfac-s$k > /dev/null; done
python3 - "$O" <<'PY'
import json, sys
o = sys.argv[1]
sgd = json.load(open(f"{o}/sgd/metrics.json"))
base = sgd["seconds"] / len(sgd["steps"])
print("| scalings period | final train loss | final test loss | s/step | vs SGD |")
print("|---|---|---|---|---|")
for k in [1, 2, 5, 20]:
    m = json.load(open(f"{o}/ekfac-s{k}/metrics.json"))
    s = m["seconds"] / len(m["steps"])
    print(f"| {k} | {m['final_loss']:.2f} | {m['final_test_loss']:.2f} | {s:.3f} | {s / base:.2f} |")
print(f"\nSGD: {base:.3f} s/step")
PY
