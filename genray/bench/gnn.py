"""`genray bench gnn`: the graph families through the real training path, against baselines.

    GCN       test accuracy on the generated planted-partition (SBM) graph and on KarateClub, each
              over the declared seeds (train.seed: initial weights and dropout; the graph and its
              split stay fixed). KarateClub twice: on its standard split (PyG's train_mask, one
              labelled node per class: nodes 0, 4, 8, 24; the other 30 are the test nodes; no
              validation nodes, so the model reported is the one after the whole budget), and on
              genray's own karate split (data.source=karate: one random labelled node per class,
              7 validation nodes that pick the checkpoint, 23 test nodes; the figure this bench
              reported first, kept beside the standard one)
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

The GCN claims (GCN_CLAIMS) are declared before the runs that decide them: test accuracy at least
0.9, the mean over their seeds. The parts (PARTS) run alone with --parts; a part not run is kept
from the previous gnn.json.
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

from genray.bench.claims import HEADER, Claim, claim_row

SBM_TARGET = 0.9
KARATE_TARGET = 0.9
GCN_SEEDS = (0, 1, 2)
GCN_BUDGET = {"epochs": 200, "workers": 1}
# The graphs the GCN part trains on: the config overrides of each, and what the claim says.
GCN_GRAPHS = {
    "sbm": [],
    "karate_standard": ["model.in_features=34", "model.num_classes=4"],  # data.source: the bench's saved file
    "karate_genray_split": ["data.source=karate", "model.in_features=34", "model.num_classes=4"],
}
GCN_CLAIMS = {
    "sbm": Claim(key="gcn_sbm", metric="test_acc", target=SBM_TARGET, direction=">=", budget=GCN_BUDGET,
                 seeds=GCN_SEEDS, text="GCN test accuracy on the SBM graph (80 / 80 / 240 nodes)"),
    "karate_standard": Claim(
        key="gcn_karate_standard", metric="test_acc", target=KARATE_TARGET, direction=">=", budget=GCN_BUDGET,
        seeds=GCN_SEEDS, text="GCN test accuracy on KarateClub, standard split (4 labelled nodes, 30 test nodes)"),
    "karate_genray_split": Claim(
        key="gcn_karate_genray_split", metric="test_acc", target=KARATE_TARGET, direction=">=", budget=GCN_BUDGET,
        seeds=GCN_SEEDS, text="GCN test accuracy on KarateClub, genray's split (4 labelled / 7 validation / 23 test)"),
}
PARTS = ("gcn", "mpnn")
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


FULL = Budget(gcn_epochs=GCN_BUDGET["epochs"], mpnn_epochs=100, throughput_epochs=12, warmup_epochs=2,
              num_graphs=600, batch_size=32, cpus_per_worker=1.0, concurrent=False)
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


def karate_standard_split(folder: Path) -> Path:
    """KarateClub with PyG's standard split saved as a PyG dataset file that genray's data.source
    reads with its masks: PyG's train_mask (one node per class), every other node for test. The
    split has no validation nodes; the labelled nodes stand in as val_mask (the loop needs one to
    report on), and the bench checkpoints only the last epoch, so nothing is selected by them."""
    from torch_geometric.data import InMemoryDataset
    from torch_geometric.datasets import KarateClub

    graph = KarateClub()[0]
    graph.val_mask = graph.train_mask.clone()
    graph.test_mask = ~graph.train_mask
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "karate-standard-split.pt"
    InMemoryDataset.save([graph], str(path))
    return path


def gcn_result(dataset: str, cfg, summary) -> dict[str, Any]:
    """Accuracy of the best checkpoint (by val accuracy; the only one, the last epoch's, on the
    standard karate split) on the graph's test nodes."""
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
        "seed": cfg.train.seed, "workers": cfg.train.workers,
        "val_acc": correct[graph.val_mask].float().mean().item() if dataset != "karate_standard" else None,
        "test_acc": correct[graph.test_mask].float().mean().item(),
        "train_s": summary.wall_s,
    }
    if dataset == "karate_standard":
        row["val_nodes"] = 0  # its val_mask is the training nodes (see karate_standard_split)
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


def mpnn_budget(budget: dict[str, Any]) -> dict[str, Any]:
    """The MPNN part's share of a Budget (as a dict): kept with its figures when the part is."""
    return {k: budget[k] for k in ("mpnn_epochs", "throughput_epochs", "warmup_epochs", "num_graphs", "batch_size")}


