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
              against two baselines fit on the same train / val / test split, over the declared
              seeds (train.seed: initial weights and batch order, the degree MLP's too; the
              graphs and their split stay fixed, data.seed 0):
                mean        predict the training set's mean target
                degree MLP  an MLP on degree statistics (nodes, edges, mean / max / min / std
                            of the degree), trained like the MPNN: same epochs, batch size,
                            optimiser, learning rate and seed, standardised targets, best epoch
                            by the same validation metric
              the MPNN must beat both on every target at every seed
    throughput MPNN training graphs/s and nodes/s with 1 and 2 Ray Train workers: the median
              epoch after warm-up, from the run's history (an epoch is the training pass over
              the worker's shard plus its share of validation); one measurement, not a claim:
              seed 0's MPNN run and a 2-worker run beside it

GCN and MPNN train with genray.train.fit (Ray Train, the family's own train step, checkpoints
ranked by the family's metric); the reported model is the best checkpoint, evaluated here on
data it never trained on. Only the degree MLP baseline trains in this module (plain torch).

The claims are declared before the runs that decide them. GCN_CLAIMS: test accuracy at least 0.9,
the mean over their seeds. MPNN_CLAIMS: the MPNN's test MAE below each baseline's on every target
at every seed. The parts (PARTS) run alone with --parts; a part not run is kept from the previous
gnn.json. MPNN runs of other seeds at the same budget on the same graphs are kept too, so running
the seeds one at a time completes the MPNN claims.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genray.bench.claims import HEADER, Claim, claim_row
from genray.data.graphs import TARGETS

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
MPNN_SEEDS = (0, 1, 2)
# One seed's MPNN run, in its config's names: train.epochs, data.num_graphs (split 60 / 20 / 20),
# train.batch_size, train.workers. The degree MLP trains with the same epochs and batch size.
MPNN_BUDGET = {"epochs": 100, "num_graphs": 600, "batch_size": 32, "workers": 1}
# The MPNN claims' metric, per seed: on how many of the rgg TARGETS the MPNN's test MAE is strictly
# below the baseline's (targets_below). It is at most len(TARGETS), so the mean over the seeds
# reaches the target only when every seed beats the baseline on every target; a tie is a miss.
MPNN_CLAIMS = {
    "mean": Claim(
        key="mpnn_below_mean", metric="targets_below_mean", target=len(TARGETS), direction=">=",
        budget=MPNN_BUDGET, seeds=MPNN_SEEDS,
        text=f"MPNN test MAE below predicting the training mean on every target (targets below, of {len(TARGETS)})"),
    "degree_mlp": Claim(
        key="mpnn_below_degree_mlp", metric="targets_below_degree_mlp", target=len(TARGETS), direction=">=",
        budget=MPNN_BUDGET, seeds=MPNN_SEEDS,
        text=f"MPNN test MAE below the degree-statistics MLP on every target (targets below, of {len(TARGETS)})"),
}
# The 1-worker throughput row is this seed's MPNN run; the 2-worker run trains with it.
THROUGHPUT_SEED = 0
# What every seed's MPNN run shares: runs merge only when these are equal.
MPNN_DATA = ("graphs", "nodes", "radius", "data_seed", "targets", "target_std")
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


FULL = Budget(gcn_epochs=GCN_BUDGET["epochs"], mpnn_epochs=MPNN_BUDGET["epochs"], throughput_epochs=12,
              warmup_epochs=2, num_graphs=MPNN_BUDGET["num_graphs"], batch_size=MPNN_BUDGET["batch_size"],
              cpus_per_worker=1.0, concurrent=False)
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


def mpnn_result(cfg, summary) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what every seed's run shares: the graphs and targets; this run's row: the test MAE per
    target of its best checkpoint (by val MAE) and of the two baselines, the degree MLP trained
    with the run's epochs, batch size and seed)."""
    from torch_geometric.data import Batch

    from genray.checkpoint import load_family
    from genray.data.graphs import split_graph_data

    family, ckpt = load_family(summary.best_checkpoint)
    train, val, test = split_graph_data(cfg.data)
    batch = Batch.from_data_list(test)
    mpnn_err = (family.predict_batch(batch).cpu() - batch.y).abs().mean(0)  # (T,) original units
    mean_err = (train[0].y_mean - batch.y).abs().mean(0)  # (T,)
    mlp = fit_degree_mlp(train, val, test, cfg.train.epochs, cfg.train.batch_size, family.cfg.lr,
                         seed=cfg.train.seed)
    targets = list(family.cfg.targets)
    std = train[0].y_std[0]
    maes = {"mpnn": mpnn_err.tolist(), "mean": mean_err.tolist(), "degree_mlp": mlp["test_mae"]}
    data = {
        "graphs": {"train": len(train), "val": len(val), "test": len(test)},
        "nodes": [cfg.data.min_nodes, cfg.data.max_nodes], "radius": cfg.data.radius, "data_seed": cfg.data.seed,
        "targets": targets,
        "target_std": dict(zip(targets, std.tolist())),
    }
    row = {
        "seed": cfg.train.seed, **run_budget(cfg),
        "test_mae": {who: dict(zip(targets, err)) for who, err in maes.items()},
        # The unit-free summary the family ranks checkpoints by: mean over targets of MAE / std.
        "test_mae_over_std": {who: (torch.tensor(err) / std).mean().item() for who, err in maes.items()},
        "epoch": ckpt.epoch, "baseline_epoch": mlp["epoch"],
        "train_s": summary.wall_s,
    }
    return data, row


def run_budget(cfg) -> dict[str, Any]:
    """An MPNN run's budget in MPNN_BUDGET's keys, from its config."""
    return {"epochs": cfg.train.epochs, "num_graphs": cfg.data.num_graphs, "batch_size": cfg.train.batch_size,
            "workers": cfg.train.workers}


def throughput(summary, workers: int, graphs: int, nodes: int, warmup: int) -> dict[str, Any]:
    """Training graphs/s and nodes/s over the epochs after `warmup` (median epoch time)."""
    times = [h["epoch_s"] for h in summary.history if h.get("epoch", 0) >= warmup]
    epoch_s = statistics.median(times) if times else float("nan")
    return {"workers": workers, "epoch_s": epoch_s, "epochs_measured": len(times),
            "graphs_per_s": graphs / epoch_s, "nodes_per_s": nodes / epoch_s}


def mpnn_budget(budget: dict[str, Any]) -> dict[str, Any]:
    """The MPNN part's share of a Budget (as a dict): kept with its figures when the part is."""
    return {k: budget[k] for k in ("mpnn_epochs", "throughput_epochs", "warmup_epochs", "num_graphs", "batch_size")}


def check_mpnn_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """The MPNN seeds a run trains: distinct and among the claims' declared seeds (a run of any
    other seed would decide nothing)."""
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or set(seeds) - set(MPNN_SEEDS):
        raise ValueError(f"MPNN seeds must be distinct and among the claims' seeds "
                         f"{', '.join(map(str, MPNN_SEEDS))}; got {', '.join(map(str, seeds)) or 'none'}")
    return seeds


def run(storage: Path, quick: bool = False, parts: tuple[str, ...] = PARTS,
        previous: dict[str, Any] | None = None, mpnn_seeds: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """The bench's dict for gnn.json. A part not in `parts` is kept from `previous` (the last
    gnn.json) with the machine and load it was measured under; smoke and real figures never mix.
    `mpnn_seeds` (default: the claims' seeds; seed 0 alone with `quick`) are the MPNN seeds trained;
    the 2-worker throughput run trains only beside THROUGHPUT_SEED's run."""
    import ray

    from genray.bench import machine
    from genray.data.graphs import split_graph_data

    if not parts or set(parts) - set(PARTS):
        raise ValueError(f"parts must be among {', '.join(PARTS)}, got {', '.join(parts) or 'none'}")
    # Quick: one seed, so the claims stay undecided (a smoke test decides nothing).
    seeds = GCN_SEEDS[:1] if quick else GCN_SEEDS
    mpnn_seeds = check_mpnn_seeds(mpnn_seeds if mpnn_seeds is not None else MPNN_SEEDS[:1] if quick else MPNN_SEEDS)
    if not ray.is_initialized():
        from genray.train import start_local_ray

        start_local_ray()
    budget = QUICK if quick else FULL
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
        for seed in mpnn_seeds:
            jobs[f"mpnn_seed{seed}"] = ("mpnn", mpnn_common + [f"train.epochs={budget.mpnn_epochs}", f"train.seed={seed}"], 1)
        if THROUGHPUT_SEED in mpnn_seeds:
            jobs["mpnn_2_workers"] = ("mpnn", mpnn_common + [f"train.epochs={budget.throughput_epochs}",
                                                             f"train.seed={THROUGHPUT_SEED}"], 2)

    def start(key: str):
        family, overrides, workers = jobs[key]
        return train_run(f"bench-gnn-{key}-{stamp}", family, overrides, storage, budget, workers)

    # Full: the GCN runs two at a time (their times are not reported as speeds), then each MPNN
    # run alone so that its epoch times are its own. Quick: everything at once.
    gcn_keys = [k for k in jobs if not k.startswith("mpnn")]
    mpnn_keys = [k for k in jobs if k.startswith("mpnn")]
    if budget.concurrent:
        stages = [list(jobs)]
    else:
        stages = [gcn_keys[i:i + 2] for i in range(0, len(gcn_keys), 2)] + [[k] for k in mpnn_keys]
    done, load, load_of = {}, [], {}
    for stage in stages:
        # The 1-minute load average around each stage: on a shared machine it says which
        # timings other work slowed.
        before = os.getloadavg()[0]
        with ThreadPoolExecutor(len(stage)) as pool:
            done.update(zip(stage, pool.map(start, stage)))
        load.append({"runs": stage, "start": before, "end": os.getloadavg()[0]})
        load_of.update({k: {"start": before, "end": load[-1]["end"]} for k in stage})
        print(f"bench gnn: trained {', '.join(stage)}", flush=True)

    result: dict[str, Any] = {"machine": machine(), "quick": quick, "budget": asdict(budget)}
    kept = previous if previous is not None and previous.get("quick") == quick else None
    stored = stored_mpnn(kept) if kept is not None and "mpnn" in kept else None
    if "gcn" in parts:
        result["gcn"] = {
            "seeds": list(seeds),
            "runs": [gcn_result(key.rsplit("_seed", 1)[0], *done[key]) for key in gcn_keys],
            "load_average": [s for s in load if set(s["runs"]) & set(gcn_keys)],
            "machine": result["machine"],
        }
    elif kept is not None and isinstance(kept.get("gcn"), dict):  # a GCN part from before the declared claims is not kept
        result["gcn"] = kept["gcn"]
    if "mpnn" in parts:
        rows = []
        for seed in mpnn_seeds:
            data, row = mpnn_result(*done[f"mpnn_seed{seed}"])
            rows.append({**row, "load_average": load_of[f"mpnn_seed{seed}"], "machine": result["machine"]})
        speeds = []
        if "mpnn_2_workers" in done:
            one_cfg, one = done[f"mpnn_seed{THROUGHPUT_SEED}"]
            train_graphs = split_graph_data(one_cfg.data)[0]
            graphs, nodes = len(train_graphs), sum(g.num_nodes for g in train_graphs)
            speeds = [{**throughput(summary, workers, graphs, nodes, budget.warmup_epochs),
                       "load_average": load_of[key], "machine": result["machine"]}
                      for key, workers, summary in ((f"mpnn_seed{THROUGHPUT_SEED}", 1, one),
                                                    ("mpnn_2_workers", 2, done["mpnn_2_workers"][1]))]
        part = {**data, "budget": mpnn_budget(result["budget"]), "runs": rows}
        result["mpnn"], result["throughput"] = merge_mpnn(part, speeds, stored)
    elif stored is not None:
        result["mpnn"], result["throughput"] = stored
    result["gcn_claims"] = gcn_decisions(result)
    result["mpnn_claims"] = mpnn_decisions(result)
    return result


def stored_mpnn(previous: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The MPNN part and throughput rows of a stored gnn.json, in the shape `run` writes.

    A file from before the per-seed runs holds one run's figures in the part itself, and the load
    and machine of both MPNN runs beside them (an older one at its top level). That run is seed
    0's: the bench passed no train.seed and no data.seed (both default to 0), fit_degree_mlp ran
    with its default seed 0, and the file's table says "seed 0". So it reads as seed 0's row, and
    the claims as 1 of 3 seeds measured."""
    mpnn, speeds = previous["mpnn"], previous["throughput"]
    if "runs" in mpnn:
        return mpnn, speeds
    budget = mpnn.get("budget") or mpnn_budget(previous["budget"])
    machine = mpnn.get("machine") or previous["machine"]
    stages = mpnn.get("load_average") or previous.get("load_average", [])
    load_of = {k: {"start": s["start"], "end": s["end"]} for s in stages for k in s["runs"]}
    row = {
        "seed": 0, "epochs": mpnn["epochs"], "num_graphs": budget["num_graphs"], "batch_size": budget["batch_size"],
        "workers": 1, **{k: mpnn[k] for k in ("test_mae", "test_mae_over_std", "epoch", "baseline_epoch", "train_s")},
        "load_average": load_of.get("mpnn"), "machine": machine,
    }
    part = {**{k: mpnn[k] for k in MPNN_DATA if k != "data_seed"}, "data_seed": 0, "budget": budget, "runs": [row]}
    speeds = [{**t, "load_average": load_of.get("mpnn" if t["workers"] == 1 else "mpnn_2_workers"), "machine": machine}
              for t in speeds]
    return part, speeds


def merge_mpnn(part: dict[str, Any], speeds: list[dict[str, Any]],
               stored: Optional[tuple[dict[str, Any], list[dict[str, Any]]]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """This run's MPNN part and throughput rows, completed from the stored ones (stored_mpnn) when
    both trained the same graphs at the same budget: the stored runs of seeds this run did not
    train are kept (running the seeds one at a time completes the claims), and the stored
    throughput rows stand when this run measured none (THROUGHPUT_SEED was not among its seeds)."""
    if stored is None:
        return part, speeds
    old, old_speeds = stored
    if old["budget"] != part["budget"] or any(old[k] != part[k] for k in MPNN_DATA):
        return part, speeds
    trained = {r["seed"] for r in part["runs"]}
    runs = sorted(part["runs"] + [r for r in old["runs"] if r["seed"] not in trained], key=lambda r: r["seed"])
    return {**part, "runs": runs}, speeds or old_speeds


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


def targets_below(row: dict[str, Any], baseline: str) -> int:
    """The MPNN claims' metric for one seed's run: on how many of TARGETS its MPNN test MAE is
    strictly below `baseline`'s."""
    mae = row["test_mae"]
    return sum(mae["mpnn"][t] < mae[baseline][t] for t in TARGETS)


def mpnn_claim_runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The MPNN runs that measure towards the claims: a declared seed at the declared budget."""
    return [r for r in result.get("mpnn", {}).get("runs", [])
            if r["seed"] in MPNN_SEEDS and {k: r[k] for k in MPNN_BUDGET} == MPNN_BUDGET]


def mpnn_decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each MPNN claim (MPNN_CLAIMS' order) from its runs' test MAE, one value per seed."""
    runs = mpnn_claim_runs(result)
    return [claim.decide({r["seed"]: targets_below(r, baseline) for r in runs})
            for baseline, claim in MPNN_CLAIMS.items()]


def worst_ratio(runs: list[dict[str, Any]], baseline: str) -> Optional[tuple[float, int, str]]:
    """(MPNN / baseline test MAE, seed, target) at its largest over the runs and TARGETS: how close
    the claim came to a miss (below 1 wherever the MPNN is below)."""
    ratios = [(r["test_mae"]["mpnn"][t] / r["test_mae"][baseline][t] if r["test_mae"][baseline][t] else float("inf"),
               r["seed"], t) for r in runs for t in TARGETS]
    return max(ratios) if ratios else None


def mean_std(values: list[float], fmt: str = ".3f") -> str:
    """'mean ± std' over seeds; a single value alone."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


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
        lines += mpnn_markdown(result["mpnn"], result["throughput"])
    baselines = {claim.key: baseline for baseline, claim in MPNN_CLAIMS.items()}
    runs = mpnn_claim_runs(result)
    lines += [*HEADER, *(claim_row(d) for d in result["gcn_claims"])]
    for d in result["mpnn_claims"]:
        worst = worst_ratio(runs, baselines[d["claim"]["key"]])
        detail = f"MPNN / baseline MAE at most {worst[0]:.3f} (seed {worst[1]}, {worst[2]})" if worst else ""
        lines.append(claim_row(d, fmt=".3g", detail=detail))
    return "\n".join(lines) + "\n"


def mpnn_markdown(m: dict[str, Any], speeds: list[dict[str, Any]]) -> list[str]:
    """The MPNN part's lines: test MAE per target over the seeds and per seed, throughput, load."""
    from genray.bench import machine_line

    mb, g, runs, targets = m["budget"], m["graphs"], m["runs"], m["targets"]
    names = {"mpnn": "MPNN (NNConv + GRU + set2set)", "degree_mlp": "MLP on degree statistics", "mean": "training mean"}
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [
        f"MPNN: random geometric graphs ({m['nodes'][0]}–{m['nodes'][1]} nodes, radius {m['radius']}), "
        f"{g['train']} train / {g['val']} val / {g['test']} test graphs, the same for every seed (data.seed "
        f"{m['data_seed']}); {mb['mpnn_epochs']} epochs, batch {mb['batch_size']}, 1 worker, seeds (train.seed: "
        f"initial weights and batch order; the degree MLP trains with the same seed) {seeds}; best epoch by val "
        f"MAE for the MPNN and the degree MLP alike. Test MAE in the targets' units (lower is better), "
        + (f"mean ± std over {len(runs)} seeds" if len(runs) > 1 else "one seed")
        + " (the training mean is the same at every seed):",
        "",
        "| model | " + " | ".join(targets) + " | mean MAE / std |",
        "|---|" + "---|" * (len(targets) + 1),
    ]
    for who in ("mpnn", "degree_mlp", "mean"):
        lines.append(f"| {names[who]} | " + " | ".join(mean_std([r["test_mae"][who][t] for r in runs]) for t in targets)
                     + f" | {mean_std([r['test_mae_over_std'][who] for r in runs])} |")
    lines.append("| (target std) | " + " | ".join(f"{m['target_std'][t]:.3f}" for t in targets) + " | |")
    lines += ["", "Per seed (checkpoint epoch: the best by val MAE):", "",
              "| seed | model | " + " | ".join(targets) + " | mean MAE / std | checkpoint epoch |",
              "|---|---|" + "---|" * (len(targets) + 2)]
    for r in runs:
        for who, epoch in (("mpnn", r["epoch"]), ("degree_mlp", r["baseline_epoch"])):
            lines.append(f"| {r['seed']} | {names[who]} | " + " | ".join(f"{r['test_mae'][who][t]:.3f}" for t in targets)
                         + f" | {r['test_mae_over_std'][who]:.3f} | {epoch} |")
    if speeds:
        lines += [
            "",
            f"MPNN training throughput (median epoch after {mb['warmup_epochs']} warm-up, training pass plus "
            f"validation; batch {mb['batch_size']} per worker; 1 worker: seed {THROUGHPUT_SEED}'s run above, 2 "
            f"workers: a {mb['throughput_epochs']}-epoch run of the same seed):",
            "",
            "| Ray Train workers | s / epoch | graphs / s | nodes / s |",
            "|---|---|---|---|",
        ]
        for t in speeds:
            lines.append(f"| {t['workers']} | {t['epoch_s']:.2f} | {t['graphs_per_s']:.0f} | {t['nodes_per_s']:.0f} |")
    loads = [(f"seed {r['seed']}", r["load_average"]) for r in runs]
    loads += [(f"{t['workers']} workers", t["load_average"]) for t in speeds if t["workers"] != 1]
    stages = "; ".join(f"{name} {s['start']:.1f} → {s['end']:.1f}" for name, s in loads if s is not None)
    machines = dict.fromkeys(machine_line(x["machine"]) for x in [*runs, *speeds])
    cores = ", ".join(str(c) for c in dict.fromkeys(x["machine"]["cores"] for x in [*runs, *speeds]))
    lines += ["", f"Load average (1 min) before → after each MPNN run: {stages}, on {cores} cores. Above the core "
                  f"count, other work shared the CPUs and slowed the timings. {' '.join(machines)}", ""]
    return lines
