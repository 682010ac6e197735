"""Serve deployments of the graph families: node classes (gcn) and graph-level targets (mpnn).

POST /predict takes one graph in PyG's layout:
    {"x": [[...], ...],            node features, one row per node (N, F)
     "edge_index": [[src...], [dst...]],   directed edges (2, E); list both directions of an
                                           undirected edge, or set "undirected": true
     "edge_attr": [[...], ...]}    edge features, one row per edge (E, D); the mpnn needs them
The request models check everything that needs no model (empty graph, size limits, ragged rows,
indices out of range, edge_attr rows != edges); `to_graph` checks the feature widths against
the loaded model. Either way a bad graph is a 422 whose message names the field.
"""

from typing import Annotated, Any, ClassVar, Optional

import torch
from pydantic import Field, ValidationInfo, field_validator
from ray import serve
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_undirected

from genray.data.graphs import RGG_FEATURES
from genray.deploy.common import BadRequest, Finite, ModelReplica, StrictModel, by_family, deployment, make_api

MAX_FEATURE = 1e6  # |feature| beyond this is nothing a model has seen; float32 sums could overflow
Feature = Annotated[Finite, Field(ge=-MAX_FEATURE, le=MAX_FEATURE)]


class GraphRequest(StrictModel):
    """One graph; subclasses set the size limits their model can afford."""

    max_nodes: ClassVar[int] = 10_000
    max_edges: ClassVar[int] = 200_000
    max_values: ClassVar[int] = 2_000_000  # numbers in x: nodes x features

    x: list[list[Feature]]
    edge_index: list[list[int]]
    edge_attr: Optional[list[list[Feature]]] = None
    undirected: bool = False  # add the reverse of every edge (duplicates merged)

    @field_validator("x", mode="before")
    @classmethod
    def _node_count(cls, value):
        # Before parsing: a huge request is refused without converting it.
        if isinstance(value, list):
            if not value:
                raise ValueError("the graph is empty: x needs one row of features per node")
            if len(value) > cls.max_nodes:
                raise ValueError(f"too many nodes: {len(value)} rows, the limit is {cls.max_nodes}")
            values = sum(len(row) for row in value if isinstance(row, list))
            if values > cls.max_values:
                raise ValueError(f"too many numbers: {values} node features in all, the limit is {cls.max_values}")
        return value

    @field_validator("x")
    @classmethod
    def _rectangular(cls, value: list[list[float]]) -> list[list[float]]:
        widths = {len(row) for row in value}
        if len(widths) > 1:
            raise ValueError(f"every node needs the same number of features; rows have {sorted(widths)}")
        if widths == {0}:
            raise ValueError("node feature rows are empty; each node needs at least one feature")
        return value

    @field_validator("edge_index", mode="before")
    @classmethod
    def _two_rows(cls, value):
        if isinstance(value, list):
            if len(value) != 2:
                raise ValueError(f"must be 2 rows [[sources...], [targets...]], got {len(value)} rows")
            lengths = [len(row) if isinstance(row, list) else None for row in value]
            if None not in lengths:
                if lengths[0] != lengths[1]:
                    raise ValueError(f"the source and target rows differ in length ({lengths[0]} vs {lengths[1]})")
                if lengths[0] > cls.max_edges:
                    raise ValueError(f"too many edges: {lengths[0]}, the limit is {cls.max_edges}")
        return value

    @field_validator("edge_index")
    @classmethod
    def _in_range(cls, value: list[list[int]], info: ValidationInfo) -> list[list[int]]:
        if "x" not in info.data:  # x itself was invalid and is reported on its own
            return value
        n = len(info.data["x"])
        for row, name in zip(value, ("source", "target")):
            bad = [i for i in row if not 0 <= i < n]
            if bad:
                raise ValueError(f"{name} node index {bad[0]} is out of range: the graph has {n} nodes "
                                 f"(x has {n} rows), so indices must be 0..{n - 1}")
        return value

    @field_validator("edge_attr")
    @classmethod
    def _one_row_per_edge(cls, value, info: ValidationInfo):
        if value is None or "edge_index" not in info.data:
            return value
        edges = len(info.data["edge_index"][0])
        if len(value) != edges:
            raise ValueError(f"needs one row per edge: edge_index has {edges} edges, edge_attr has {len(value)} rows")
        widths = {len(row) for row in value}
        if len(widths) > 1:
            raise ValueError(f"every edge needs the same number of features; rows have {sorted(widths)}")
        if widths == {0}:
            raise ValueError("edge feature rows are empty; leave edge_attr out instead")
        return value


class GCNRequest(GraphRequest):
    max_nodes: ClassVar[int] = 10_000
    max_edges: ClassVar[int] = 200_000