def run(storage: Path, quick: bool = False, parts: tuple[str, ...] = PARTS,
        previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bench's dict for gnn.json. A part not in `parts` is kept from `previous` (the last
    gnn.json) with the machine and load it was measured under; smoke and real figures never mix."""
    import ray

    from genray.bench import machine
    from genray.data.graphs import split_graph_data

    if not parts or set(parts) - set(PARTS):
        raise ValueError(f"parts must be among {', '.join(PARTS)}, got {', '.join(parts) or 'none'}")
    if not ray.is_initialized():
        from genray.train import start_local_ray

        start_local_ray()
    budget = QUICK if quick else FULL
    # Quick: one seed, so the claims stay undecided (a smoke test decides nothing).
    seeds = GCN_SEEDS[:1] if quick else GCN_SEEDS
    stamp = time.strftime("%Y%m%d-%H%M%S")
    karate_file = karate_standard_split(storage / f"bench-gnn-data-{stamp}")
    # A checkpoint every tenth of the budget; on the standard karate split only the last epoch's,
    # since no validation nodes may pick one.
    gcn_common = [f"train.epochs={budget.gcn_epochs}"]
    every = {"karate_standard": budget.gcn_epochs}
    mpnn_common = [f"data.num_graphs={budget.num_graphs}", f"train.batch_size={budget.batch_size}"]
    jobs = {}
    if "gcn" in parts:
        for graph, overrides in GCN_GRAPHS.items():
            source = [f"data.source={karate_file}"] if graph == "karate_standard" else []
            for seed in seeds:
                jobs[f"{graph}_seed{seed}"] = ("gcn", gcn_common + overrides + source + [
                    f"train.seed={seed}", f"train.checkpoint_every={every.get(graph, max(1, budget.gcn_epochs // 10))}"], 1)
    if "mpnn" in parts:
        jobs["mpnn"] = ("mpnn", mpnn_common + [f"train.epochs={budget.mpnn_epochs}"], 1)
        jobs["mpnn_2_workers"] = ("mpnn", mpnn_common + [f"train.epochs={budget.throughput_epochs}"], 2)

    def start(key: str):
        family, overrides, workers = jobs[key]
        return train_run(f"bench-gnn-{key}-{stamp}", family, overrides, storage, budget, workers)

    # Full: the GCN runs two at a time (their times are not reported as speeds), then each MPNN
    # run alone so that its epoch times are its own. Quick: everything at once.
    gcn_keys = [k for k in jobs if not k.startswith("mpnn")]
    if budget.concurrent:
        stages = [list(jobs)]
    else:
        stages = [gcn_keys[i:i + 2] for i in range(0, len(gcn_keys), 2)]
        stages += [[k] for k in ("mpnn", "mpnn_2_workers") if k in jobs]
    done, load = {}, []
    for stage in stages:
        # The 1-minute load average around each stage: on a shared machine it says which
        # timings other work slowed.
        before = os.getloadavg()[0]
        with ThreadPoolExecutor(len(stage)) as pool:
            done.update(zip(stage, pool.map(start, stage)))
        load.append({"runs": stage, "start": before, "end": os.getloadavg()[0]})
        print(f"bench gnn: trained {', '.join(stage)}", flush=True)

    result: dict[str, Any] = {"machine": machine(), "quick": quick, "budget": asdict(budget)}
    if "gcn" in parts:
        result["gcn"] = {
            "seeds": list(seeds),
            "runs": [gcn_result(key.rsplit("_seed", 1)[0], *done[key]) for key in gcn_keys],
            "load_average": [s for s in load if set(s["runs"]) & set(gcn_keys)],
            "machine": result["machine"],
        }
    if "mpnn" in parts:
        mpnn_cfg, mpnn_summary = done["mpnn"]
        train_graphs = split_graph_data(mpnn_cfg.data)[0]
        graphs, nodes = len(train_graphs), sum(g.num_nodes for g in train_graphs)
        result["mpnn"] = mpnn_result(mpnn_cfg, mpnn_summary, budget)
        result["throughput"] = [throughput(mpnn_summary, 1, graphs, nodes, budget.warmup_epochs),
                                throughput(done["mpnn_2_workers"][1], 2, graphs, nodes, budget.warmup_epochs)]
        result["mpnn"]["load_average"] = [s for s in load if {"mpnn", "mpnn_2_workers"} & set(s["runs"])]
        result["mpnn"]["machine"] = result["machine"]
        result["mpnn"]["budget"] = mpnn_budget(result["budget"])
    kept = previous if previous is not None and previous.get("quick") == quick else None
    for part in set(PARTS) - set(parts):
        if kept is None or part not in kept:
            continue
        if part == "mpnn":
            result["mpnn"], result["throughput"] = kept["mpnn"], kept["throughput"]
            # An earlier file holds the load and machine at its top level.
            result["mpnn"].setdefault("load_average", [s for s in kept.get("load_average", [])
                                                       if {"mpnn", "mpnn_2_workers"} & set(s["runs"])])
            result["mpnn"].setdefault("machine", kept["machine"])
            result["mpnn"].setdefault("budget", mpnn_budget(kept["budget"]))
        elif isinstance(kept["gcn"], dict):  # a GCN part from before the declared claims is not kept
            result["gcn"] = kept["gcn"]
    result["claims"] = check_claims(result)
    result["gcn_claims"] = gcn_decisions(result)
    return result


def gcn_decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each GCN claim from its runs' test accuracy, one value per seed; a run with another budget
    than the declared one measures nothing towards it."""
    gcn = result.get("gcn")
    decisions = []
    for graph, claim in GCN_CLAIMS.items():
        runs = [r for r in (gcn or {}).get("runs", []) if r["dataset"] == graph
                and {"epochs": r["epochs"], "workers": r["workers"]} == dict(claim.budget)]
        decisions.append(claim.decide({r["seed"]: r[claim.metric] for r in runs if r["seed"] in claim.seeds}))
    return decisions


