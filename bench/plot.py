#!/usr/bin/env python3
"""Plots a hydrate-bench JSON result (bench/run.sh --json) as one PNG.

    python3 bench/plot.py target/bench/results.json docs/benchmarks.png

Panels (each drawn only if its section is in the JSON): hydrate/ext4 ratios of the hot and metadata figures;
cold start over the emulated link (full download + unpack vs hydrate without and with a learned plan); mount
time and daemon RSS by image size; container start from a registry (full pull + runc vs hydrate rootfs + runc). Needs matplotlib (bench/run.sh --plot installs it into a virtualenv).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ratios(results):
    bars = []
    hot = results.get("hot_sequential") or {}
    for key, label in (
        ("passthrough_ratio", "hot sequential\n(passthrough)"),
        ("random_4k_reads_per_sec_ratio", "hot 4 KiB random\n(passthrough)"),
    ):
        if isinstance(hot.get(key), (int, float)):
            bars.append((label, hot[key]))
    walk = (results.get("startup") or {}).get("walk")
    if walk:
        # Time ratio inverted into a speed ratio, so that for every bar higher is better and 1 is ext4.
        bars.append(("metadata walk\n(stat + readdir)", walk["native_secs"] / walk["hydrate_secs"]))
    return bars


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        results = json.load(f)
    startup = results.get("startup") or {}
    panels = []
    if ratios(results):
        panels.append("ratios")
    if startup.get("cold"):
        panels.append("cold")
    if startup.get("scale"):
        panels.append("scale")
    if results.get("containers"):
        panels.append("containers")
    if not panels:
        sys.exit("nothing to plot in " + sys.argv[1])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    if len(panels) == 1:
        axes = [axes]
    for ax, panel in zip(axes, panels):
        if panel == "ratios":
            bars = ratios(results)
            ax.bar([b[0] for b in bars], [b[1] for b in bars], color="#4c72b0")
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_ylabel("speed, hydrate / ext4 (1 = native)")
            ax.set_title("Hot paths vs ext4 (same run)")
            for i, b in enumerate(bars):
                ax.text(i, b[1], f"{b[1]:.2f}", ha="center", va="bottom")
        elif panel == "cold":
            c = startup["cold"]
            names = ["full download\n+ unpack", "hydrate\nno plan", "hydrate\nlearned plan"]
            secs = [c["full_secs"], c["no_plan"]["secs"], c["with_plan"]["secs"]]
            ax.bar(names, secs, color=["#999999", "#dd8452", "#55a868"])
            for i, s in enumerate(secs):
                ax.text(i, s, f"{s:.2f} s\n({s / secs[0]:.2f}x)", ha="center", va="bottom")
            ax.set_ylabel("seconds until the workload is done")
            ax.set_title(
                f"Cold start, {startup['one_way_ms']:.0f} ms / {startup['link_mbit']:.0f} Mbit/s link\n"
                f"image {c['image_bytes'] / 2**30:.1f} GiB, workload reads "
                f"{100 * c['read_bytes'] / c['image_bytes']:.1f}%"
            )
            ax.set_ylim(0, max(secs) * 1.3)
        elif panel == "containers":
            c = results["containers"]
            names = ["skopeo + umoci\n+ runc", "hydrate rootfs\n+ runc, no plan", "hydrate rootfs\n+ runc, plan"]
            runs = [c["full_pull"], c["no_plan"], c["with_plan"]]
            secs = [r["first_output_secs"] for r in runs]
            ax.bar(names, secs, color=["#999999", "#dd8452", "#55a868"])
            for i, r in enumerate(runs):
                ax.text(i, secs[i], f"{secs[i]:.2f} s ({secs[i] / secs[0]:.3f}x)\n"
                        f"{r['link_bytes'] / 2**20:.0f} MiB", ha="center", va="bottom", fontsize=8)
            ax.set_ylabel("seconds to the container's first output")
            ax.set_title(
                f"Container start from a registry, {c['one_way_ms']:.0f} ms / {c['link_mbit']:.0f} Mbit/s\n"
                f"image {c['image_bytes'] / 2**30:.1f} GiB, reads {100 * c['read_bytes'] / c['image_bytes']:.1f}% "
                "before its output"
            )
            ax.set_ylim(0, max(secs) * 1.3)
        else:
            pts = startup["scale"]
            files = [p["files"] for p in pts]
            ax.plot(files, [p["remount_secs"] for p in pts], "o-", label="mount (local manifest copy), s")
            ax.plot(files, [p["first_mount_secs"] for p in pts], "s--", label="first mount (from store), s")
            ax.set_xscale("log")
            ax.set_xlabel("files in the image")
            ax.set_ylabel("seconds")
            ax.set_title("Mount time and daemon RSS by image size")
            rss = ax.twinx()
            rss.plot(files, [p["rss_mounted_kib"] / 1024 for p in pts], "^-", color="#c44e52",
                     label="RSS after mount, MiB")
            rss.plot(files, [p["rss_walked_kib"] / 1024 for p in pts], "v:", color="#c44e52",
                     label="RSS after stat of every file\n(mostly mapped manifest pages), MiB")
            if all("anon_walked_kib" in p for p in pts):
                rss.plot(files, [p["anon_walked_kib"] / 1024 for p in pts], "x-", color="#8172b3",
                         label="anonymous RSS after the stat, MiB")
            rss.set_ylabel("MiB")
            lines = ax.get_legend_handles_labels()
            more = rss.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print("wrote", sys.argv[2])


if __name__ == "__main__":
    main()