class MPNNRequest(GraphRequest):
    # The edge network makes hidden^2 numbers per edge: 20k edges x 32^2 floats is 80 MB.
    max_nodes: ClassVar[int] = 2_000
    max_edges: ClassVar[int] = 20_000


def to_graph(req: GraphRequest, node_features: int, edge_features: int) -> Data:
    """A validated request -> a PyG graph for a model with these feature widths (0 edge
    features: the model takes none). Raises BadRequest naming the field on a mismatch."""
    width = len(req.x[0])
    if width != node_features:
        raise BadRequest(f"x: this model takes {node_features} features per node, got {width}")
    edges = len(req.edge_index[0])
    if edge_features and req.edge_attr is None and edges:
        raise BadRequest(f"edge_attr: this model needs {edge_features} feature(s) per edge; "
                         f"send edge_attr with one row per edge_index column")
    if not edge_features and req.edge_attr is not None:
        raise BadRequest("edge_attr: this model takes no edge features; leave edge_attr out")
    if edge_features and req.edge_attr and len(req.edge_attr[0]) != edge_features:
        raise BadRequest(f"edge_attr: this model takes {edge_features} features per edge, got {len(req.edge_attr[0])}")
    x = torch.tensor(req.x, dtype=torch.float32)  # (N, F)
    edge_index = torch.tensor(req.edge_index, dtype=torch.long).view(2, -1)  # (2, E)
    edge_attr = None
    if edge_features:
        edge_attr = torch.tensor(req.edge_attr or [], dtype=torch.float32).view(edges, edge_features)  # (E, D)
    if req.undirected:
        edge_index, edge_attr = to_undirected(edge_index, edge_attr, num_nodes=x.size(0), reduce="mean")
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr)


def predict_nodes(family, graphs: list[Data]) -> list[dict]:
    """Node classes and probabilities for each graph; all graphs go through the GCN at once
    as one disjoint union, which gives every node the same answer as one graph at a time."""
    batch = Batch.from_data_list(graphs)
    probs = family.predict(batch.x, batch.edge_index).cpu()  # (sum N, C)
    return [
        {"classes": p.argmax(1).tolist(), "probabilities": p.tolist(), "num_nodes": p.size(0)}
        for p in probs.split([g.num_nodes for g in graphs])
    ]


def predict_graphs(family, graphs: list[Data]) -> list[dict]:
    """Graph-level predictions in original units, by target name, for each graph (one batch)."""
    values = family.predict_batch(Batch.from_data_list(graphs)).cpu()  # (B, T)
    names = family.cfg.targets
    return [{"prediction": dict(zip(names, row.tolist())), "num_nodes": g.num_nodes} for row, g in zip(values, graphs)]


def info_of(deployment, extra: dict) -> dict:
    limits = {"nodes": deployment.Request.max_nodes, "edges": deployment.Request.max_edges,
              "feature_values": deployment.Request.max_values, "abs_feature": MAX_FEATURE}
    return deployment.describe(data=deployment.ckpt.config.get("data", {}), limits=limits, endpoints=["/predict"],
                               **extra)


gcn_api = make_api("genray gcn")


@deployment(gcn_api)
class GCNDeployment(ModelReplica):
    Request = GCNRequest

    @gcn_api.get("/")
    def info(self) -> dict:
        cfg = self.family.cfg
        return info_of(self, {"node_features": cfg.in_features, "edge_features": 0, "num_classes": cfg.num_classes})

    @gcn_api.post("/predict")
    async def predict(self, req: GCNRequest) -> dict:
        family = self.family
        return await self.predict_batched((family, to_graph(req, family.cfg.in_features, 0)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_batched(self, requests: list[tuple[Any, Data]]) -> list[dict]:
        return by_family(requests, lambda family, args: predict_nodes(family, [graph for graph, in args]))


mpnn_api = make_api("genray mpnn")


@deployment(mpnn_api)
class MPNNDeployment(ModelReplica):
    Request = MPNNRequest

    @mpnn_api.get("/")
    def info(self) -> dict:
        cfg = self.family.cfg
        extra = {"node_features": cfg.node_features, "edge_features": cfg.edge_features, "targets": cfg.targets}
        if self.ckpt.config.get("data", {}).get("source") == "rgg":
            extra["features"] = RGG_FEATURES
        return info_of(self, extra)

    @mpnn_api.post("/predict")
    async def predict(self, req: MPNNRequest) -> dict:
        family = self.family
        return await self.predict_batched((family, to_graph(req, family.cfg.node_features, family.cfg.edge_features)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batched(self, requests: list[tuple[Any, Data]]) -> list[dict]:
        return by_family(requests, lambda family, args: predict_graphs(family, [graph for graph, in args]))
