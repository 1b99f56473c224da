"""Feed ranking: two-tower retrieval and a DIN-style CTR model for the recommender system.

Trains on impression logs (user behaviour sequences) and exports the ranking model.
"""

import torch
import torch.nn.functional as F
from torch import nn


class TwoTower(nn.Module):
    """Candidate retrieval: user and item towers scored by a dot product."""

    def __init__(self, user_dim: int, item_dim: int, dim: int = 128, temperature: float = 0.05):
        super().__init__()
        self.user_mlp = nn.Sequential(nn.Linear(user_dim, 256), nn.ReLU(), nn.Linear(256, dim))
        self.item_mlp = nn.Sequential(nn.Linear(item_dim, 256), nn.ReLU(), nn.Linear(256, dim))
        self.temperature = temperature

    def forward(self, user_feats, item_feats, item_log_freq):
        u = F.normalize(self.user_mlp(user_feats), dim=-1)
        v = F.normalize(self.item_mlp(item_feats), dim=-1)
        logits = u @ v.T / self.temperature - item_log_freq  # sampling-bias correction
        return F.cross_entropy(logits, torch.arange(len(u)))


class DinCtr(nn.Module):
    """Ranking: click-through-rate prediction with attention over the behaviour sequence."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.att = nn.Sequential(nn.Linear(4 * dim, 80), nn.Sigmoid(), nn.Linear(80, 1))
        self.mlp = nn.Sequential(nn.Linear(3 * dim, 200), nn.ReLU(), nn.Linear(200, 1))

    def forward(self, target, history, user):
        q = target.unsqueeze(1).expand_as(history)
        w = self.att(torch.cat([q, history, q - history, q * history], dim=-1))
        interest = (w * history).sum(dim=1)
        return torch.sigmoid(self.mlp(torch.cat([target, interest, user], dim=-1)))


def train_step(model, batch, opt):
    """One step of CTR training with logloss on clicked / not clicked impressions."""
    p = model(batch["item"], batch["history"], batch["user"]).squeeze(-1)
    loss = F.binary_cross_entropy(p, batch["clicked"].float())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()
