"""The graph families without Ray: exact targets, generated and loaded data, training,
permutation symmetry, request validation and the deployments' math."""

import math
import pickle

import networkx as nx
import numpy as np
import pytest
import torch
from deployed import served
from pydantic import ValidationError
from torch.utils.data import DataLoader, DistributedSampler
from torch_geometric.data import Batch, Data, InMemoryDataset

from genray import checkpoint
from genray.config import build_config
from genray.data import DataError
from genray.data.graphs import (
    GraphDataConfig,
    NodeDataConfig,
    algebraic_connectivity,
    avg_shortest_path,
    graph_targets,
    load_graph_data,
    load_node_data,
    load_node_graph,
    planted_partition,
    rgg_graphs,
    split_graph_data,
    split_nodes,
    triangles,
)
from genray.deploy.common import BadRequest
from genray.deploy.gnn import GCNRequest, MPNNRequest, predict_graphs, predict_nodes, to_graph
from genray.families import get_family


@pytest.fixture(autouse=True)
def one_thread():
    """These graphs are tiny: extra intra-op threads only add synchronisation (and, on a shared
    machine, waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_rgg(**overrides) -> GraphDataConfig:
    return GraphDataConfig(**{"num_graphs": 40, "min_nodes": 6, "max_nodes": 10, **overrides})


# --- exact targets ---------------------------------------------------------------------------

def test_targets_are_exact_on_hand_checkable_graphs():
    assert triangles(nx.complete_graph(3)) == 1
    assert triangles(nx.complete_graph(4)) == 4  # C(4, 3)
    assert triangles(nx.cycle_graph(5)) == 0
    for n in (2, 3, 5, 8):
        # Path 0-1-...-(n-1): sum over ordered pairs of |i - j| / (n (n - 1)) = (n + 1) / 3.
        assert avg_shortest_path(nx.path_graph(n)) == pytest.approx((n + 1) / 3)
        # Laplacian spectrum of K_n is {0, n, ..., n}; of the path, 2 - 2 cos(pi k / n).
        assert algebraic_connectivity(nx.complete_graph(n)) == pytest.approx(n)
        assert algebraic_connectivity(nx.path_graph(n)) == pytest.approx(2 - 2 * math.cos(math.pi / n))
    assert avg_shortest_path(nx.star_graph(4)) == pytest.approx((4 * 2 * 1 + 12 * 2) / 20)
    disconnected = nx.Graph([(0, 1), (2, 3)])
    assert algebraic_connectivity(disconnected) == pytest.approx(0.0, abs=1e-12)


def test_generated_graphs_carry_their_exact_targets_and_repeat_with_the_seed():
    graphs = rgg_graphs(12, 5, 9, 0.5, seed=3)
    for g in graphs:
        src, dst = g.edge_index
        assert (src != dst).all()
        as_nx = nx.Graph()
        as_nx.add_nodes_from(range(g.num_nodes))
        as_nx.add_edges_from(g.edge_index.t().tolist())
        assert nx.is_connected(as_nx) and 5 <= g.num_nodes <= 9
        assert 2 * as_nx.number_of_edges() == g.edge_index.size(1)  # both directions listed
        assert torch.allclose(g.y, torch.tensor([graph_targets(as_nx)]))
        assert torch.equal(g.x[:, 1], torch.bincount(src, minlength=g.num_nodes).float())  # [1, degree]
        assert g.edge_attr.shape == (g.edge_index.size(1), 1) and (g.edge_attr > 0).all()
        assert (g.edge_attr < 0.5).all()  # joined only when closer than the radius
    again = rgg_graphs(12, 5, 9, 0.5, seed=3)
    assert all(torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y) for a, b in zip(graphs, again))
    other = rgg_graphs(12, 5, 9, 0.5, seed=4)
    assert any(a.num_nodes != b.num_nodes or not torch.equal(a.y, b.y) for a, b in zip(graphs, other))


def test_graph_split_holds_out_test_graphs_and_standardises_with_training_statistics():
    train, val, test = split_graph_data(small_rgg(val_fraction=0.25, test_fraction=0.2))
    assert (len(train), len(val), len(test)) == (22, 10, 8)
    y = torch.cat([g.y for g in train])
    for g in train + val + test:
        assert torch.allclose(g.y_mean, y.mean(0, keepdim=True)) and torch.allclose(g.y_std, y.std(0, keepdim=True))
    ids = [{id(g) for g in part} for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # The training loop's loader: the same graphs, in the same order; the test graphs stay out.
    loaded_train, loaded_val = load_graph_data(small_rgg(val_fraction=0.25, test_fraction=0.2))
    assert [g.y.tolist() for g in loaded_train] == [g.y.tolist() for g in train]
    assert [g.y.tolist() for g in loaded_val] == [g.y.tolist() for g in val]
    assert len(load_graph_data(small_rgg(test_fraction=0.0))[0]) == 32
    with pytest.raises(ValidationError, match="leaves no training graphs"):
        small_rgg(val_fraction=0.5, test_fraction=0.5)


def test_graph_datasets_are_sharded_across_workers():
    """What the Ray Train loop does with a graph-level dataset: a DistributedSampler gives each
    rank its own graphs (padded to equal shards by repeating a few), and Collater batches them."""
    train, _ = load_graph_data(small_rgg(num_graphs=44, val_fraction=0.2, test_fraction=0.1))
    assert len(train) == 31  # 44 - 9 val - 4 test: odd, so 2 ranks need one repeat
    collate = get_family("mpnn").collate_fn
    for world in (2, 3):
        shards = [list(DistributedSampler(train, num_replicas=world, rank=r, shuffle=True, seed=0))
                  for r in range(world)]
        assert {len(s) for s in shards} == {-(-len(train) // world)}  # ceil: equal steps on every rank
        assert set().union(*shards) == set(range(len(train)))  # every graph is trained on
        assert sum(len(s) for s in shards) - len(train) < world  # and only the padding repeats
        batches = [next(iter(DataLoader([train[i] for i in s], batch_size=4, collate_fn=collate))) for s in shards]
        assert all(b.num_graphs == 4 and b.y.shape == (4, 3) for b in batches)


# --- node-level data ---------------------------------------------------------------------------

def test_sbm_is_deterministic_and_its_split_is_disjoint_and_complete():
    a = planted_partition(120, 3, 0.2, 0.01, 5, 1.0, seed=7)
    b = planted_partition(120, 3, 0.2, 0.01, 5, 1.0, seed=7)
    c = planted_partition(120, 3, 0.2, 0.01, 5, 1.0, seed=8)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    assert torch.bincount(a.y).tolist() == [40, 40, 40]
    src, dst = a.edge_index
    assert (src != dst).all()
    assert {tuple(e) for e in a.edge_index.t().tolist()} == {tuple(e) for e in a.edge_index.flip(0).t().tolist()}
    assert (a.y[src] == a.y[dst]).float().mean() > 0.8  # planted communities: mostly inner edges

    g = load_node_graph(NodeDataConfig(num_nodes=120, blocks=3, train_per_class=5, val_fraction=0.25))
    masks = torch.stack([g.train_mask, g.val_mask, g.test_mask]).long()
    assert (masks.sum(0) == 1).all()  # disjoint and covering every node
    assert torch.bincount(g.y[g.train_mask]).tolist() == [5, 5, 5]
    assert int(g.val_mask.sum()) == 30 and int(g.test_mask.sum()) == 120 - 15 - 30
    again = load_node_graph(NodeDataConfig(num_nodes=120, blocks=3, train_per_class=5, val_fraction=0.25))
    assert torch.equal(g.val_mask, again.val_mask)
    with pytest.raises(DataError, match="train_per_class=40 leaves nothing"):
        split_nodes(g.y, 40, 0.2, 0)


def test_karate_and_the_one_graph_dataset_under_a_distributed_sampler():
    train, val = load_node_data(NodeDataConfig(source="karate"))
    (g,) = train
    assert val[0] is g and g.num_nodes == 34 and g.x.shape == (34, 34)
    assert torch.bincount(g.y[g.train_mask]).tolist() == [1, 1, 1, 1]  # the GCN paper's setting
    # Every rank of a DDP run gets the whole graph (the sampler pads by repetition).
    for world in (2, 3):
        assert [list(DistributedSampler(train, num_replicas=world, rank=r)) for r in range(world)] == [[0]] * world


def write_planetoid(root, name="Toy", n_train=12, n_all=520, n_test=30, features=8, classes=3):
    """Raw files in Planetoid's layout (ind.<name>.x ...); Planetoid's val split is nodes
    n_train .. n_train + 499, so n_all must be at least n_train + 500."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = n_all + n_test
    labels = rng.integers(0, classes, n)
    onehot = np.eye(classes)[labels]
    feats = rng.random((n, features)).astype(np.float32)
    test_index = np.arange(n_all, n)
    parts = {"x": feats[:n_train], "y": onehot[:n_train], "allx": feats[:n_all], "ally": onehot[:n_all],
             "tx": feats[n_all:], "ty": onehot[n_all:], "graph": {i: [(i + 1) % n, (i - 1) % n] for i in range(n)}}
    for part, value in parts.items():
        (raw / f"ind.{name.lower()}.{part}").write_bytes(pickle.dumps(value))
    (raw / f"ind.{name.lower()}.test.index").write_text("".join(f"{i}\n" for i in test_index))
    return feats, labels


