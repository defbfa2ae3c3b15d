"""The time per step of data-parallel K-FAC on P ranks: a model fed with
costs measured on this machine (2 cores), for the reference autoencoder and
a network ten times wider in its hidden layers, under our design (KAISA's
COMM-OPT) and the two memory-optimal alternatives (KAISA MEM-OPT,
kfac-jax's defaults). See docs/guide/07-distributed.md for the formulas.

Every rank is a machine like this one and computes a batch of 1000 (weak
scaling: the global batch is 1000 P). Run: python3 model.py
"""
import math

# Measured on this machine (docs/guide/07-distributed.md says how), seconds,
# the autoencoder at batch 1000, f32, 2 threads:
T_SGD = 0.0837      # an SGD step: forward, backward, update (kfac train --optimizer sgd; median)
T_STATS = 0.0145    # K-FAC statistics of 250 examples, all layers (block_phases)
T_REFRESH = 0.0553  # a refresh of every layer, K-FAC's Cholesky path (block_phases)
T_PRE = 0.0244      # preconditioning every layer (block_phases)

T_INV = 20          # the refresh period
BANDWIDTH = 12.5e9  # bytes/s per rank: a 100 Gb/s network
LATENCY = 5e-6      # s per collective message
COLLECTIVES = 10    # collectives of a step (the guide)
BYTES = 4           # f32


def layers(widths):
    return [(i + 1, o) for i, o in zip(widths, widths[1:])]


AE = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
WIDE = [784] + [10 * w for w in AE[1:-1]] + [784]


def greedy_share(costs, ranks):
    """The largest rank's share of the total under the greedy rule (largest
    cost first, to the least loaded rank): what kfac-core's assign_owners does."""
    load = [0.0] * ranks
    for c in sorted(costs, reverse=True):
        load[load.index(min(load))] += c
    return max(load) / sum(costs)


def round_robin_share(costs, ranks):
    load = [0.0] * ranks
    for i, c in enumerate(costs):
        load[i % ranks] += c
    return max(load) / sum(costs)


def volumes(L, P):
    p = sum(a * g for a, g in L)
    f = sum(a * a + g * g for a, g in L)
    ar = lambda n: 2 * (P - 1) / P * n
    ours = ar(p) + ar(f) + 2 * f / T_INV
    mem_opt = ar(p) + p + ar(f)
    jax = 2 * ar(p) + ar(f) / T_INV + ar(2 * f) / T_INV
    return {k: v * BYTES for k, v in dict(ours=ours, mem_opt=mem_opt, jax=jax).items()}


def costs(L):
    """Compute per rank and step, scaled from the autoencoder's measured
    times by the operation counts of each phase."""
    ref = layers(AE)
    ratio = lambda fn: sum(fn(a, g) for a, g in L) / sum(fn(a, g) for a, g in ref)
    return dict(
        batch=T_SGD * ratio(lambda a, g: a * g) + T_STATS * ratio(lambda a, g: a * a + g * g),
        refresh=T_REFRESH * ratio(lambda a, g: a**3 + g**3),
        pre=T_PRE * ratio(lambda a, g: a * a * g + a * g * g),
        layer_refresh=[a**3 + g**3 for a, g in L],
        layer_pre=[a * a * g + a * g * g for a, g in L],
    )


def step_time(L, P, design):
    c = costs(L)
    v = volumes(L, P)[design]
    refresh_share = (round_robin_share if design == "jax" else greedy_share)(c["layer_refresh"], P)
    pre = c["pre"] if design == "ours" else c["pre"] * (round_robin_share if design == "jax" else greedy_share)(
        c["layer_pre"], P)
    comm = v / BANDWIDTH + COLLECTIVES * LATENCY * math.log2(P)
    total = c["batch"] + c["refresh"] / T_INV * refresh_share + pre + comm
    return total, comm / total


if __name__ == "__main__":
    print("| network | ranks | ours: s/step (comm share) | KAISA MEM-OPT | kfac-jax |")
    print("|---|---|---|---|---|")
    for name, w in [("autoencoder", AE), ("10x wider", WIDE)]:
        L = layers(w)
        for P in [8, 64, 512]:
            cells = [f"{t:.3f} ({100 * s:.0f} %)" for t, s in (step_time(L, P, d) for d in ("ours", "mem_opt", "jax"))]
            print(f"| {name} | {P} | " + " | ".join(cells) + " |")
