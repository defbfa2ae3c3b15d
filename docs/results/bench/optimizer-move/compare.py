"""Compares the runs of before and after the optimizer's move into kfac-core.

python3 compare.py   (in this directory) prints the two tables of README.md.
"""
import json
import statistics as st


def race_table():
    before = json.load(open("race-before.json"))["entries"]
    after = json.load(open("race-after.json"))["entries"]
    print("| contestant | steps | every step's loss identical | final train loss | final test loss |")
    print("|---|---|---|---|---|")
    for b, a in zip(before, after):
        assert b["name"] == a["name"]
        same = len(b["curve"]) == len(a["curve"]) and all(
            p["step"] == q["step"] and p["loss"] == q["loss"] for p, q in zip(b["curve"], a["curve"])
        )
        same = same and b["final_loss"] == a["final_loss"] and b["final_test_loss"] == a["final_test_loss"]
        print(f"| {b['name']} | {len(b['curve'])} | {'yes' if same else 'NO'} | "
              f"{b['final_loss']!r} | {b['final_test_loss']!r} |")


def medians(name):
    return {e["id"]: e["median_ms"] for e in json.load(open(name))}


def criterion_table():
    rounds = [(medians(f"criterion-before-{i}.json"), medians(f"criterion-after-{i}.json")) for i in range(1, 5)]
    sgd = "step/sgd-faer/ae-1000"
    print("| step | median ms, before | after | after / before (median of 4 rounds, range) | / SGD before | / SGD after |")
    print("|---|---|---|---|---|---|")
    for k in sorted(rounds[0][0]):
        b = [r[0][k] for r in rounds]
        a = [r[1][k] for r in rounds]
        ratio = [x / y for x, y in zip(a, b)]
        rb = [r[0][k] / r[0][sgd] for r in rounds]
        ra = [r[1][k] / r[1][sgd] for r in rounds]
        name = k.split("/")[1].replace("-faer", "")
        print(f"| {name} | {st.median(b):.1f} | {st.median(a):.1f} | {st.median(ratio):.3f} "
              f"({min(ratio):.2f}–{max(ratio):.2f}) | {st.median(rb):.2f} | {st.median(ra):.2f} |")


if __name__ == "__main__":
    race_table()
    print()
    criterion_table()
