#!/usr/bin/env python3
"""kvq report on a small sweep: report.md's tables hold the means of results.csv's rows,
the ppl columns come from ppl.csv, figures are written and embedded in report.html.
Exits 77 (skipped) where pandas or matplotlib is missing."""
import csv
import os
import subprocess
import sys
import tempfile

try:
    import matplotlib  # noqa: F401
    import pandas  # noqa: F401
    import yaml  # noqa: F401
except ImportError as missing:
    print(f"SKIP: {missing}")
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "analysis"))
import report  # noqa: E402

kvq = os.environ["KVQ_BINARY"]
with tempfile.TemporaryDirectory() as d:
    cfg = os.path.join(d, "cfg.yaml")
    with open(cfg, "w") as f:
        f.write("name: r\ninputs:\n  - synth: {layers: 2, heads: 4, kv_heads: 2, head_dim: 64, seq_len: 200, seed: 5}\n"
                "ablations:\n  methods:\n    axes:\n      preset: [fp16, kivi, innerq_hybrid]\n"
                "  value_mode:\n    axes:\n      v.mode: [hybrid, asym]\nqueries: 8\n"
                f"output: {d}/out\n")
    subprocess.run([kvq, "sweep", cfg], check=True, stdout=subprocess.DEVNULL)
    out = os.path.join(d, "out")
    # A ppl.csv as kvq sweep writes it (ppl needs the model; these rows are made up for the join).
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    keys = report.SPEC_KEYS
    seen = {}
    for r in rows:
        seen.setdefault(tuple([r["preset"]] + [r[k] for k in keys]), r)
    with open(os.path.join(out, "ppl.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["preset", "ablations"] + keys + ["ppl", "ppl_delta", "top1", "kl", "nll", "scored"])
        for i, (key, r) in enumerate(seen.items()):
            w.writerow([key[0], r["ablations"]] + list(key[1:]) + [20 + i, 0.25 * i, 1 - 0.01 * i, 0.001 * i, 3.0, 99])
    # A latency grid in the same folder adds its table.
    lat = os.path.join(d, "lat.yaml")
    with open(lat, "w") as f:
        f.write("shapes: {tiny: {batch: 1, heads: 2, kv_heads: 1, head_dim: 64, tokens: [200]}}\n"
                f"methods: [fp16, kivi, innerq_hybrid]\nrepeats: 1\noutput: {out}/bench.csv\n")
    subprocess.run([kvq, "bench", "--config", lat], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([kvq, "report", out], check=True, stdout=subprocess.DEVNULL)
    md = open(os.path.join(out, "report.md")).read()
    html = open(os.path.join(out, "report.html")).read()

    # Every Methods row holds the mean of its results.csv rows, formatted as the report formats.
    for preset in ("fp16", "kivi", "innerq_hybrid"):
        mine = [r for r in rows if r["preset"] == preset and "methods" in r["ablations"].split(";")]
        assert len(mine) == 4, (preset, len(mine))
        for column, _, digits in report.TABLE:
            mean = sum(float(r[column]) for r in mine) / len(mine)
            needle = report.fmt(mean, digits)
            line = next(l for l in md.splitlines() if l.startswith(f"| {preset} |"))
            assert f" {needle} " in line, (preset, column, needle, line)
        assert line.rstrip().endswith("| 4 |"), line
    # The ablation table labels rows by the axis, and the ppl column is joined from ppl.csv.
    assert "| v.mode=asym |" in md, md
    assert "| 20.000 | 0.000 |" in md, md
    assert "Spearman" in md
    bench = list(csv.DictReader(open(os.path.join(out, "bench.csv"))))
    lat_line = next(l for l in md.splitlines() if l.startswith("| innerq_hybrid | qk |"))
    us = float(next(r for r in bench if r["method"] == "innerq_hybrid" and r["kernel"] == "qk")["us"])
    assert f"{us:.1f} (" in lat_line, (us, lat_line)
    for name in ("error_vs_bits.png", "kl_heatmap.png", "proxy_vs_ppl.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000, name
    assert html.count("data:image/png;base64,") == 3
    assert "<table>" in html and "sha256" in html
print("report: 1 passed, 0 failed")
