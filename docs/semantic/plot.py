import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
panels = [("gptcache-paraphrase-pairs.json (all cached texts)", "wrong_of_asked", "wrong hits, % of questions asked", (95, 1)),
          ("qqp-dev-pairs.json (all cached texts)", "wrong_of_hits", "wrong hits, % of hits", (60, 5)),
          ("qqp-dev-pairs.json (pair by pair)", "wrong_of_hits", "wrong hits, % of hits", (60, 5))]
for ax, (ds, wcol, wlabel, target) in zip(axes, panels):
    for guard, style in (("off", "-"), ("on", "--")):
        pts = [r for r in rows if r["dataset"] == ds and r["guard"] == guard]
        x = [float(r[wcol]) for r in pts]; y = [float(r["hit_rate"]) for r in pts]
        ax.plot(x, y, style, label=f"guard {guard}")
        for r in pts:
            if r["threshold"] in ("0.70", "0.80", "0.85", "0.90", "0.95") and guard == "off":
                ax.annotate(r["threshold"], (float(r[wcol]), float(r["hit_rate"])), fontsize=8)
    ax.axhline(target[0], color="grey", lw=0.6); ax.axvline(target[1], color="grey", lw=0.6)
    ax.plot([0, target[1]], [target[0], target[0]], color="green", lw=3, alpha=0.5, label="target region edge")
    ax.set_title(ds, fontsize=9); ax.set_xlabel(wlabel); ax.set_ylabel("right hits, % of answerable"); ax.grid(alpha=0.3)
    ax.set_xlim(left=0); ax.set_ylim(0, 100)
axes[0].legend(fontsize=8)
fig.suptitle("all-MiniLM-L6-v2: right hits against wrong hits, thresholds 0.50-0.99 (labels: threshold)", fontsize=10)
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=90)
