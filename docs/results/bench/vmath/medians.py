"""Criterion medians (ms) of the step and fwd_bwd groups in criterion text
outputs, with each one's ratio to the SGD step of the same run.

Usage: python3 medians.py RUN.txt...
"""
import re,sys
def parse(f):
    t=open(f).read()
    out={}
    for m in re.finditer(r'^(\S+/\S+/\S+)\s*(?:\n\s*)?time:\s+\[(\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\]', t, re.M):
        name=m.group(1); med=float(m.group(4)); unit=m.group(5)
        out[name.split('/')[1] if name.startswith('step') else name.split('/')[0]] = med*(1000 if unit=='s' else 1)
    return out
for f in sys.argv[1:]:
    o=parse(f); sgd=o.get('sgd-faer')
    print(f, ' '.join(f"{k}={v:.1f}({v/sgd:.2f})" for k,v in o.items()))
