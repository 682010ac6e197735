"""Graph datasets for the `gcn` and `mpnn` families: plain torch, PyG and networkx, no Ray.

Node classification (one graph whose nodes carry labels and train/val/test masks):
    "sbm"     a planted-partition stochastic block model with noisy community features (generated)
    "karate"  Zachary's karate club (ships inside PyG), 34 one-hot features, 4 communities
    a path    a Planetoid root (raw files ind.<name>.x, .tx, ...; e.g. Cora) or a saved PyG dataset
              (a file written by `InMemoryDataset.save(data_list, path)`, or a root whose
              processed/data.pt is one)
Graph regression (many graphs, each with a graph-level target row y of shape (1, T)):
    "rgg"     random geometric graphs with distances as edge features; the targets are exact
              graph properties (triangle count, average shortest path, algebraic connectivity)
    a path    a saved PyG dataset as above, whose graphs have x, edge_index, edge_attr and y

Both loaders return (train, val) as Python lists of `Data`, which is what the Ray Train loop
shards with a DistributedSampler and `Collater` turns into a `Batch`. Graph regression also
holds out test graphs (split_graph_data) that training never sees. A node-level dataset is a
list of one graph (the same object in train and val): see genray/families/gcn.py for why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import networkx as nx
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch_geometric.data import Data

from genray.data.images import DataError
from genray.storage import Location

PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
TARGETS = ("triangles", "avg_shortest_path", "algebraic_connectivity")
# What a graph from the "rgg" source looks like; the deployment repeats it to its clients.
RGG_FEATURES = "x = [1, degree] per node; edge_attr = [euclidean distance] per directed edge (both directions listed)"


# --- configs -------------------------------------------------------------------------------

class NodeDataConfig(BaseModel):
    """One graph for node classification (the `gcn` family's `data` section)."""

    model_config = ConfigDict(extra="forbid")

    # "sbm", "karate", a Planetoid root folder, or a saved PyG dataset (file or root folder).
    source: str = "sbm"
    # Planetoid name (Cora, CiteSeer, PubMed) when the root holds more than one; else found.
    name: str | None = None
    # Split: labelled nodes per class, then a fraction of all nodes for validation; the rest
    # is the test set. None keeps a dataset's own masks (Planetoid's public split) and means
    # 20 per class for "sbm" and 1 per class for "karate" (the GCN paper's karate setting).
    train_per_class: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)  # the SBM graph, its features and the split
    # SBM only: `blocks` communities of num_nodes / blocks nodes; an edge inside a community
    # with probability p_in, across with p_out. Features: a random unit-scale mean per
    # community plus N(0, feature_noise^2) noise per coordinate.
    num_nodes: int = Field(400, ge=4, le=1_000_000)
    blocks: int = Field(4, ge=2, le=1000)
    p_in: float = Field(0.08, ge=0.0, le=1.0)
    p_out: float = Field(0.008, ge=0.0, le=1.0)
    features: int = Field(16, ge=1, le=10_000)
    feature_noise: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _blocks_fit(self) -> "NodeDataConfig":
        if self.source == "sbm" and self.num_nodes < 2 * self.blocks:
            raise ValueError(f"num_nodes={self.num_nodes} is too few for {self.blocks} blocks (need >= 2 per block)")
        return self


class GraphDataConfig(BaseModel):
    """Many graphs for graph regression (the `mpnn` family's `data` section)."""

    model_config = ConfigDict(extra="forbid")

    source: str = "rgg"  # "rgg" or a saved PyG dataset (file or root folder)
    # Held out: val_fraction picks the checkpoint; test_fraction is never seen in training
    # (genray bench gnn reports it). The rest trains.
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = Field(0, ge=0)
    # rgg only: num_graphs graphs of min_nodes..max_nodes points uniform in the unit square,
    # joined when closer than `radius`; disconnected draws are redrawn (the targets need a
    # connected graph).
    num_graphs: int = Field(600, ge=2, le=1_000_000)
    min_nodes: int = Field(8, ge=2, le=10_000)
    max_nodes: int = Field(20, ge=2, le=10_000)
    radius: float = Field(0.4, gt=0.0, le=1.5)

    @model_validator(mode="after")
    def _node_range(self) -> "GraphDataConfig":
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes={self.min_nodes} is more than max_nodes={self.max_nodes}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                             f"leaves no training graphs; it must be below 1")
        return self


# --- node classification -----------------------------------------------------------------

