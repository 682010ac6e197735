"""Graph convolutional network (Kipf & Welling 2017) for semi-supervised node classification.

Each layer is H' = D^-1/2 (A + I) D^-1/2 H W (PyG's GCNConv): a node averages its own and its
neighbours' features, weighted by degree. Two layers see two hops. The loss is cross-entropy
on the training nodes only; every node's features take part in the propagation.

Why the dataset is a list of one graph: GCN propagation needs the whole graph, so there is no
natural minibatch of nodes. The Ray Train loop's DistributedSampler pads a one-item dataset
by repetition, so every rank gets the same graph and takes one full-batch step per epoch; DDP
averages gradients that differ only by the ranks' dropout masks, so N workers compute the
single-process full-batch update (with N dropout samples averaged). Validation sees the graph
once (on rank 0) and divides by len(val_set) = 1, so `val_acc` is the accuracy on the
validation nodes. (Minibatches of node indices over one shared graph would also be correct,
but each step would still propagate over the whole graph: the same cost for a noisier step.)
An epoch is one optimisation step; use train.epochs=200 train.checkpoint_every=50 or so.

The network's sizes must match the data: in_features = the node feature width (sbm: data.features,
karate: 34) and num_classes (sbm: data.blocks, karate: 4). A mismatch is reported by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch_geometric.data import Data
from torch_geometric.loader.dataloader import Collater
from torch_geometric.nn import GCNConv

from genray.data.graphs import NodeDataConfig, load_node_data
from genray.families.base import Family, StepMetrics


class GCNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    in_features: int = Field(16, ge=1, le=1_000_000)
    num_classes: int = Field(4, ge=2, le=100_000)
    hidden: int = Field(16, ge=1, le=8192)
    layers: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    # Kipf & Welling's Cora settings: Adam, lr 0.01, L2 5e-4.
    lr: float = Field(0.01, gt=0.0, le=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)


class GCN(nn.Module):
    def __init__(self, cfg: GCNConfig):
        super().__init__()
        sizes = [cfg.in_features] + [cfg.hidden] * (cfg.layers - 1) + [cfg.num_classes]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """x (N, in_features), edge_index (2, E) -> class logits (N, num_classes)."""
        for i, conv in enumerate(self.convs):
            x = F.dropout(x, self.dropout, self.training)
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x


def per_graph_mean(values: torch.Tensor, mask: torch.Tensor, batch) -> torch.Tensor:
    """Sum over graphs of the mean of `values` (N,) over each graph's masked nodes (a graph with
    no masked nodes adds 0): what the training loop's sum / len(val_set) needs."""
    index = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(mask, dtype=torch.long)
    graphs = int(getattr(batch, "num_graphs", 1))
    picked = values[mask].float()  # (M,) the masked nodes' values
    total = torch.zeros(graphs, device=values.device).index_add_(0, index[mask], picked)
    count = torch.zeros(graphs, device=values.device).index_add_(0, index[mask], torch.ones_like(picked))
    return (total / count.clamp_min(1)).sum()


class GCNFamily(Family):
    name = "gcn"
    Config = GCNConfig
    metric = "val_acc"
    mode = "max"
    DataConfig = NodeDataConfig
    collate_fn = Collater(None)  # a list of Data -> one Batch (disjoint union of the graphs)

    @classmethod
    def load_data(cls, data_cfg: NodeDataConfig) -> tuple[list[Data], list[Data]]:
        return load_node_data(data_cfg)

    def build(self) -> dict[str, nn.Module]:
        return {"gcn": GCN(self.cfg)}

    def make_optimizers(self):
        params = self.nets["gcn"].parameters()
        return {"gcn": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def check(self, graph) -> None:
        """The graph fits this network (clear errors rather than a matmul shape error)."""
        if graph.x.size(1) != self.cfg.in_features:
            raise ValueError(
                f"the graph has {graph.x.size(1)} node features but model.in_features={self.cfg.in_features}; "
                f"set model.in_features={graph.x.size(1)}"
            )
        # The labels are read on the host: a graph bound for a GPU is checked by to_device before
        # its copy, so a training step never waits for the device here.
        labels = graph.y
        if labels is not None and labels.device.type == "cpu" and labels.numel() and int(labels.max()) >= self.cfg.num_classes:
            raise ValueError(
                f"the graph has labels up to {int(labels.max())} but model.num_classes={self.cfg.num_classes}; "
                f"set model.num_classes={int(labels.max()) + 1}"
            )

    def to_device(self, batch):
        self.check(batch)
        return super().to_device(batch)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        self.check(batch)
        logits = self.train_nets["gcn"](batch.x, batch.edge_index)  # (N, C)
        mask = batch.train_mask
        loss = F.cross_entropy(logits[mask], batch.y[mask])
        self.optimizer_step(loss, "gcn")
        acc = (logits[mask].argmax(1) == batch.y[mask]).float().mean()
        return {"loss": loss.detach(), "acc": acc.detach()}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        self.check(batch)
        logits = self.nets["gcn"](batch.x, batch.edge_index)
        correct = logits.argmax(1) == batch.y
        nll = F.cross_entropy(logits, batch.y, reduction="none")
        return {
            "val_acc": per_graph_mean(correct, batch.val_mask, batch).item(),
            "val_loss": per_graph_mean(nll, batch.val_mask, batch).item(),
            "test_acc": per_graph_mean(correct, batch.test_mask, batch).item(),
            "train_acc": per_graph_mean(correct, batch.train_mask, batch).item(),
        }

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def predict(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Node class probabilities (N, num_classes) for a graph (or a disjoint union of graphs)."""
        net = self.nets["gcn"]
        return torch.softmax(net(x.to(self.device), edge_index.to(self.device)), dim=1)