def test_planetoid_root_loads_with_its_public_split_and_trains(tmp_path):
    feats, labels = write_planetoid(tmp_path)
    for source in (tmp_path, tmp_path / "Toy"):  # the root, or the dataset's own folder
        g = load_node_graph(NodeDataConfig(source=str(source)))
        assert g.num_nodes == 550 and torch.allclose(g.x, torch.from_numpy(feats))
        assert torch.equal(g.y, torch.from_numpy(labels))
        assert [int(g[k].sum()) for k in ("train_mask", "val_mask", "test_mask")] == [12, 500, 30]
        assert g.edge_index.size(1) == 2 * 550  # a ring, both directions
    torch.manual_seed(0)
    cfg = build_config("gcn", overrides=[f"data.source={tmp_path}", "model.in_features=8", "model.num_classes=3",
                                         "model.dropout=0.0"])
    family = get_family("gcn")(cfg.model)
    batch = next(iter(DataLoader(load_node_data(cfg.data)[0], batch_size=4, collate_fn=family.collate_fn)))
    family.train()
    losses = [family.train_step(batch, 0.0)["loss"] for _ in range(15)]
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # the 12 training nodes get fitted
    with pytest.raises(ValueError, match="set model.in_features=8"):
        get_family("gcn")({"in_features": 5, "num_classes": 3}).train_step(batch, 0.0)