def load_node_data(cfg: NodeDataConfig) -> tuple[list[Data], list[Data]]:
    """(train, val) for node classification: both are [graph], the one graph with its masks."""
    graph = load_node_graph(cfg)
    return [graph], [graph]


def load_node_graph(cfg: NodeDataConfig) -> Data:
    """The configured graph with x (N, F) float, y (N,) long and train/val/test masks (N,)."""
    if cfg.source == "sbm":
        graph = planted_partition(cfg.num_nodes, cfg.blocks, cfg.p_in, cfg.p_out, cfg.features,
                                  cfg.feature_noise, cfg.seed)
        per_class = cfg.train_per_class or 20
    elif cfg.source == "karate":
        from torch_geometric.datasets import KarateClub  # the graph is in PyG's source code

        graph = KarateClub()[0]
        per_class = cfg.train_per_class or 1
    else:
        graph = read_node_dataset(cfg.source, cfg.name)
        per_class = cfg.train_per_class
    graph = Data(x=graph.x.float(), edge_index=graph.edge_index.long(), y=graph.y.long().view(-1),
                 **{k: graph[k] for k in ("train_mask", "val_mask", "test_mask") if k in graph})
    has_masks = all(k in graph for k in ("train_mask", "val_mask", "test_mask"))
    if per_class is None and not has_masks:
        per_class = 20
    if per_class is not None:
        graph.train_mask, graph.val_mask, graph.test_mask = split_nodes(graph.y, per_class, cfg.val_fraction, cfg.seed)
    check_node_graph(graph, cfg.source)
    return graph


def planted_partition(
    num_nodes: int, blocks: int, p_in: float, p_out: float, features: int, noise: float, seed: int
) -> Data:
    """A stochastic block model graph: `blocks` equal communities (the labels y), undirected
    edges drawn independently with p_in inside and p_out across communities, and features
    x = mean[y] + noise * N(0, I) with community means drawn from N(0, I / features), so each
    mean has norm about 1. The same arguments always give the same graph."""
    rng = np.random.default_rng(seed)
    y = np.arange(num_nodes) * blocks // num_nodes  # (N,) sizes differ by at most one
    same = y[:, None] == y[None, :]
    upper = np.triu(rng.random((num_nodes, num_nodes)) < np.where(same, p_in, p_out), k=1)
    src, dst = np.nonzero(upper | upper.T)  # both directions, no self-loops
    means = rng.normal(0.0, 1.0 / np.sqrt(features), size=(blocks, features))
    x = means[y] + noise * rng.normal(size=(num_nodes, features))
    return Data(
        x=torch.tensor(x, dtype=torch.float32),
        edge_index=torch.tensor(np.stack([src, dst]), dtype=torch.long),
        y=torch.tensor(y, dtype=torch.long),
    )


