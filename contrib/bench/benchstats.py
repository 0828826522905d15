"""Per-run benchmark figures -> medians, spreads and per-run ratios, for
summarize.py, tls_summarize.py and proxy_summarize.py.

data maps (variant, metric) to {run: value or None}; a ratio is the
median of the per-run ratios, so runs pair up before noise is averaged."""

import collections
import statistics


def read_raw(path):
    """The RAW file of a bench script, one "RUN VARIANT METRIC VALUE" a line:
    (data, info).  data maps (variant, metric) to {run: float, or None for
    NA}; run 0 holds strings (a negotiated suite, say), kept in info."""
    data = collections.defaultdict(dict)
    info = {}
    for line in open(path):
        p = line.split(None, 3)
        if len(p) != 4:
            continue
        run, var, metric, val = p[0], p[1], p[2], p[3].strip()
        if run == "0":
            info[(var, metric)] = val
            continue
        try:
            data[(var, metric)][int(run)] = float(val)
        except ValueError:
            data[(var, metric)][int(run)] = None
    return data, info


class Stats:
    def __init__(self, data):
        self.data = data
        self.runs = sorted({r for d in data.values() for r in d})

    def vals(self, v, m):
        return [x for x in self.data.get((v, m), {}).values() if x is not None]

    def med(self, v, m):
        x = self.vals(v, m)
        return statistics.median(x) if x else None

    def spread(self, v, m):
        """(max - min) / median, in percent; None for fewer than 2 runs."""
        x = self.vals(v, m)
        md = statistics.median(x) if x else None
        if len(x) < 2 or not md:
            return None
        return (max(x) - min(x)) / abs(md) * 100

    def ratio(self, a, b, m):
        per_run = []
        da, db = self.data.get((a, m), {}), self.data.get((b, m), {})
        for r in self.runs:
            x, y = da.get(r), db.get(r)
            if x is not None and y:
                per_run.append(x / y)
        return statistics.median(per_run) if per_run else None

    def total(self, v, m):
        x = self.vals(v, m)
        return int(sum(x)) if x else None

    def cell(self, v, m, nd=2):
        md, s = self.med(v, m), self.spread(v, m)
        return fmt(md, nd) + (f" ({s:.0f}%)" if s is not None else "")


def fmt(x, nd=2):
    if x is None:
        return "NA"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"