def test_planetoid_and_saved_roots_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_node_graph(NodeDataConfig(source=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="found none"):
        load_node_graph(NodeDataConfig(source=str(tmp_path)))
    write_planetoid(tmp_path / "partial")
    (tmp_path / "partial" / "Toy" / "raw" / "ind.toy.tx").unlink()
    with pytest.raises(DataError, match=r"'Toy' is missing ind\.toy\.tx"):
        load_node_graph(NodeDataConfig(source=str(tmp_path / "partial")))
    write_planetoid(tmp_path / "broken")
    (tmp_path / "broken" / "Toy" / "raw" / "ind.toy.allx").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="could not read Planetoid dataset 'Toy'"):
        load_node_graph(NodeDataConfig(source=str(tmp_path / "broken")))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a saved PyG dataset"):
        load_node_graph(NodeDataConfig(source=str(tmp_path / "junk.pt")))
    with pytest.raises(DataError, match="expected 'rgg' or a local saved"):
        load_graph_data(GraphDataConfig(source=str(tmp_path / "nowhere.pt")))


def test_saved_pyg_datasets_load_for_both_families(tmp_path):
    karate = load_node_graph(NodeDataConfig(source="karate"))
    InMemoryDataset.save([Data(x=karate.x, edge_index=karate.edge_index, y=karate.y)], str(tmp_path / "k.pt"))
    g = load_node_graph(NodeDataConfig(source=str(tmp_path / "k.pt"), train_per_class=2))
    assert torch.equal(g.edge_index, karate.edge_index)
    assert torch.bincount(g.y[g.train_mask]).tolist() == [2, 2, 2, 2]  # no masks saved: split made here

    graphs = rgg_graphs(10, 5, 8, 0.5, seed=0)
    (tmp_path / "root" / "processed").mkdir(parents=True)
    InMemoryDataset.save(graphs, str(tmp_path / "root" / "processed" / "data.pt"))
    train, val, test = split_graph_data(GraphDataConfig(source=str(tmp_path / "root"), val_fraction=0.2))
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    assert sorted(g.y.tolist() for g in train + val + test) == sorted(g.y.tolist() for g in graphs)


# --- training and symmetry ---------------------------------------------------------------------

