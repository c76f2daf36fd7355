import json, sys, gzip
def r4(x):
    if isinstance(x, float): return round(x, 4)
    if isinstance(x, dict): return {k: r4(v) for k, v in x.items()}
    if isinstance(x, list): return [r4(v) for v in x]
    return x
with gzip.open(sys.argv[2], "wt") as f:
    for l in open(sys.argv[1]): f.write(json.dumps(r4(json.loads(l))) + "\n")
