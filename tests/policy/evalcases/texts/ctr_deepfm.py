"""CTR prediction for the feed recommender: DeepFM over sparse user and item features."""

import torch
from torch import nn


class DeepFM(nn.Module):
    """Factorisation-machine part for pairwise feature interactions plus a deep part."""

    def __init__(self, field_dims: list[int], dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(sum(field_dims), dim)
        self.linear = nn.Embedding(sum(field_dims), 1)
        self.mlp = nn.Sequential(nn.Linear(len(field_dims) * dim, 400), nn.ReLU(), nn.Linear(400, 1))

    def forward(self, x):
        e = self.embed(x)
        fm = 0.5 * (e.sum(1) ** 2 - (e**2).sum(1)).sum(1, keepdim=True)
        return torch.sigmoid(self.linear(x).sum(1) + fm + self.mlp(e.flatten(1)))


def evaluate_auc(model, loader):
    """Offline AUC on held-out impressions: the ranking model's gate before an A/B test."""
    from sklearn.metrics import roc_auc_score

    ys, ps = [], []
    with torch.no_grad():
        for x, y in loader:
            ps.extend(model(x).squeeze(1).tolist())
            ys.extend(y.tolist())
    return roc_auc_score(ys, ps)