def test_gcn_beats_the_feature_noise_on_the_sbm_graph():
    """Features alone classify about 45% of these nodes (logistic regression, measured); two
    rounds of neighbourhood averaging over the planted communities do far better."""
    torch.manual_seed(0)
    family = get_family("gcn")({})
    (graph,), _ = load_node_data(NodeDataConfig())
    batch = Batch.from_data_list([graph])
    family.train()
    losses = [family.train_step(batch, float(i))["loss"] for i in range(60)]
    assert sum(losses[-5:]) < sum(losses[:5]) / 2
    family.eval()
    metrics = family.eval_batch(batch)
    assert metrics["val_acc"] > 0.85 and metrics["test_acc"] > 0.85, metrics


def test_gcn_eval_sums_are_per_graph_accuracies():
    family = get_family("gcn")({"in_features": 34})
    (karate,), _ = load_node_data(NodeDataConfig(source="karate"))
    family.eval()
    one = family.eval_batch(Batch.from_data_list([karate]))
    two = family.eval_batch(Batch.from_data_list([karate, karate]))
    pred = family.predict(karate.x, karate.edge_index).argmax(1)
    assert one["val_acc"] == pytest.approx((pred == karate.y)[karate.val_mask].float().mean().item())
    assert two["val_acc"] == pytest.approx(2 * one["val_acc"]) and two["test_acc"] == pytest.approx(2 * one["test_acc"])


def test_mpnn_trains_and_keeps_the_target_statistics_in_its_weights(tmp_path):
    torch.manual_seed(0)
    cfg = build_config("mpnn", overrides=["data.num_graphs=40", "data.min_nodes=6", "data.max_nodes=10",
                                          "model.hidden=16", "model.edge_hidden=16"])
    family = get_family("mpnn")(cfg.model)
    train, val = load_graph_data(cfg.data)
    batch = Batch.from_data_list(train)
    family.train()
    losses = [family.train_step(batch, 0.0)["loss"] for _ in range(12)]
    assert losses[-1] < losses[0]
    net = family.nets["mpnn"]
    assert torch.equal(net.target_mean, train[0].y_mean[0]) and torch.equal(net.target_std, train[0].y_std[0])

    family.eval()
    vbatch = Batch.from_data_list(val)
    metrics = family.eval_batch(vbatch)
    pred = family.predict_batch(vbatch)  # original units
    assert metrics["val_mae_triangles"] == pytest.approx((pred[:, 0] - vbatch.y[:, 0]).abs().sum().item(), rel=1e-5)
    assert metrics["val_mean_mae_triangles"] == pytest.approx((vbatch.y_mean - vbatch.y)[:, 0].abs().sum().item())
    path = checkpoint.save(tmp_path / "m", family="mpnn", config=cfg.to_dict(), state=family.state_dict(),
                           epoch=0, metrics=metrics)
    restored, _ = checkpoint.load_family(path)
    assert torch.allclose(restored.predict_batch(vbatch), pred)  # the statistics came along


def relabel(graph: Data, perm: torch.Tensor) -> Data:
    """New node j is old node perm[j]; edges are renumbered and their order shuffled too."""
    new_id = torch.argsort(perm)
    order = torch.randperm(graph.edge_index.size(1), generator=torch.Generator().manual_seed(1))
    out = Data(x=graph.x[perm], edge_index=new_id[graph.edge_index][:, order])
    if graph.edge_attr is not None:
        out.edge_attr = graph.edge_attr[order]
    return out


def test_gcn_is_permutation_equivariant():
    torch.manual_seed(0)
    family = get_family("gcn")({"in_features": 34})
    family.eval()
    (g,), _ = load_node_data(NodeDataConfig(source="karate"))
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(0))
    moved = relabel(g, perm)
    before = family.predict(g.x, g.edge_index)
    after = family.predict(moved.x, moved.edge_index)
    assert torch.allclose(after, before[perm], atol=1e-6)


def test_mpnn_is_permutation_invariant():
    torch.manual_seed(0)
    family = get_family("mpnn")({"hidden": 16, "edge_hidden": 16})
    family.eval()
    for g in rgg_graphs(3, 8, 12, 0.5, seed=5):
        perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(0))
        moved = relabel(g, perm)
        before = family.predict(g.x, g.edge_index, g.edge_attr)
        assert torch.allclose(family.predict(moved.x, moved.edge_index, moved.edge_attr), before, atol=1e-5)


# --- deployment: requests and math --------------------------------------------------------------

TRIANGLE = {"x": [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], "edge_index": [[0, 1, 2, 1, 2, 0], [1, 2, 0, 0, 1, 2]]}


