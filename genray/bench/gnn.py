"""`genray bench gnn`: the graph families through the real training path, against baselines.

    GCN       test accuracy on the generated planted-partition (SBM) graph (target >= 0.9) and on
              KarateClub (1 labelled node per class, the GCN paper's setting)
    MPNN      test MAE per target, in original units, on held-out random geometric graphs,
              against two baselines fit on the same train / val / test split:
                mean        predict the training set's mean target
                degree MLP  an MLP on degree statistics (nodes, edges, mean / max / min / std
                            of the degree), trained like the MPNN: same epochs, batch size,
                            optimiser and learning rate, standardised targets, best epoch by
                            the same validation metric
              the MPNN must beat both on every target
    throughput MPNN training graphs/s and nodes/s with 1 and 2 Ray Train workers: the median
              epoch after warm-up, from the run's history (an epoch is the training pass over
              the worker's shard plus its share of validation)

GCN and MPNN train with genray.train.fit (Ray Train, the family's own train step, checkpoints
ranked by the family's metric); the reported model is the best checkpoint, evaluated here on
data it never trained on. Only the degree MLP baseline trains in this module (plain torch).
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SBM_TARGET = 0.9
DEGREE_STATS = ("nodes", "edges", "degree_mean", "degree_max", "degree_min", "degree_std")


@dataclass(frozen=True)
class Budget:
    gcn_epochs: int
    mpnn_epochs: int
    throughput_epochs: int  # the 2-worker run (the 1-worker figure comes from the MPNN run)
    warmup_epochs: int  # left out of the throughput median
    num_graphs: int
    batch_size: int
    # Ray CPUs per worker; the quick budget asks for a fraction so that every run starts at once
    # on a 2-CPU test session (its timings are then meaningless, and it says so).
    cpus_per_worker: float
    concurrent: bool


FULL = Budget(gcn_epochs=200, mpnn_epochs=100, throughput_epochs=12, warmup_epochs=2, num_graphs=600,
              batch_size=32, cpus_per_worker=1.0, concurrent=False)
QUICK = Budget(gcn_epochs=2, mpnn_epochs=2, throughput_epochs=2, warmup_epochs=1, num_graphs=60,
               batch_size=16, cpus_per_worker=0.25, concurrent=True)


# --- the degree-statistics baseline ----------------------------------------------------------

def degree_stats(graph) -> torch.Tensor:
    """(6,) DEGREE_STATS of one graph; edge_index lists both directions of every edge."""
    n = graph.num_nodes
    degree = torch.bincount(graph.edge_index[0], minlength=n).double()  # (N,)
    std = degree.std() if n > 1 else degree.new_zeros(())
    return torch.stack([degree.new_tensor(n), degree.new_tensor(graph.edge_index.size(1) / 2),
                        degree.mean(), degree.max(), degree.min(), std]).float()


class DegreeMLP(nn.Module):
    """Degree statistics (B, 6) -> standardised targets (B, T); inputs standardised inside."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, targets: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std.clamp_min(1e-6))
        self.net = nn.Sequential(nn.Linear(len(DEGREE_STATS), hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, targets))

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return self.net((stats - self.mean) / self.std)