def check_claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The MPNN claims (one run each: figures, holds); the GCN claims are decisions over seeds
    (gcn_decisions)."""
    claims = []
    if "mpnn" not in result:
        return claims
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

    b = result["budget"]
    lines = []
    if result["quick"]:
        lines += ["**Quick smoke run (`--quick`): tiny budgets, runs sharing the CPUs; not figures to quote.**", ""]
    if "gcn" in result:
        gcn = result["gcn"]
        lines += [
            f"GCN: {b['gcn_epochs']} full-batch epochs, 1 Ray Train worker, seeds (train.seed: initial weights "
            f"and dropout) {', '.join(map(str, gcn['seeds']))}; the graph and its split are the same for every "
            "seed. Accuracy on the test nodes of the best checkpoint by validation accuracy; on KarateClub's "
            "standard split (PyG's train_mask: nodes 0, 4, 8, 24, one per class; the other 30 for test; no "
            "validation nodes) of the model after the whole budget. genray's karate split (data.source=karate, "
            "data.seed 0) picks one random node per class, 7 validation and 23 test nodes.",
            "",
            "| graph | seed | nodes | edges | train / val / test nodes | checkpoint epoch | val accuracy | test accuracy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in gcn["runs"]:
            val = "—" if r["val_acc"] is None else f"{r['val_acc']:.3f}"
            lines.append(f"| {r['dataset']} | {r['seed']} | {r['nodes']} | {r['edges']} | {r['train_nodes']} / "
                         f"{r['val_nodes']} / {r['test_nodes']} | {r['epoch']} | {val} | {r['test_acc']:.3f} |")
        stages = "; ".join(f"{' + '.join(s['runs'])} {s['start']:.1f} → {s['end']:.1f}" for s in gcn["load_average"])
        lines += ["", f"Load average (1 min) before → after each pair of GCN runs: {stages}. "
                      f"{machine_line(gcn['machine'])}", ""]
    if "mpnn" in result:
        m, mb = result["mpnn"], result["mpnn"]["budget"]
        g = m["graphs"]
        lines += [
            f"MPNN: random geometric graphs ({m['nodes'][0]}–{m['nodes'][1]} nodes, radius {m['radius']}), "
            f"{g['train']} train / {g['val']} val / {g['test']} test graphs; {mb['mpnn_epochs']} epochs, batch "
            f"{mb['batch_size']}, 1 worker, seed 0; best epoch by val MAE for the MPNN and the degree MLP alike. "
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
            f"MPNN training throughput (median epoch after {mb['warmup_epochs']} warm-up, training pass plus "
            f"validation; batch {mb['batch_size']} per worker):",
            "",
            "| Ray Train workers | s / epoch | graphs / s | nodes / s |",
            "|---|---|---|---|",
        ]
        for t in result["throughput"]:
            lines.append(f"| {t['workers']} | {t['epoch_s']:.2f} | {t['graphs_per_s']:.0f} | {t['nodes_per_s']:.0f} |")
        stages = "; ".join(f"{' + '.join(s['runs'])} {s['start']:.1f} → {s['end']:.1f}" for s in m["load_average"])
        lines += ["", f"Load average (1 min) before → after each MPNN run: {stages}, on "
                      f"{m['machine']['cores']} cores. Above the core count, other work shared the CPUs and "
                      f"slowed the timings. {machine_line(m['machine'])}", ""]
    lines += [*HEADER, *(claim_row(d) for d in result["gcn_claims"])]
    if result["claims"]:
        lines += ["", "MPNN claims, one run (seed 0):", "", "| claim | holds | figures |", "|---|---|---|"]
        lines += [f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['figures']} |" for c in result["claims"]]
    return "\n".join(lines) + "\n"