@pytest.mark.parametrize("body, field, message", [
    ({"x": [], "edge_index": [[], []]}, "x", "graph is empty"),
    ({"x": [[1.0]] * 2001, "edge_index": [[], []]}, "x", "too many nodes: 2001 rows, the limit is 2000"),
    ({"x": [[1.0, 2.0], [1.0]], "edge_index": [[], []]}, "x", "same number of features"),
    ({"x": [[1.0]] * 3, "edge_index": [[0, 3], [1, 2]]}, "edge_index", "3 is out of range: the graph has 3 nodes"),
    ({"x": [[1.0]] * 3, "edge_index": [[0, 1], [1, -1]]}, "edge_index", "target node index -1 is out of range"),
    ({"x": [[1.0]] * 3, "edge_index": [[0, 1], [1]]}, "edge_index", "differ in length"),
    ({"x": [[1.0]] * 3, "edge_index": [[0], [1], [2]]}, "edge_index", "must be 2 rows"),
    ({"x": [[1.0]] * 3, "edge_index": [[0] * 20_001, [1] * 20_001]}, "edge_index", "too many edges"),
    ({"x": [[1.0]] * 3, "edge_index": [[0], [1]], "edge_attr": [[0.5], [0.5]]}, "edge_attr", "one row per edge"),
    ({"x": [[1.0]] * 3, "edge_index": [[0, 1], [1, 2]], "edge_attr": [[0.5], [0.5, 1]]}, "edge_attr", "same number"),
    ({"x": [[float("nan")]], "edge_index": [[], []]}, "x", "finite"),
    ({**TRIANGLE, "y": 1}, "y", "Extra inputs"),
])
def test_graph_requests_name_the_bad_field(body, field, message):
    with pytest.raises(ValidationError) as err:
        MPNNRequest.model_validate(body)
    errors = err.value.errors()
    assert errors[0]["loc"][0] == field and message in errors[0]["msg"], errors


def test_node_requests_allow_larger_graphs_and_check_widths_against_the_model():
    assert len(GCNRequest(x=[[1.0]] * 2001, edge_index=[[], []]).x) == 2001
    req = GCNRequest.model_validate(TRIANGLE)
    graph = to_graph(req, node_features=2, edge_features=0)
    assert graph.x.shape == (3, 2) and graph.edge_index.shape == (2, 6) and graph.edge_attr is None
    with pytest.raises(BadRequest, match="x: this model takes 34 features per node, got 2"):
        to_graph(req, node_features=34, edge_features=0)
    with pytest.raises(BadRequest, match="edge_attr: this model needs 1 feature"):
        to_graph(req, node_features=2, edge_features=1)
    with_attr = GCNRequest.model_validate({**TRIANGLE, "edge_attr": [[0.5]] * 6})
    with pytest.raises(BadRequest, match="edge_attr: this model takes no edge features"):
        to_graph(with_attr, node_features=2, edge_features=0)
    with pytest.raises(BadRequest, match="edge_attr: this model takes 2 features per edge, got 1"):
        to_graph(with_attr, node_features=2, edge_features=2)
    one_way = MPNNRequest(x=[[1.0]] * 3, edge_index=[[0, 1], [1, 2]], edge_attr=[[0.2], [0.4]], undirected=True)
    both = to_graph(one_way, node_features=1, edge_features=1)
    assert {tuple(e) for e in both.edge_index.t().tolist()} == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert sorted(both.edge_attr.view(-1).tolist()) == pytest.approx([0.2, 0.2, 0.4, 0.4])
    lonely = to_graph(MPNNRequest(x=[[1.0]], edge_index=[[], []]), node_features=1, edge_features=1)
    assert lonely.edge_attr.shape == (0, 1)  # an edgeless graph needs no edge_attr


