"""The CNN race: the table of docs/studies/cnn.md and its two plots.

python3 summary.py   (in this directory; the plots need matplotlib)
"""
import glob
import json

runs = {p[:-5]: json.load(open(p)) for p in sorted(glob.glob("*.json"))}
adam = max((n for n in runs if n.startswith("adam")), key=lambda n: runs[n]["test"][-1]["accuracy"])
sgd = max((n for n in runs if n.startswith("sgd")), key=lambda n: runs[n]["test"][-1]["accuracy"])


def grid_best(kind):
    """The fixed rule's best of the grid: the default run `kind` and the `kind-lr...` runs."""
    grid = [n for n in runs if n == kind or n.startswith(kind + "-lr")]
    return max(grid, key=lambda n: (runs[n]["test"][-1]["accuracy"], -runs[n]["final_test_loss"])) if grid else None


bests = {adam, sgd, grid_best("kfac"), grid_best("ekfac")} - {None}
target = runs[adam]["test"][-1]["accuracy"]


def seconds_at(m, step):
    return next(s["seconds"] for s in m["steps"] if s["step"] == step)


def table():
    print(f"target: {adam}'s final test accuracy, {target:.3f}\n")
    print("| run | final train loss | final test loss | final test accuracy | s/step (median) | s/step / SGD's | first evaluation at the target: step | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    per_step = {}
    for n, m in runs.items():
        st = m["steps"]
        dt = sorted(b["seconds"] - a["seconds"] for a, b in zip(st, st[1:]))
        per_step[n] = dt[len(dt) // 2]
    for n, m in runs.items():
        hit = next((t["step"] for t in m["test"] if t["accuracy"] >= target), None)
        mark = " (grid's best)" if n in bests else ""
        at = f"{hit} | {seconds_at(m, hit):.1f}" if hit else "— | —"
        print(f"| {n}{mark} | {m['final_loss']:.4f} | {m['final_test_loss']:.4f} | "
              f"{m['test'][-1]['accuracy']:.3f} | {per_step[n]:.3f} | {per_step[n] / per_step[sgd]:.2f} | {at} |")


def plots():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [adam, sgd] + [n for n in runs if not n.startswith(("adam", "sgd")) and ("-lr" not in n or n in bests)]
    for x, name in [("step", "cnn_steps.png"), ("seconds", "cnn_seconds.png")]:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for n in shown:
            m = runs[n]
            xs = [t["step"] if x == "step" else seconds_at(m, t["step"]) for t in m["test"]]
            ax.plot(xs, [1 - t["accuracy"] for t in m["test"]], marker="o", ms=3, label=n)
        ax.axhline(1 - target, color="grey", lw=0.8, ls="--", label=f"{adam}'s final error")
        ax.set_yscale("log")
        ax.set_xlabel("step" if x == "step" else "seconds (2 threads)")
        ax.set_ylabel("test error (1 − accuracy)")
        ax.set_title("CNN on MNIST-5k, batch 256")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(name, dpi=110)


if __name__ == "__main__":
    table()
    try:
        plots()
    except ImportError:
        print("\n(matplotlib is not installed: no plots)")
