"""Plain, materialized PyTorch references of the four losses and of the two log-sum-exp primitives.

Each loss builds the full N x N logits in the dtype of its inputs, exactly as the formulas of ``ecgfast.losses``
read: slow and memory-hungry by design, for tests, benchmarks and readers. The primitive references compute in
float64, the yardstick for both backends (``ecgfast.losses.chunked`` and the Triton kernels).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from . import _numerics


def clocs_loss(z: torch.Tensor, patient_id: torch.Tensor, *, temperature=0.1, normalize: bool = True) -> torch.Tensor:
    """CLOCS over every view pair a < b of z (N, V, d); see ``ecgfast.losses.clocs_loss``."""
    if normalize:
        z = _numerics.normalize(z)
    n, v, _ = z.shape
    same = patient_id[:, None] == patient_id[None, :]
    idx = torch.arange(n, device=z.device)
    upper = same & (idx[:, None] < idx[None, :])
    lower = same & (idx[:, None] > idx[None, :])
    has_pairs = bool(upper.any())
    total = 0.0
    for a, b in itertools.combinations(range(v), 2):
        s = z[:, a] @ z[:, b].T / temperature
        r = torch.logsumexp(s, dim=1)
        c = torch.logsumexp(s, dim=0)
        diag = s.diagonal()
        pair = (r - diag).mean() + (c - diag).mean()
        if has_pairs:
            pair = pair + (r[:, None] - s)[upper].mean() + (c[None, :] - s)[lower].mean()
        total = total + pair
    n_terms = 4 if has_pairs else 2
    return total / (n_terms * (v * (v - 1) // 2))


def supcon_loss(z: torch.Tensor, patient_id: torch.Tensor, *, temperature=0.1, normalize: bool = True) -> torch.Tensor:
    """SupCon L_out over the N x V views of z (N, V, d); see ``ecgfast.losses.supcon_loss``."""
    if normalize:
        z = _numerics.normalize(z)
    n, v, d = z.shape
    x = z.reshape(n * v, d)
    pid = patient_id.repeat_interleave(v)
    eye = torch.eye(n * v, dtype=torch.bool, device=z.device)
    # The most negative finite value rather than -inf keeps a lone anchor (N x V = 1) free of NaN in backward.
    s = (x @ x.T / temperature).masked_fill(eye, torch.finfo(x.dtype).min)
    log_prob = s - torch.logsumexp(s, dim=1, keepdim=True)
    pos = (pid[:, None] == pid[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0).sum(dim=1) / n_pos.clamp(min=1)
    return -mean_log_prob_pos.mean()


def ntxent_loss(z: torch.Tensor, *, temperature=0.1, normalize: bool = True) -> torch.Tensor:
    """SimCLR NT-Xent over the 2N x 2N logits of z (N, 2, d), self excluded; see ``ecgfast.losses.ntxent_loss``."""
    if normalize:
        z = _numerics.normalize(z)
    n = z.shape[0]
    x = torch.cat([z[:, 0], z[:, 1]])
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    s = (x @ x.T / temperature).masked_fill(eye, float("-inf"))
    idx = torch.arange(n, device=z.device)
    return F.cross_entropy(s, torch.cat([idx + n, idx]))


def clip_loss(a: torch.Tensor, b: torch.Tensor, *, logit_scale, normalize: bool = True) -> torch.Tensor:
    """Symmetric two-tower cross-entropy of a, b (N, d); see ``ecgfast.losses.clip_loss``."""
    if normalize:
        a, b = _numerics.normalize(a), _numerics.normalize(b)
    logits = logit_scale * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def cross_lse(z: torch.Tensor, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 reference of the cross-view primitive: (row, col) log-sum-exps, each (P, N), pairs a < b in order."""
    z = z.double()
    rows, cols = [], []
    for a, b in itertools.combinations(range(z.shape[1]), 2):
        s = scale * z[:, a] @ z[:, b].T
        rows.append(torch.logsumexp(s, dim=1))
        cols.append(torch.logsumexp(s, dim=0))
    return torch.stack(rows), torch.stack(cols)


def self_lse(x: torch.Tensor, scale) -> torch.Tensor:
    """Float64 reference of the self-similarity primitive: logsumexp over j != i of scale <x_i, x_j>, shape (M,)."""
    x = x.double()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.logsumexp((scale * x @ x.T).masked_fill(eye, float("-inf")), dim=1)
