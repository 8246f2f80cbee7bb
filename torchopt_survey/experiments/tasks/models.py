"""Models of the two survey experiments."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,  # the paper's setting: the whole MLP is then a linear classifier
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


NORMS = ("none", "batch", "layer")


def build_mlp(
    in_features: int,
    hidden: int | list[int],
    num_classes: int,
    activation: str,
    norm: str = "none",
    dropout: float = 0.0,
) -> nn.Sequential:
    """MLP with hidden blocks Linear -> [BatchNorm1d | LayerNorm] -> activation -> [Dropout].

    With one width, no norm and no dropout this is the survey's perceptron
    (:func:`make_mlp`: Linear, activation, Linear)."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation: unknown activation {activation!r}; "
            f"valid choices: {', '.join(ACTIVATIONS)}"
        )
    if norm not in NORMS:
        raise ValueError(f"norm: unknown value {norm!r}; valid choices: {', '.join(NORMS)}")
    widths = hidden if isinstance(hidden, list) else [hidden]
    layers: list[nn.Module] = []
    prev = in_features
    for w in widths:
        layers.append(nn.Linear(prev, w))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(w))
        elif norm == "layer":
            layers.append(nn.LayerNorm(w))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


def make_mlp(
    in_features: int = 784, hidden: int = 500, num_classes: int = 10, activation: str = "linear"
) -> nn.Sequential:
    """The survey's 784-500-10 perceptron; ``activation`` is the hidden non-linearity."""
    return build_mlp(in_features, hidden, num_classes, activation)


class PaperLinkModel(nn.Module):
    """The link-prediction survey's network: embeddings of both end nodes, two 1-D convolutions,
    global max pooling, a fully connected layer and a sigmoid (applied in the loss as logits)."""

    def __init__(
        self, num_nodes: int, embedding_dim: int = 16, channels: int = 16, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)  # after each convolution's ReLU (0: identity)
        self.embedding = nn.Embedding(num_nodes, embedding_dim)
        # The two end-node embeddings are the two input channels of a length-``embedding_dim``
        # sequence, so the convolution mixes the pair at each embedding position.
        self.conv1 = nn.Conv1d(2, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.fc = nn.Linear(channels, 1)

    def forward(
        self, x: torch.Tensor | None, edge_index: torch.Tensor, pairs: torch.Tensor
    ) -> torch.Tensor:
        """Logits for node pairs ``pairs`` (2, B); ``x``/``edge_index`` are unused (no message
        passing in this architecture) but keep one call signature for all link models."""
        h = torch.stack([self.embedding(pairs[0]), self.embedding(pairs[1])], dim=1)
        h = self.dropout(torch.relu(self.conv1(h)))
        h = self.dropout(torch.relu(self.conv2(h)))
        h = torch.amax(h, dim=2)  # global max pooling over embedding positions
        return self.fc(h).squeeze(-1)


class GCNLinkModel(nn.Module):
    """Two-layer GCN encoder with a dot-product or MLP edge decoder."""

    def __init__(
        self,
        in_channels: int,
        hidden: int = 32,
        out_channels: int = 16,
        decoder: str = "dot",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)  # after the first convolution's ReLU (0: identity)
        from torch_geometric.nn import GCNConv

        if decoder not in ("dot", "mlp"):
            raise ValueError(f"decoder: unknown decoder {decoder!r}; valid choices: dot, mlp")
        self.conv1 = GCNConv(in_channels, hidden)
        self.conv2 = GCNConv(hidden, out_channels)
        self.decoder = decoder
        self.mlp = (
            nn.Sequential(nn.Linear(2 * out_channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            if decoder == "mlp"
            else None
        )

    def encode(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.dropout(torch.relu(self.conv1(x, edge_index))), edge_index)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, pairs: torch.Tensor
    ) -> torch.Tensor:
        z = self.encode(x, edge_index)
        zu, zv = z[pairs[0]], z[pairs[1]]
        if self.mlp is None:
            return (zu * zv).sum(-1)
        # Symmetric in (u, v): average the MLP over both orders.
        return 0.5 * (
            self.mlp(torch.cat([zu, zv], -1)).squeeze(-1)
            + self.mlp(torch.cat([zv, zu], -1)).squeeze(-1)
        )


LINK_MODELS = ("paper", "gcn")
