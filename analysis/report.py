#!/usr/bin/env python3
"""kvq report: report.md and a self-contained report.html from a sweep's results folder.

Tables in the InnerQ paper's layout (methods as rows), one table per ablation, the
kernel latency table when bench.csv is present; figures: error vs bits per element
with each method's Pareto front and the 4^-b distortion floor, a layer x head heatmap
of attention KL, and each proxy metric against the perplexity change with its rank
correlation. Every table cell is the mean of the results.csv rows it names.
"""
import argparse
import base64
import html
import io
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

SPEC_KEYS = ["k.mode", "k.bits", "k.group_axis", "k.group_size", "k.sym_levels", "k.hybrid_asym_bits", "k.meta",
             "k.flush", "k.rotation", "k.token_scale", "v.mode", "v.bits", "v.group_axis", "v.group_size",
             "v.sym_levels", "v.hybrid_asym_bits", "v.meta", "v.flush", "v.rotation", "v.token_scale", "sink",
             "recent", "key_norm", "rotation_seed"]
TABLE = [("k_bits", "K bits", 2), ("v_bits", "V bits", 2), ("k_rel_fro", "K rel err", 4), ("v_rel_fro", "V rel err", 4),
         ("kl", "KL", 5), ("tv", "TV", 4), ("top8", "top-8", 3), ("out_rel", "out rel err", 4),
         ("k_imbalance", "K imbalance", 2), ("k_outlier", "K outlier", 1)]
PROXIES = ["kl", "tv", "out_rel", "score_rel", "k_rel_fro", "v_rel_fro"]


def fmt(v, digits):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.{max(1, digits - 2)}e}"


def config_id(frame):
    """One string per configuration: its preset label and every spec key."""
    keys = [k for k in SPEC_KEYS if k in frame.columns]  # results from before a key existed still report
    return frame["preset"].astype(str) + "|" + frame[keys].astype(str).agg("|".join, axis=1)


def png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def spearman(x, y):
    rx, ry = pd.Series(x).rank(), pd.Series(y).rank()
    return float(np.corrcoef(rx, ry)[0, 1]) if len(x) > 2 else float("nan")


def pareto(points):
    """Lower-left front of (bits, error) points."""
    front, best = [], float("inf")
    for b, e in sorted(points):
        if e < best:
            front.append((b, e))
            best = e
    return front


