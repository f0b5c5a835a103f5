"""What the commands show: the training curve as a PNG, and the adapter and cold-start tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curve(curve: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [r["epoch"] for r in curve]
    for key in sorted(k for k in curve[0] if k not in ("epoch", "seconds", "events_per_s")):
        ax.plot(epochs, [r[key] for r in curve], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def adapter_table(r: dict[str, Any]) -> str:
    """`fmrec finetune`'s result (its metrics.json): the task, the adapter's size, frozen FM vs FM + adapter."""
    task = f"slice {r['slice'] or 'all users'}" + (f", next item rated >= {r['min_action']}" if r["min_action"] else "")
    settings_text = ", ".join(f"{k} {v:g}" for k, v in r["adapter_settings"].items())
    lines = [f"{task}: {r['users']} test users; adapter {r['adapter']} ({settings_text}) adds {r['adapter_params']:,} parameters "
             f"({100 * r['param_share']:.2f}% of the FM's {r['fm_params']:,}); trained in {r['train_s']:.1f} s",
             f"{'':22} {'HR@10':>7} {'NDCG@10':>8} {'NDCG@20':>8}"]
    for name, m in (("frozen FM", r["frozen_fm"]), ("FM + adapter", r["fm_plus_adapter"])):
        lines.append(f"{name:22} {m['HR@10']:7.4f} {m['NDCG@10']:8.4f} {m['NDCG@20']:8.4f}")
    return "\n".join(lines)


def cold_table(result: dict[str, dict[str, float]], n_cold: int, n_items: int) -> str:
    """`fmrec cold`'s result: each scorer on the users whose test item was withheld."""
    users = int(result["fm_content_only"]["users"])
    lines = [f"\ncold items: {n_cold} of {n_items} items withheld from training; {users} users whose test item is one of them;"
             f" ranked among the withheld items only",
             f"{'scorer':26} {'HR@10':>7} {'NDCG@10':>8} {'HR@20':>7}"]
    for name, m in result.items():
        lines.append(f"{name:26} {m['HR@10']:7.4f} {m['NDCG@10']:8.4f} {m['HR@20']:7.4f}")
    return "\n".join(lines)
