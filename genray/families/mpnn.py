"""Message passing neural network (Gilmer et al. 2017) for graph-level regression.

    h_v^0     = ReLU(W x_v)                                   (N, H)
    m_v^t+1   = ReLU(sum_{w in N(v)} A(e_vw) h_w^t + W_r h_v)  edge network: A(e) is an H x H
                                                              matrix computed from the edge's
                                                              features (PyG's NNConv), so every
                                                              neighbour sends its own message
    h_v^t+1   = GRU(m_v^t+1, h_v^t)                           shared over `steps` rounds
    y_hat     = MLP([set2set({h_v^T}), sum_v h_v^T / 10, log(1 + N)])   order-invariant readout, (B, T)

The net predicts standardised targets (y - mean) / std with mean and std from the training
set; it keeps them as buffers, so a checkpoint turns predictions back into original units
without the data. They reach the net with the data (each graph carries y_mean, y_std, see
genray.data.graphs.load_graph_data) because the family is built before the data is loaded.
Loss: mean squared error on standardised targets. Validation: MAE per target in original units
(`val_mae_<target>`), the MAE of always predicting the training mean (`val_mean_mae_<target>`),
and the ranking metric `val_mae`: the mean over targets of MAE / std, a unit-free average that
weighs a triangle count and a path length alike (for one target it is that MAE in stds).
The graphs are the dataset items, so the DistributedSampler shards them over the workers.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch_geometric.data import Data
from torch_geometric.loader.dataloader import Collater
from torch_geometric.nn import NNConv, Set2Set, global_add_pool

from genray.data.graphs import TARGETS, GraphDataConfig, load_graph_data
from genray.families.base import Family, StepMetrics


class MPNNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The data's sizes: rgg graphs have x = [1, degree] and edge_attr = [distance].
    node_features: int = Field(2, ge=1, le=100_000)
    edge_features: int = Field(1, ge=1, le=100_000)
    # Names of the columns of y, in order (metric names); rgg computes these three.
    targets: list[str] = Field(default_factory=lambda: list(TARGETS), min_length=1, max_length=64)
    hidden: int = Field(32, ge=1, le=1024)  # the edge network emits hidden^2 numbers per edge
    edge_hidden: int = Field(32, ge=1, le=8192)
    steps: int = Field(3, ge=1, le=32)  # message-passing rounds (weights shared)
    set2set_steps: int = Field(3, ge=1, le=32)
    aggr: Literal["add", "mean", "max"] = "add"  # "add" can count (triangles need it)
    # set2set is an attention-weighted mean, blind to how many nodes it averages; append
    # log(1 + N) to the readout so size-dependent targets (path lengths) can use it.
    readout_size: bool = True
    # ... and the sum of the node states, so extensive targets (a triangle count grows with the
    # graph) need not be rebuilt from a mean times a size.
    readout_sum: bool = True
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)

    @field_validator("targets")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or not all(v.isidentifier() for v in value):
            raise ValueError(f"targets must be distinct identifier-like names, got {value}")
        return value


class MPNN(nn.Module):
    def __init__(self, cfg: MPNNConfig):
        super().__init__()
        h, t = cfg.hidden, len(cfg.targets)
        self.embed = nn.Sequential(nn.Linear(cfg.node_features, h), nn.ReLU())
        edge_net = nn.Sequential(nn.Linear(cfg.edge_features, cfg.edge_hidden), nn.ReLU(),
                                 nn.Linear(cfg.edge_hidden, h * h))  # e -> A(e), flattened (E, H*H)
        self.conv = NNConv(h, h, edge_net, aggr=cfg.aggr)
        self.gru = nn.GRU(h, h)
        self.readout = Set2Set(h, processing_steps=cfg.set2set_steps)  # (B, 2H)
        self.readout_size, self.readout_sum = cfg.readout_size, cfg.readout_sum
        width = 2 * h + h * int(cfg.readout_sum) + int(cfg.readout_size)
        self.head = nn.Sequential(nn.Linear(width, h), nn.ReLU(), nn.Linear(h, t))
        self.steps = cfg.steps
        self.register_buffer("target_mean", torch.zeros(t))
        self.register_buffer("target_std", torch.ones(t))

    def forward(self, x, edge_index, edge_attr, batch, num_graphs: int) -> torch.Tensor:
        """Nodes x (N, F), edge_index (2, E), edge_attr (E, D), batch (N,) graph of each node
        -> standardised predictions (num_graphs, T)."""
        out = self.embed(x)  # (N, H)
        state = out.unsqueeze(0)  # (1, N, H): the GRU's hidden state, one "sequence" per node
        for _ in range(self.steps):
            message = F.relu(self.conv(out, edge_index, edge_attr))  # (N, H)
            out, state = self.gru(message.unsqueeze(0), state)
            out = out.squeeze(0)
        pooled = [self.readout(out, batch, dim_size=num_graphs)]  # (B, 2H)
        if self.readout_sum:
            # GRU states lie in (-1, 1): / 10 keeps the sum O(1) on graphs of tens of nodes.
            pooled.append(global_add_pool(out, batch, num_graphs) / 10.0)  # (B, H)
        if self.readout_size:
            size = torch.bincount(batch, minlength=num_graphs).to(out.dtype)  # (B,) nodes per graph
            pooled.append(size.log1p().unsqueeze(1))  # (B, 1)
        return self.head(torch.cat(pooled, dim=1))

    def to_original(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.target_std + self.target_mean


def graph_index(batch) -> tuple[torch.Tensor, int]:
    """(node -> graph index (N,), number of graphs) for a Batch or a single Data."""
    index = getattr(batch, "batch", None)
    if index is None:
        return torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.x.device), 1
    return index, int(batch.num_graphs)


class MPNNFamily(Family):
    name = "mpnn"
    Config = MPNNConfig
    metric = "val_mae"
    mode = "min"
    DataConfig = GraphDataConfig
    collate_fn = Collater(None)  # a list of Data -> one Batch (disjoint union of the graphs)

    @classmethod
    def load_data(cls, data_cfg: GraphDataConfig) -> tuple[list[Data], list[Data]]:
        return load_graph_data(data_cfg)

    def build(self) -> dict[str, nn.Module]:
        return {"mpnn": MPNN(self.cfg)}

    def make_optimizers(self):
        params = self.nets["mpnn"].parameters()
        return {"mpnn": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def check(self, batch) -> None:
        """The batch fits this network (clear errors rather than a matmul shape error)."""
        sizes = {"node_features": batch.x.size(1), "edge_features": batch.edge_attr.size(1),
                 "targets": batch.y.size(1)}
        wanted = {"node_features": self.cfg.node_features, "edge_features": self.cfg.edge_features,
                  "targets": len(self.cfg.targets)}
        for key, got in sizes.items():
            if got != wanted[key]:
                raise ValueError(f"the data has {got} {key.replace('_', ' ')} but the model expects "
                                 f"{wanted[key]}; set model.{key} to match")

    def predict_standardised(self, net: nn.Module, batch) -> torch.Tensor:
        index, graphs = graph_index(batch)
        return net(batch.x, batch.edge_index, batch.edge_attr, index, graphs)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        self.check(batch)
        raw = self.nets["mpnn"]
        with torch.no_grad():  # the training set's statistics, the same in every graph
            raw.target_mean.copy_(batch.y_mean[0])
            raw.target_std.copy_(batch.y_std[0])
        target = (batch.y - raw.target_mean) / raw.target_std  # (B, T)
        pred = self.predict_standardised(self.train_nets["mpnn"], batch)
        loss = F.mse_loss(pred, target)
        self.optimizer_step(loss, "mpnn")
        return {"loss": loss.detach()}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        self.check(batch)
        net = self.nets["mpnn"]
        pred = net.to_original(self.predict_standardised(net, batch))  # (B, T), original units
        err = (pred - batch.y).abs()
        mean_err = (batch.y_mean - batch.y).abs()  # the mean predictor's error
        out = {"val_mae": (err / batch.y_std).mean(1).sum().item(),
               "val_loss": ((pred - batch.y) / batch.y_std).pow(2).mean(1).sum().item()}
        for i, name in enumerate(self.cfg.targets):
            out[f"val_mae_{name}"] = err[:, i].sum().item()
            out[f"val_mean_mae_{name}"] = mean_err[:, i].sum().item()
        return out

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def predict_batch(self, batch) -> torch.Tensor:
        """Graph-level predictions (num_graphs, T) in original units for a Batch (or one Data)."""
        net = self.nets["mpnn"]
        return net.to_original(self.predict_standardised(net, batch.to(self.device)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """One graph -> its predicted targets (T,) in original units."""
        return self.predict_batch(Data(x=x, edge_index=edge_index, edge_attr=edge_attr))[0]