def split_nodes(
    y: torch.Tensor, train_per_class: int, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean masks (N,) each: `train_per_class` random nodes of every class, then
    round(N * val_fraction) of the others for validation, and all the rest for test.
    The three are disjoint and cover every node."""
    n = y.numel()
    gen = torch.Generator().manual_seed(seed)
    train = torch.zeros(n, dtype=torch.bool)
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().view(-1)
        if members.numel() <= train_per_class:
            raise DataError(
                f"train_per_class={train_per_class} leaves nothing to evaluate in class {c}, "
                f"which has {members.numel()} nodes; use a smaller train_per_class"
            )
        train[members[torch.randperm(members.numel(), generator=gen)[:train_per_class]]] = True
    rest = (~train).nonzero().view(-1)
    rest = rest[torch.randperm(rest.numel(), generator=gen)]
    n_val = int(round(n * val_fraction))
    if n_val >= rest.numel():
        raise DataError(f"val_fraction={val_fraction} leaves no test nodes: {rest.numel()} nodes are not for training")
    val = torch.zeros(n, dtype=torch.bool)
    val[rest[:n_val]] = True
    return train, val, ~(train | val)


def read_node_dataset(source: str, name: str | None) -> Data:
    """The first graph of a Planetoid root or of a saved PyG dataset."""
    if Location(source).on_s3:
        raise DataError(f"source {source!r}: graph datasets are read from a local folder or file only")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"source {source!r}: no such file or folder; expected 'sbm', 'karate', a Planetoid root "
            f"(holding <Name>/raw/ind.<name>.x ...) or a saved PyG dataset (.pt)"
        )
    if path.is_file() or (path / "processed" / "data.pt").is_file():
        return read_saved_graphs(path)[0]
    return read_planetoid(path, name)


def read_planetoid(root: str | Path, name: str | None = None) -> Data:
    """A Planetoid graph from local raw files (never downloads): `root` holds <Name>/raw/ or is
    the <Name> folder itself. Masks are Planetoid's public split."""
    root = Path(root).expanduser()
    if name is None:
        if (root / "raw" / f"ind.{root.name.lower()}.x").is_file():
            root, name = root.parent, root.name
        else:
            found = sorted(d.name for d in root.iterdir() if (d / "raw" / f"ind.{d.name.lower()}.x").is_file())
            if len(found) != 1:
                what = f"several ({', '.join(found)}); set data.name" if found else "none"
                raise DataError(
                    f"{root}: looked for a Planetoid dataset <Name>/raw/ind.<name>.x and found {what}"
                )
            name = found[0]
    raw = root / name / "raw"
    missing = [f"ind.{name.lower()}.{part}" for part in PLANETOID_PARTS
               if not (raw / f"ind.{name.lower()}.{part}").is_file()]
    if missing:
        # Checked here because PyG would otherwise try to download them.
        raise DataError(f"{raw}: Planetoid dataset {name!r} is missing {', '.join(missing)}")
    from torch_geometric.datasets import Planetoid

    try:
        return Planetoid(str(root), name)[0]
    except Exception as err:  # a truncated pickle, inconsistent sizes, ...: say where and what
        raise DataError(f"{raw}: could not read Planetoid dataset {name!r}: {type(err).__name__}: {err}") from None


def read_saved_graphs(path: str | Path) -> list[Data]:
    """The graphs of a file written by `InMemoryDataset.save(data_list, path)` (or a root whose
    processed/data.pt is such a file)."""
    from torch_geometric.data import InMemoryDataset

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "processed" / "data.pt"

    class Saved(InMemoryDataset):
        def __init__(self):
            super().__init__(None, log=False)
            self.load(str(path))

    try:
        graphs = list(Saved())
    except Exception as err:
        raise DataError(
            f"{path}: not a saved PyG dataset (write one with InMemoryDataset.save(data_list, path)): "
            f"{type(err).__name__}: {err}"
        ) from None
    if not graphs:
        raise DataError(f"{path}: the saved dataset holds no graphs")
    return graphs


def check_node_graph(graph: Data, source: str) -> None:
    """Fail early, naming the source, on a graph the GCN cannot train on."""
    n = graph.num_nodes
    if graph.x is None or graph.x.dim() != 2 or graph.x.size(0) != n:
        raise DataError(f"{source}: node features x must have shape (num_nodes, F)")
    if graph.y is None or graph.y.numel() != n:
        raise DataError(f"{source}: node labels y must have one entry per node ({n})")
    if graph.edge_index.numel() and (graph.edge_index.min() < 0 or graph.edge_index.max() >= n):
        raise DataError(f"{source}: edge_index refers to nodes outside 0..{n - 1}")
    for k in ("train_mask", "val_mask"):
        if int(graph[k].sum()) == 0:
            raise DataError(f"{source}: {k} selects no nodes")


# --- graph regression ----------------------------------------------------------------------

def triangles(g: nx.Graph) -> int:
    """Number of triangles in the graph (each counted once)."""
    return sum(nx.triangles(g).values()) // 3


def avg_shortest_path(g: nx.Graph) -> float:
    """Mean shortest-path length (in hops) over ordered pairs of distinct nodes; needs a connected graph."""
    return float(nx.average_shortest_path_length(g))


def algebraic_connectivity(g: nx.Graph) -> float:
    """Second-smallest eigenvalue of the Laplacian L = D - A (dense, exact to float64 rounding);
    0 for a disconnected graph, n for the complete graph K_n."""
    a = nx.to_numpy_array(g, nodelist=sorted(g.nodes), weight=None)
    laplacian = np.diag(a.sum(1)) - a
    return float(np.linalg.eigvalsh(laplacian)[1])


TARGET_FUNCTIONS = {"triangles": triangles, "avg_shortest_path": avg_shortest_path,
                    "algebraic_connectivity": algebraic_connectivity}


def graph_targets(g: nx.Graph, names: Sequence[str] = TARGETS) -> list[float]:
    return [float(TARGET_FUNCTIONS[name](g)) for name in names]


def random_geometric_graph(num_nodes: int, radius: float, rng: np.random.Generator, max_tries: int = 1000) -> Data:
    """A connected random geometric graph: x = [1, degree] (N, 2), both edge directions in
    edge_index (2, E), edge_attr = distance (E, 1), y = the exact TARGETS (1, 3)."""
    for _ in range(max_tries):
        pos = rng.random((num_nodes, 2))
        dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # (N, N)
        adjacency = (dist < radius) & ~np.eye(num_nodes, dtype=bool)
        g = nx.from_numpy_array(adjacency.astype(np.int8))
        if nx.is_connected(g):
            break
    else:
        raise DataError(
            f"no connected random geometric graph of {num_nodes} nodes with radius={radius} in "
            f"{max_tries} draws; use a larger radius"
        )
    src, dst = np.nonzero(adjacency)
    degree = adjacency.sum(1).astype(np.float32)
    return Data(
        x=torch.tensor(np.stack([np.ones_like(degree), degree], 1)),
        edge_index=torch.tensor(np.stack([src, dst]), dtype=torch.long),
        edge_attr=torch.tensor(dist[src, dst], dtype=torch.float32).unsqueeze(1),
        y=torch.tensor([graph_targets(g)], dtype=torch.float32),
    )


def rgg_graphs(num_graphs: int, min_nodes: int, max_nodes: int, radius: float, seed: int) -> list[Data]:
    """`num_graphs` connected random geometric graphs; the same arguments give the same graphs."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_nodes, max_nodes + 1, size=num_graphs)
    return [random_geometric_graph(int(n), radius, rng) for n in sizes]


def load_graph_data(cfg: GraphDataConfig) -> tuple[list[Data], list[Data]]:
    """(train, val) lists of graphs, each with y (1, T) in original units and the *training*
    set's target mean and std as y_mean, y_std (1, T), which the model keeps for inference.
    The test graphs (split_graph_data) are left out."""
    train, val, _ = split_graph_data(cfg)
    return train, val


def split_graph_data(cfg: GraphDataConfig) -> tuple[list[Data], list[Data], list[Data]]:
    """(train, val, test): a fixed permutation (cfg.seed) puts round(n * val_fraction) graphs in
    val, round(n * test_fraction) in test and the rest in train; all three carry the training
    set's y_mean, y_std."""
    if cfg.source == "rgg":
        graphs = rgg_graphs(cfg.num_graphs, cfg.min_nodes, cfg.max_nodes, cfg.radius, cfg.seed)
    else:
        if Location(cfg.source).on_s3 or not Path(cfg.source).expanduser().exists():
            raise DataError(f"source {cfg.source!r}: expected 'rgg' or a local saved PyG dataset (file or root folder)")
        graphs = [as_regression_graph(g, i, cfg.source) for i, g in enumerate(read_saved_graphs(cfg.source))]
    n_val = max(1, int(round(len(graphs) * cfg.val_fraction)))
    n_test = int(round(len(graphs) * cfg.test_fraction))
    if n_val + n_test >= len(graphs):
        raise DataError(f"val_fraction={cfg.val_fraction} and test_fraction={cfg.test_fraction} leave no "
                        f"training graphs out of {len(graphs)}")
    perm = torch.randperm(len(graphs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    val = [graphs[i] for i in perm[:n_val]]
    test = [graphs[i] for i in perm[n_val:n_val + n_test]]
    train = [graphs[i] for i in perm[n_val + n_test:]]
    y = torch.cat([g.y for g in train])  # (N_train, T)
    mean, std = y.mean(0, keepdim=True), y.std(0, keepdim=True).clamp_min(1e-6)
    for g in train + val + test:
        g.y_mean, g.y_std = mean, std
    return train, val, test


def as_regression_graph(g: Data, i: int, source: str) -> Data:
    """A saved graph reduced to what the MPNN reads; y becomes a (1, T) float row."""
    for key in ("x", "edge_index", "edge_attr", "y"):
        if g.get(key) is None:
            raise DataError(f"{source}: graph {i} has no {key}; graph regression needs x, edge_index, edge_attr and y")
    edge_attr = g.edge_attr.float()
    return Data(x=g.x.float(), edge_index=g.edge_index.long(),
                edge_attr=edge_attr.unsqueeze(1) if edge_attr.dim() == 1 else edge_attr,
                y=g.y.float().reshape(1, -1))

