"""Result tables (console and Markdown), results.json and the NDCG@10-against-K plot."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from coldprompt.evaluation.metrics import METRICS, bootstrap_mean, paired_bootstrap_pvalue
from coldprompt.evaluation.protocol import PROTOCOL_FULL, PROTOCOL_SAMPLED, MethodResult


def method_summary(result: MethodResult, fit_seconds: float = 0.0, seed: int = 0, sampled: bool = False) -> dict:
    """JSON-ready summary of one method: means with 95% intervals per K and metric, and wall times."""
    return {
        "protocol": PROTOCOL_SAMPLED if sampled else PROTOCOL_FULL,
        "fit_seconds": round(fit_seconds, 2),
        "evaluate_seconds": round(result.seconds, 2),
        "users": len(result.users),
        "metrics": {
            str(k): {m: estimate.as_dict() for m, estimate in per_metric.items()}
            for k, per_metric in result.summary(seed=seed, sampled=sampled).items()
        },
    }


def paired_test(a: MethodResult, b: MethodResult, k: int, metric: str = "ndcg@10", seed: int = 0) -> dict:
    """Paired comparison of two methods on the same users at one K: mean difference, bootstrap and Wilcoxon p."""
    if not np.array_equal(a.users, b.users):
        raise ValueError(f"{a.method} and {b.method} were evaluated on different users; a paired test needs the same")
    x, y = a.per_user[k][metric], b.per_user[k][metric]
    diff = bootstrap_mean(x - y, seed=seed)
    nonzero = np.any(x != y)
    from scipy import stats  # imported here: scipy.stats adds about 0.5 s to every command's start-up

    wilcoxon = float(stats.wilcoxon(x, y).pvalue) if nonzero else 1.0
    return {
        "a": a.method,
        "b": b.method,
        "k": k,
        "metric": metric,
        "users": len(x),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "difference": diff.as_dict(),
        "p_paired_bootstrap": paired_bootstrap_pvalue(x, y, seed=seed),
        "p_wilcoxon": wilcoxon,
    }


def format_table(methods: dict[str, dict], ks: list[int], metric: str, *, markdown: bool = False) -> str:
    """One metric: a row per method, a column per K, "mean [low, high]"; the best mean per column is marked."""
    best = {k: max((s["metrics"][str(k)][metric]["mean"] for s in methods.values()), default=np.nan) for k in ks}
    header = ["method"] + [f"K={k}" for k in ks]
    rows = []
    for name, summary in methods.items():
        cells = [name]
        for k in ks:
            estimate = summary["metrics"][str(k)][metric]
            text = f"{estimate['mean']:.4f} [{estimate['ci95_low']:.3f}, {estimate['ci95_high']:.3f}]"
            if estimate["mean"] == best[k]:
                text = f"**{text}**" if markdown else f"{text} *"
            cells.append(text)
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def format_report(results: dict, *, markdown: bool = False) -> str:
    """Format every metric table of a results dict, with the users evaluated and left out."""
    ks = results["ks"]
    parts = [
        f"{results['dataset']['dataset']}: {results['protocol']}, {results['evaluated_users']} test users at every K "
        f"({results['left_out_users']} left out with fewer than {results['min_interactions']} interactions); "
        f"order: {results['dataset']['order']}; * marks the best mean per column"
    ]
    for metric in METRICS:
        parts.append(f"\n{metric.upper()} (mean [95% bootstrap interval])")
        parts.append(format_table(results["methods"], ks, metric, markdown=markdown))
    if results.get("sampled_methods"):
        parts.append(f"\nSECONDARY PROTOCOL ({results['sampled_protocol']}), NDCG@10")
        parts.append(format_table(results["sampled_methods"], ks, "ndcg@10", markdown=markdown))
    return "\n".join(parts)


def machine_info() -> dict:
    import os

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(results: dict, output_dir: str | Path, name: str = "results.json") -> Path:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def plot_ndcg(results: dict, path: str | Path) -> Path:
    """Plot NDCG@10 against K per method with 95% intervals as error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = results["ks"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.cm.tab20.colors  # 20 distinct colours: the default cycle repeats after 10 methods
    for offset, (name, summary) in enumerate(results["methods"].items()):
        means = np.array([summary["metrics"][str(k)]["ndcg@10"]["mean"] for k in ks])
        low = np.array([summary["metrics"][str(k)]["ndcg@10"]["ci95_low"] for k in ks])
        high = np.array([summary["metrics"][str(k)]["ndcg@10"]["ci95_high"] for k in ks])
        x = np.array(ks, dtype=float) + (offset - len(results["methods"]) / 2) * 0.05
        style = "--" if name.startswith("LLM") else "-"  # LLM methods dashed, baselines solid
        ax.errorbar(x, means, yerr=[means - low, high - means], marker="o", capsize=3, label=name,
                    linestyle=style, color=colours[offset % len(colours)])
    ax.set_xlabel("K (support interactions)")
    ax.set_ylabel("NDCG@10 (test users, full ranking)")
    ax.set_xticks(ks)
    ax.set_title(f"{results['dataset']['dataset']}: NDCG@10 against K")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