def latency_tables(bench):
    """Per shape: methods x kernels as rows, token counts as columns, median µs (% of roofline)."""
    md = []
    for shape, rows in bench.groupby("shape", sort=False):
        first = rows.iloc[0]
        md.append(f"\n## Kernel latency: {shape} (batch {first['batch']}, {first['heads']} heads, {first['kv_heads']} kv heads, "
                  f"head_dim {first['head_dim']}, backend {first['backend']})\n")
        md.append("µs per call, median of the repeats (% of the copy bandwidth measured in the same run); "
                  "speedups are against fp16 and kivi in the same run.\n")
        tokens = sorted(rows["tokens"].unique())
        md.append("| method | kernel | " + " | ".join(str(t) for t in tokens) + " | speedup vs fp16 at " + str(tokens[-1]) + " |")
        md.append("|---|---|" + "---|" * (len(tokens) + 1))
        for (method, kernel), cell in rows.groupby(["method", "kernel"], sort=False):
            by_n = cell.set_index("tokens")
            parts = [f"{by_n.loc[t, 'us']:.1f} ({by_n.loc[t, 'roofline_pct']:.0f}%)" if t in by_n.index else "-" for t in tokens]
            last = by_n.loc[tokens[-1], "speedup_vs_fp16"] if tokens[-1] in by_n.index else float("nan")
            md.append(f"| {method} | {kernel} | " + " | ".join(parts) + f" | {fmt(last, 2)} |")
    return md


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--heatmap", help="preset label for the KL heatmap (default: the config's base)")
    args = parser.parse_args(argv)
    folder = args.folder
    results_path = os.path.join(folder, "results.csv")
    bench_path = os.path.join(folder, "bench.csv")
    if not os.path.exists(results_path):
        if not os.path.exists(bench_path):
            sys.exit(f"kvq: error: {folder}: no results.csv or bench.csv (run kvq sweep or kvq bench first)")
        return latency_report(folder, pd.read_csv(bench_path))
    df = pd.read_csv(results_path)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    config = yaml.safe_load(manifest.get("config", "")) or {}
    ppl = pd.read_csv(os.path.join(folder, "ppl.csv")) if os.path.exists(os.path.join(folder, "ppl.csv")) else None
    bench = pd.read_csv(os.path.join(folder, "bench.csv")) if os.path.exists(os.path.join(folder, "bench.csv")) else None

    df["config"] = config_id(df)
    metrics = [m for m, _, _ in TABLE if m in df.columns]
    per_config = df.groupby("config", sort=False)
    means = per_config[metrics].mean()
    counts = per_config.size()
    first = per_config.first()
    if ppl is not None:
        ppl["config"] = config_id(ppl)
        ppl = ppl.set_index("config")

    md, figures = [], []
    prov = manifest["provenance"]
    md.append(f"# kvq report: {manifest.get('name', '')}\n")
    md.append(f"kvq {prov['kvq_version']} (commit {prov['git_commit']}), config `{manifest['config_path']}`, "
              f"run {manifest.get('started', '?')} to {manifest.get('finished', '?')} on {prov['host']}.\n")
    for entry in manifest["inputs"]:
        md.append(f"- input `{entry['path']}` sha256 `{entry['sha256']}`")
    if "ppl_model" in manifest:
        pm = manifest["ppl_model"]
        md.append(f"- perplexity model `{pm['path']}` sha256 `{pm['sha256']}`, {pm['tokens']} tokens, prefill {pm['prefill']}")
    md.append("\nEach cell is the mean over the results.csv rows of that configuration (every input, layer and kv head; "
              "`rows` gives how many); ppl columns come from ppl.csv.\n")

    def table(title, configs, labels):
        header = ["configuration"] + [name for m, name, _ in TABLE if m in metrics]
        if ppl is not None:
            header += ["ppl", "Δppl", "top-1"]
        header.append("rows")
        lines = [f"\n## {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cid, lab in zip(configs, labels):
            cells = [lab] + [fmt(means.loc[cid, m], d) for m, _, d in TABLE if m in metrics]
            if ppl is not None:
                row = ppl.loc[cid] if cid in ppl.index else None
                cells += [fmt(row["ppl"], 3), fmt(row["ppl_delta"], 3), fmt(row["top1"], 3)] if row is not None else ["-"] * 3
            cells.append(str(int(counts[cid])))
            lines.append("| " + " | ".join(cells) + " |")
        md.extend(lines)

    # Methods as rows: the configurations named by a preset axis, else one per distinct preset.
    ablations = config.get("ablations", {}) or {}
    # Every configuration that is a preset as published (label without '+'), in the order run.
    method_ids = [cid for cid in means.index if not str(first.loc[cid, "preset"]).endswith("+")]
    table("Methods", method_ids, [first.loc[c, "preset"] for c in method_ids])
    for name, body in ablations.items():
        if name == "methods":
            continue
        keys = list((body or {}).get("axes", {}) or {})
        for one in (body or {}).get("configs", []) or []:
            keys += [k for k in one if k not in keys]
        ids = [cid for cid in means.index if name in str(first.loc[cid, "ablations"]).split(";")]

        def label(cid):
            parts = []
            for k in keys:
                if k in ("bits", "group_size"):
                    parts.append(f"{k}={first.loc[cid, 'k.' + k]}/{first.loc[cid, 'v.' + k]}")
                elif k in first.columns:
                    parts.append(f"{k}={first.loc[cid, k]}")
            return ", ".join(parts) or first.loc[cid, "preset"]
        table(f"Ablation: {name}", ids, [label(c) for c in ids])

    if bench is not None:
        md.extend(latency_tables(bench))

    # Figure 1: key error vs bits per element, Pareto fronts per preset family, 4^-b floors.
    if {"k_bits", "k_rel_fro"} <= set(means.columns):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        pts = [(means.loc[c, "k_bits"], means.loc[c, "k_rel_fro"] ** 2, first.loc[c, "preset"].rstrip("+")) for c in means.index
               if means.loc[c, "k_rel_fro"] > 0]
        for family in sorted({p[2] for p in pts}):
            xs = [(b, e) for b, e, f in pts if f == family]
            ax.scatter([b for b, _ in xs], [e for _, e in xs], label=family, s=18)
            front = pareto(xs)
            if len(front) > 1:
                ax.plot([b for b, _ in front], [e for _, e in front], lw=1)
        b = np.linspace(1, max(16.5, max(p[0] for p in pts) + 0.5) if pts else 16, 200)
        ax.plot(b, 4.0 ** -b, "k--", lw=1, label="floor 4^-b")
        ax.plot(b, 2.7 * 4.0 ** -b, "k:", lw=1, label="TurboQuant ≈ 2.7·4^-b")
        ax.set_yscale("log")
        ax.set_xlabel("key bits per element (allocated, windows included)")
        ax.set_ylabel("key normalized MSE (rel. Frobenius²)")
        ax.legend(fontsize=7)
        figures.append(("error_vs_bits.png", "Key error vs bits per element", png(fig)))

    # Figure 2: layer x head heatmap of attention KL for one configuration.
    base = args.heatmap or (config.get("base") if isinstance(config.get("base"), str) else None) or df["preset"].iloc[0]
    pick = df[df["preset"] == base]
    if "kl" in df.columns and len(pick):
        pick = pick[pick["config"] == pick["config"].iloc[0]]
        grid = pick.pivot_table(index="layer", columns="kv_head", values="kl", aggfunc="mean")
        fig, ax = plt.subplots(figsize=(3 + 0.4 * grid.shape[1], 1.5 + 0.18 * grid.shape[0]))
        im = ax.imshow(grid.values, aspect="auto", cmap="viridis")
        ax.set_xlabel("kv head")
        ax.set_ylabel("layer")
        ax.set_title(f"attention KL, {base}")
        fig.colorbar(im, ax=ax)
        figures.append(("kl_heatmap.png", f"Attention KL per layer and kv head ({base})", png(fig)))

    # Figure 3: proxy metrics vs perplexity change, with Spearman rank correlations.
    if ppl is not None:
        joined = means.join(ppl[["ppl_delta"]], how="inner")
        proxies = [p for p in PROXIES if p in joined.columns]
        if len(joined) > 2 and proxies:
            fig, axes = plt.subplots(1, len(proxies), figsize=(3 * len(proxies), 3), squeeze=False)
            md.append("\n## Which proxy predicts accuracy\n")
            md.append("| proxy | Spearman ρ with Δppl |\n|---|---|")
            for ax, p in zip(axes[0], proxies):
                rho = spearman(joined[p], joined["ppl_delta"])
                ax.scatter(joined[p], joined["ppl_delta"], s=12)
                ax.set_xscale("log")
                ax.set_xlabel(p)
                ax.set_title(f"ρ = {rho:.2f}", fontsize=9)
                md.append(f"| {p} | {rho:.3f} |")
            axes[0][0].set_ylabel("Δppl")
            figures.append(("proxy_vs_ppl.png", "Proxy metrics vs perplexity change", png(fig)))

    write_outputs(folder, md, figures)


def write_outputs(folder, md, figures):
    body = "\n".join(md) + "\n"
    for name, title, data in figures:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        body += f"\n## {title}\n\n![{title}]({name})\n"
    tmp = os.path.join(folder, ".report.md.tmp")
    with open(tmp, "w") as f:
        f.write(body)
    os.replace(tmp, os.path.join(folder, "report.md"))
    out = ["<!doctype html><meta charset='utf-8'><title>kvq report</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"]
    in_table = False
    for line in "\n".join(md).split("\n"):
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(line) <= set("|-"):
                continue
            tag = "td" if in_table else "th"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    for name, title, data in figures:
        out.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,"
                   f"{base64.b64encode(data).decode()}'>")
    tmp = os.path.join(folder, ".report.html.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, os.path.join(folder, "report.html"))
    print(f"wrote {os.path.join(folder, 'report.md')} and report.html ({len(figures)} figures)")


def latency_report(folder, bench):
    md = ["# kvq report: kernel latency\n"]
    meta_path = os.path.join(folder, "bench.csv.json")
    if os.path.exists(meta_path):
        meta = json.load(open(meta_path))
        prov = meta["provenance"]
        md.append(f"kvq {prov['kvq_version']} (commit {prov['git_commit']}), `{prov['command']}` on {prov['host']} at "
                  f"{prov['time']}; copy bandwidth measured in the run: {meta['copy_bandwidth_gb_per_s']:.1f} GB/s.\n")
    md.extend(latency_tables(bench))
    write_outputs(folder, md, [])


if __name__ == "__main__":
    main()
