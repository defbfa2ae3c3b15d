"""Tables of the init study (issue 21, items 7 and 8) from run.sh's outputs.

Usage: python3 summary.py OUT > summary.md, OUT being run.sh's output
directory or the copies in runs/ (NAME.json and NAME.time).
"""
import glob
import json
import os
import re
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "out/init"


def rss_mib(name):
    text = open(os.path.join(out, name + ".time")).read()
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return kb / 1024


def first_step_at(m, target):
    for s in m["steps"]:
        if s["loss"] <= target:
            return s["step"], s["seconds"]
    return None


runs = {}
for f in sorted(glob.glob(os.path.join(out, "*", "metrics.json"))):
    runs[os.path.basename(os.path.dirname(f))] = json.load(open(f))
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    runs[os.path.basename(f)[: -len(".json")]] = json.load(open(f))

KFAC_JAX = 54.74
print("| run | first loss | final loss (whole set) | seconds | s/step | first batch loss ≤ 54.74 (step / s) | peak RSS |")
print("|---|---|---|---|---|---|---|")
for name, m in runs.items():
    if name.startswith("rss-"):
        continue
    hit = first_step_at(m, KFAC_JAX)
    hit = f"{hit[0]} / {hit[1]:.1f}" if hit else "–"
    s = m["seconds"]
    print(
        f"| {name} | {m['steps'][0]['loss']:.1f} | {m['final_loss']:.2f} | {s:.1f} | {s / len(m['steps']):.3f} "
        f"| {hit} | {rss_mib(name):.0f} MiB |"
    )
print()
print("| optimizer (default autoencoder) | final train loss | seconds | peak RSS |")
print("|---|---|---|---|")
for name, m in runs.items():
    if name.startswith("rss-"):
        print(f"| {name[4:]} | {m['final_loss']:.2f} | {m['seconds']:.1f} | {rss_mib(name):.0f} MiB |")
