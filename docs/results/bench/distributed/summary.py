import json, glob, statistics, collections
rows = collections.defaultdict(list)
for d in sorted(glob.glob('out/*')):
    name = d.split('/')[-1]
    key, rep = name.rsplit('-', 1)
    m = json.load(open(d + '/metrics.json'))
    secs = [s['seconds'] for s in m['steps']]
    per = [b - a for a, b in zip([0.0] + secs[:-1], secs)][1:]  # drop step 1 (first refresh, warm-up)
    rows[key].append((statistics.median(per), m['steps'][-1]['loss'], m['final_loss']))
sgd = statistics.median([r[0] for r in rows['sgd-1x2-plain']])
print(f"SGD 1x2 median step {sgd*1e3:.1f} ms")
print("| optimizer | layout | median s/step (rep 1, rep 2) | steps/s | / SGD 1x2 | loss at step 60 |")
print("|---|---|---|---|---|---|")
for key in sorted(rows):
    opt, layout, how = key.split('-', 2)
    r = rows[key]
    med = statistics.median([x[0] for x in r])
    print(f"| {opt} | {layout} {how} | {r[0][0]:.3f}, {r[1][0]:.3f} | {1/med:.2f} | {med/sgd:.2f} | {r[0][1]:.3f} |")