def test_batched_inference_matches_one_graph_at_a_time():
    torch.manual_seed(0)
    gcn = get_family("gcn")({"in_features": 2, "num_classes": 3})
    gcn.eval()
    small = to_graph(GCNRequest.model_validate(TRIANGLE), 2, 0)
    big = Data(x=torch.randn(5, 2), edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]))
    answers = predict_nodes(gcn, [small, big])
    assert [a["num_nodes"] for a in answers] == [3, 5]
    alone = gcn.predict(big.x, big.edge_index)
    assert torch.allclose(torch.tensor(answers[1]["probabilities"]), alone, atol=1e-6)
    assert answers[1]["classes"] == alone.argmax(1).tolist()
    assert torch.allclose(torch.tensor(answers[0]["probabilities"]).sum(1), torch.ones(3))

    mpnn = get_family("mpnn")({"hidden": 8, "edge_hidden": 8})
    net = mpnn.nets["mpnn"]
    net.target_mean.copy_(torch.tensor([10.0, 2.0, 1.0]))
    net.target_std.copy_(torch.tensor([5.0, 0.5, 0.1]))
    mpnn.eval()
    graphs = rgg_graphs(3, 5, 9, 0.5, seed=1)
    answers = predict_graphs(mpnn, graphs)
    for g, answer in zip(graphs, answers):
        single = mpnn.predict(g.x, g.edge_index, g.edge_attr)
        standardised = net(g.x, g.edge_index, g.edge_attr, torch.zeros(g.num_nodes, dtype=torch.long), 1)[0]
        assert torch.allclose(single, standardised * net.target_std + net.target_mean, atol=1e-5)
        assert list(answer["prediction"]) == ["triangles", "avg_shortest_path", "algebraic_connectivity"]
        assert torch.allclose(torch.tensor(list(answer["prediction"].values())), single, atol=1e-5)


# --- deployment: over HTTP on a real Serve ------------------------------------------------------

@pytest.fixture(scope="module")
def apps(request, serve_url, tmp_path_factory):
    """The session's shared apps (tests/deployed.py): gcn and mpnn on untrained default weights."""
    names, _ = served(request, tmp_path_factory)
    return names


RING = {"x": [[1.0, 2.0]] * 3, "edge_index": [[0, 1, 2], [1, 2, 0]], "undirected": True}
GCN_ROW = [0.1] * 16  # the default gcn takes 16 features per node

# app -> (good body, [(bad body, status, words the error must contain), ...])
HTTP_CASES = {
    "mpnn": ({**RING, "edge_attr": [[0.3]] * 3}, [
        ({"x": [], "edge_index": [[], []]}, 422, ["x", "graph is empty"]),
        ({"x": [[1.0, 2.0]] * 2001, "edge_index": [[], []]}, 422, ["x", "too many nodes: 2001"]),
        ({**RING, "edge_index": [[0, 1, 3], [1, 2, 0]], "edge_attr": [[0.3]] * 3}, 422,
         ["edge_index", "source node index 3 is out of range"]),
        ({**RING, "edge_attr": [[0.3]] * 2}, 422, ["edge_attr", "one row per edge"]),
        ({**RING, "x": [[1.0, 2.0, 3.0]] * 3, "edge_attr": [[0.3]] * 3}, 422, ["x", "takes 2 features per node, got 3"]),
        (RING, 422, ["edge_attr", "needs 1 feature"]),
        ({**RING, "edge_attr": [[0.3, 0.1]] * 3}, 422, ["edge_attr", "takes 1 features per edge, got 2"]),
    ]),
    "gcn": ({"x": [GCN_ROW] * 3, "edge_index": [[0, 1], [1, 2]], "undirected": True}, [
        ({"x": [GCN_ROW] * 3, "edge_index": [[0, 1], [1, -2]]}, 422, ["edge_index", "target node index -2"]),
        ({"x": [[0.1] * 4] * 3, "edge_index": [[0], [1]]}, 422, ["x", "takes 16 features per node, got 4"]),
        ({"x": [GCN_ROW, [0.1] * 15], "edge_index": [[0], [1]]}, 422, ["x", "same number of features"]),
        ({"x": [GCN_ROW] * 10_001, "edge_index": [[], []]}, 422, ["x", "too many nodes: 10001"]),
        ({"x": [GCN_ROW] * 2, "edge_index": [[0], [1]], "edge_attr": [[1.0]]}, 422, ["edge_attr", "no edge features"]),
    ]),
}


@pytest.mark.ray
def test_graph_deployments_answer_bad_graphs_with_a_4xx_naming_the_problem(serve_url, apps):
    import requests

    for name, (good, bad_cases) in HTTP_CASES.items():
        url = f"{serve_url}/{apps[name]}/predict"
        ok = requests.post(url, json=good, timeout=60)
        assert ok.status_code == 200, ok.text
        for body, status, words in bad_cases:
            answer = requests.post(url, json=body, timeout=60)
            assert answer.status_code == status, (body if len(str(body)) < 300 else words, answer.text[:300])
            error = answer.json()["error"]
            assert all(w in error for w in words), (words, error)
        not_json = requests.post(url, data=b"{x: [", headers={"content-type": "application/json"}, timeout=60)
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
        assert requests.post(url, json=good, timeout=60).json() == ok.json()  # the replica is unharmed