def fit_degree_mlp(train, val, test, epochs: int, batch_size: int, lr: float, seed: int = 0) -> dict[str, Any]:
    """Train the baseline like the MPNN (Adam, MSE on standardised targets, minibatches, best
    epoch by val MAE / std averaged over targets) and return its test MAE per target."""
    torch.manual_seed(seed)
    x = {k: torch.stack([degree_stats(g) for g in graphs]) for k, graphs in
         (("train", train), ("val", val), ("test", test))}  # (N, 6) each
    y = {k: torch.cat([g.y for g in graphs]) for k, graphs in (("train", train), ("val", val), ("test", test))}
    y_mean, y_std = train[0].y_mean, train[0].y_std  # (1, T): the training set's, as the MPNN uses
    model = DegreeMLP(x["train"].mean(0), x["train"].std(0), y["train"].size(1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = (float("inf"), None, -1)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(train)).split(batch_size):
            loss = F.mse_loss(model(x["train"][idx]), (y["train"][idx] - y_mean) / y_std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_mae = ((model(x["val"]) * y_std + y_mean - y["val"]).abs() / y_std).mean().item()
            if val_mae < best[0]:
                test_err = (model(x["test"]) * y_std + y_mean - y["test"]).abs().mean(0)  # (T,)
                best = (val_mae, test_err, epoch)
    return {"val_mae": best[0], "test_mae": best[1].tolist(), "epoch": best[2]}


# --- the runs ----------------------------------------------------------------------------------

def train_run(name: str, family: str, overrides: list[str], storage: Path, budget: Budget, workers: int):
    from genray.config import build_config
    from genray.train import fit

    cfg = build_config(family, overrides=[
        f"name={name}", f"storage={storage}", f"train.workers={workers}",
        f"train.cpus_per_worker={budget.cpus_per_worker}", "train.preview_every=0", *overrides,
    ])
    return cfg, fit(cfg, verbose=False)


def gcn_result(dataset: str, cfg, summary) -> dict[str, Any]:
    """Accuracy of the best checkpoint (by val accuracy) on the graph's test nodes."""
    from genray.checkpoint import load_family
    from genray.data.graphs import load_node_graph

    family, ckpt = load_family(summary.best_checkpoint)
    graph = load_node_graph(cfg.data)
    pred = family.predict(graph.x, graph.edge_index).argmax(1).cpu()  # (N,)
    correct = pred == graph.y
    row = {
        "dataset": dataset, "nodes": graph.num_nodes, "edges": graph.edge_index.size(1) // 2,
        "features": graph.x.size(1), "classes": int(graph.y.max()) + 1,
        **{f"{k}_nodes": int(graph[f"{k}_mask"].sum()) for k in ("train", "val", "test")},
        "epoch": ckpt.epoch, "epochs": cfg.train.epochs,
        "val_acc": correct[graph.val_mask].float().mean().item(),
        "test_acc": correct[graph.test_mask].float().mean().item(),
        "train_s": summary.wall_s,
    }
    if dataset == "sbm":
        row["target"] = SBM_TARGET
    return row


def mpnn_result(cfg, summary, budget: Budget) -> dict[str, Any]:
    """Test MAE of the best checkpoint (by val MAE) and of the two baselines, per target."""
    from torch_geometric.data import Batch

    from genray.checkpoint import load_family
    from genray.data.graphs import split_graph_data

    family, ckpt = load_family(summary.best_checkpoint)
    train, val, test = split_graph_data(cfg.data)
    batch = Batch.from_data_list(test)
    mpnn_err = (family.predict_batch(batch).cpu() - batch.y).abs().mean(0)  # (T,) original units
    mean_err = (train[0].y_mean - batch.y).abs().mean(0)  # (T,)
    mlp = fit_degree_mlp(train, val, test, budget.mpnn_epochs, budget.batch_size, family.cfg.lr)
    targets = list(family.cfg.targets)
    std = train[0].y_std[0]
    maes = {"mpnn": mpnn_err.tolist(), "mean": mean_err.tolist(), "degree_mlp": mlp["test_mae"]}
    return {
        "graphs": {"train": len(train), "val": len(val), "test": len(test)},
        "nodes": [cfg.data.min_nodes, cfg.data.max_nodes], "radius": cfg.data.radius,
        "targets": targets,
        "target_std": dict(zip(targets, std.tolist())),
        "test_mae": {who: dict(zip(targets, err)) for who, err in maes.items()},
        # The unit-free summary the family ranks checkpoints by: mean over targets of MAE / std.
        "test_mae_over_std": {who: (torch.tensor(err) / std).mean().item() for who, err in maes.items()},
        "epoch": ckpt.epoch, "epochs": cfg.train.epochs, "baseline_epoch": mlp["epoch"],
        "train_s": summary.wall_s,
    }


def throughput(summary, workers: int, graphs: int, nodes: int, warmup: int) -> dict[str, Any]:
    """Training graphs/s and nodes/s over the epochs after `warmup` (median epoch time)."""
    times = [h["epoch_s"] for h in summary.history if h.get("epoch", 0) >= warmup]
    epoch_s = statistics.median(times) if times else float("nan")
    return {"workers": workers, "epoch_s": epoch_s, "epochs_measured": len(times),
            "graphs_per_s": graphs / epoch_s, "nodes_per_s": nodes / epoch_s}


def run(storage: Path, quick: bool = False) -> dict[str, Any]:
    import ray

    from genray.bench import machine
    from genray.data.graphs import split_graph_data

    if not ray.is_initialized():
        from genray.train import start_local_ray

        start_local_ray()
    budget = QUICK if quick else FULL
    stamp = time.strftime("%Y%m%d-%H%M%S")
    gcn_common = [f"train.epochs={budget.gcn_epochs}", f"train.checkpoint_every={max(1, budget.gcn_epochs // 10)}"]
    mpnn_common = [f"data.num_graphs={budget.num_graphs}", f"train.batch_size={budget.batch_size}"]
    jobs = {
        "sbm": ("gcn", gcn_common, 1),
        "karate": ("gcn", gcn_common + ["data.source=karate", "model.in_features=34", "model.num_classes=4"], 1),
        "mpnn": ("mpnn", mpnn_common + [f"train.epochs={budget.mpnn_epochs}"], 1),
        "mpnn_2_workers": ("mpnn", mpnn_common + [f"train.epochs={budget.throughput_epochs}"], 2),
    }

    def start(key: str):
        family, overrides, workers = jobs[key]
        return train_run(f"bench-gnn-{key}-{stamp}", family, overrides, storage, budget, workers)

    # Full: the GCN runs together (their times are not reported as speeds), then each MPNN run
    # alone so that its epoch times are its own. Quick: everything at once.
    stages = [list(jobs)] if budget.concurrent else [["sbm", "karate"], ["mpnn"], ["mpnn_2_workers"]]
    done, load = {}, []
    for stage in stages:
        # The 1-minute load average around each stage: on a shared machine it says which
        # timings other work slowed.
        before = os.getloadavg()[0]
        with ThreadPoolExecutor(len(stage)) as pool:
            done.update(zip(stage, pool.map(start, stage)))
        load.append({"runs": stage, "start": before, "end": os.getloadavg()[0]})
        print(f"bench gnn: trained {', '.join(stage)}", flush=True)

    gcn_rows = [gcn_result(key, *done[key]) for key in ("sbm", "karate")]
    mpnn_cfg, mpnn_summary = done["mpnn"]
    mpnn = mpnn_result(mpnn_cfg, mpnn_summary, budget)
    train_graphs = split_graph_data(mpnn_cfg.data)[0]
    graphs, nodes = len(train_graphs), sum(g.num_nodes for g in train_graphs)
    speed = [throughput(mpnn_summary, 1, graphs, nodes, budget.warmup_epochs),
             throughput(done["mpnn_2_workers"][1], 2, graphs, nodes, budget.warmup_epochs)]
    result = {
        "machine": machine(),
        "load_average": load,
        "quick": quick,
        "budget": asdict(budget),
        "gcn": gcn_rows,
        "mpnn": mpnn,
        "throughput": speed,
    }
    result["claims"] = check_claims(result)
    return result


def check_claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    claims = []
    sbm = next(r for r in result["gcn"] if r["dataset"] == "sbm")
    claims.append({"claim": f"GCN test accuracy on the SBM graph >= {SBM_TARGET}", "holds": sbm["test_acc"] >= SBM_TARGET,
                   "figures": f"{sbm['test_acc']:.3f}"})
    mae = result["mpnn"]["test_mae"]
    for baseline, label in (("mean", "predicting the training mean"), ("degree_mlp", "the degree-statistics MLP")):
        beaten = {t: mae["mpnn"][t] < mae[baseline][t] for t in result["mpnn"]["targets"]}
        claims.append({
            "claim": f"MPNN test MAE below {label} on every target", "holds": all(beaten.values()),
            "figures": ", ".join(f"{t} {mae['mpnn'][t]:.3g} vs {mae[baseline][t]:.3g}" for t in beaten),
        })
    return claims


def markdown_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    b, m = result["budget"], result["mpnn"]
    lines = []
    if result["quick"]:
        lines += ["**Quick smoke run (`--quick`): tiny budgets, runs sharing the CPUs; not figures to quote.**", ""]
    lines += [
        f"GCN: {b['gcn_epochs']} full-batch epochs, 1 Ray Train worker, best checkpoint by val accuracy, "
        f"accuracy on the test nodes.",
        "",
        "| graph | nodes | edges | train / val / test nodes | test accuracy | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["gcn"]:
        target = f"≥ {r['target']}" if "target" in r else "—"
        lines.append(f"| {r['dataset']} | {r['nodes']} | {r['edges']} | {r['train_nodes']} / {r['val_nodes']} / "
                     f"{r['test_nodes']} | {r['test_acc']:.3f} | {target} |")
    g = m["graphs"]
    lines += [
        "",
        f"MPNN: random geometric graphs ({m['nodes'][0]}–{m['nodes'][1]} nodes, radius {m['radius']}), "
        f"{g['train']} train / {g['val']} val / {g['test']} test graphs; {b['mpnn_epochs']} epochs, batch "
        f"{b['batch_size']}, 1 worker; best epoch by val MAE for the MPNN and the degree MLP alike. "
        f"Test MAE in the targets' units (lower is better):",
        "",
        "| model | " + " | ".join(m["targets"]) + " | mean MAE / std |",
        "|---|" + "---|" * (len(m["targets"]) + 1),
    ]
    names = {"mpnn": "MPNN (NNConv + GRU + set2set)", "degree_mlp": "MLP on degree statistics",
             "mean": "training mean"}
    for who in ("mpnn", "degree_mlp", "mean"):
        lines.append(f"| {names[who]} | " + " | ".join(f"{m['test_mae'][who][t]:.3f}" for t in m["targets"])
                     + f" | {m['test_mae_over_std'][who]:.3f} |")
    lines.append("| (target std) | " + " | ".join(f"{m['target_std'][t]:.3f}" for t in m["targets"]) + " | |")
    lines += [
        "",
        f"MPNN training throughput (median epoch after {b['warmup_epochs']} warm-up, training pass plus "
        f"validation; batch {b['batch_size']} per worker):",
        "",
        "| Ray Train workers | s / epoch | graphs / s | nodes / s |",
        "|---|---|---|---|",
    ]
    for t in result["throughput"]:
        lines.append(f"| {t['workers']} | {t['epoch_s']:.2f} | {t['graphs_per_s']:.0f} | {t['nodes_per_s']:.0f} |")
    stages = "; ".join(f"{' + '.join(s['runs'])} {s['start']:.1f} → {s['end']:.1f}" for s in result["load_average"])
    lines += ["", f"Load average (1 min) before → after each stage of runs: {stages}, on "
                  f"{result['machine']['cores']} cores. Above the core count, other work shared the CPUs and "
                  f"slowed the timings. {machine_line(result['machine'])}"]
    lines += ["", "| claim | holds | figures |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['figures']} |" for c in result["claims"]]
    return "\n".join(lines) + "\n"
