"""TemporalNet encoders: the per-lead 1-D backbone, the projection head and the single- and dual-stream models.

Shapes follow DESIGN.md: signals (batch, leads, time), input views (batch, copies, leads, time), embeddings
(batch, views, d) with the view axis copy-major (v = c * S + s for copy c and stream or lead s).

Every model here has the same interface for the rest of ecgfast:

- ``embed(x)``: input views (B, C, L, T) -> embeddings (B, V, 128) for the contrastive loss, V = ``n_views(C)``;
- ``features(x)``: (B, L, T) -> (B, n_features) for downstream tasks (512 at width 1.0);
- ``classifier``: a Linear(n_features -> 1) head and ``forward(x)`` = ``classifier(features(x))``, (B, 1) logits.

Channels-last memory format does not apply: it is defined for 4-D (and 5-D) tensors only, and a 1-D convolution's
(N, C, T) layout is already what oneDNN and cuDNN want.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ecgfast.leads import LEADS8, lead_index

__all__ = [
    "TemporalNet",
    "ProjectionHead",
    "SingleStreamTemporalNet",
    "DualStreamTemporalNet",
    "DEFAULT_GROUPS",
    "train_flops",
]

DEFAULT_GROUPS: tuple[tuple[str, ...], ...] = (("I", "II", "V5", "V6"), ("V1", "V2", "V3", "V4"))
_BLOCKS = ((32, 64), (64, 128), (128, 256), (256, 256))  # (in, out) channels of each branch's residual blocks


def _scaled(channels: int, width: float, floor: int) -> int:
    return max(floor, round(channels * width))


class _ResidualBlock(nn.Module):
    """conv ci->ci, BN, ReLU, conv ci->co, BN, dropout; plus the skip (1x1 conv + BN where ci != co); ReLU."""

    def __init__(self, ci: int, co: int, kernel: int, dropout: float):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv1d(ci, ci, kernel, padding=pad, bias=False),
            nn.BatchNorm1d(ci),
            nn.ReLU(inplace=True),
            nn.Conv1d(ci, co, kernel, padding=pad, bias=False),
            nn.BatchNorm1d(co),
            nn.Dropout(dropout),
        )
        self.skip = (
            nn.Identity() if ci == co else nn.Sequential(nn.Conv1d(ci, co, 1, bias=False), nn.BatchNorm1d(co))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class TemporalNet(nn.Module):
    """The per-lead 1-D encoder of Dade et al.: (B, L, T) -> (B, L, n_features), one network shared by all leads.

    Args:
        width: multiplies every channel count (32, 64, 128, 256 and the 512-channel head); 1.0 is the paper's
            network with 2,836,672 parameters and 512 features per lead; 1/16 is the CPU demo's.
        dropout: the dropout probability in every residual block and in the head.
        min_channels: the floor of every scaled channel count, so that a small width keeps a usable network.

    Each lead goes through the stem (Conv1d 1->32, kernel 7, BN, ReLU, MaxPool 4), two parallel branches of four
    residual blocks (kernel 3 in one, 7 in the other), their concatenation through Conv1d(512->512, kernel 3), BN,
    dropout and ReLU, then a global average pool over time.
    """

    def __init__(self, width: float = 1.0, dropout: float = 0.5, *, min_channels: int = 4):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        ch = lambda c: _scaled(c, width, min_channels)  # noqa: E731
        self.stem = nn.Sequential(
            nn.Conv1d(1, ch(32), 7, padding=3),
            nn.BatchNorm1d(ch(32)),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(4),
        )
        self.branches = nn.ModuleList(
            nn.Sequential(*(_ResidualBlock(ch(ci), ch(co), kernel, dropout) for ci, co in _BLOCKS))
            for kernel in (3, 7)
        )
        branch_out = 2 * ch(_BLOCKS[-1][1])
        self.n_features = ch(512)
        self.head = nn.Sequential(
            nn.Conv1d(branch_out, self.n_features, 3, padding=1),
            nn.BatchNorm1d(self.n_features),
            nn.Dropout(dropout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"TemporalNet expects (batch, leads, time), got shape {tuple(x.shape)}")
        b, n_leads, t = x.shape
        h = self.stem(x.reshape(b * n_leads, 1, t))
        h = torch.cat([branch(h) for branch in self.branches], dim=1)
        return self.head(h).mean(dim=-1).reshape(b, n_leads, self.n_features)


class ProjectionHead(nn.Sequential):
    """The pretraining projection Linear(n_features -> 256) -> Linear(256 -> 128), applied per lead.

    Only its input follows the backbone's width: the hidden 256 and the 128-d embedding stay fixed, so that every
    preset gives the loss the same d and a narrow backbone keeps the full rank of its features.
    """

    def __init__(self, in_features: int, hidden: int = 256, out_features: int = 128):
        super().__init__(nn.Linear(in_features, hidden), nn.Linear(hidden, out_features))
        self.out_features = out_features


class _Encoder(nn.Module):
    """What the single- and dual-stream models share: lead bookkeeping, the classifier head and ``forward``."""

    def __init__(self, lead_names: Sequence[str], n_features: int):
        super().__init__()
        self.lead_names = tuple(lead_names)
        self.n_features = n_features
        self.classifier = nn.Linear(n_features, 1)

    def _check(self, x: torch.Tensor, dims: int, what: str) -> None:
        if x.dim() != dims or x.shape[-2] != len(self.lead_names):
            raise ValueError(
                f"{type(self).__name__}.{what} expects {len(self.lead_names)} leads {self.lead_names} on axis -2 of "
                f"a {dims}-D tensor, got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1) of the downstream classifier for signals (B, L, T)."""
        return self.classifier(self.features(x))


class SingleStreamTemporalNet(_Encoder):
    """One TemporalNet over all leads; every lead of every copy is an embedding view (V = L x C).

    Args:
        width, dropout, min_channels: as for TemporalNet.
        lead_names: the input's leads, in order (default I, II, V1-V6).
    """

    def __init__(self, width: float = 1.0, dropout: float = 0.5, *, lead_names: Sequence[str] = LEADS8,
                 min_channels: int = 4):
        backbone = TemporalNet(width, dropout, min_channels=min_channels)
        super().__init__(lead_names, backbone.n_features)
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.n_features)

    def n_views(self, copies: int) -> int:
        return copies * len(self.lead_names)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input views (B, C, L, T) -> embeddings (B, C x L, 128), view c x L + l for copy c and lead l."""
        self._check(x, 4, "embed")
        b, c, n_leads, t = x.shape
        z = self.projection(self.backbone(x.reshape(b * c, n_leads, t)))
        return z.reshape(b, c * n_leads, -1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Signals (B, L, T) -> the lead-averaged features (B, n_features)."""
        self._check(x, 3, "features")
        return self.backbone(x).mean(dim=1)


class DualStreamTemporalNet(_Encoder):
    """Two independent TemporalNets, one per lead group; each copy gives one embedding per group (V = 2C).

    Args:
        width, dropout, min_channels: as for TemporalNet.
        groups: the lead names of each stream (default {I, II, V5, V6} and {V1-V4}); any number of groups works.
        lead_names: the input's leads, in order (default I, II, V1-V6).
    """

    def __init__(self, width: float = 1.0, dropout: float = 0.5, *,
                 groups: Sequence[Sequence[str]] = DEFAULT_GROUPS, lead_names: Sequence[str] = LEADS8,
                 min_channels: int = 4):
        streams = [TemporalNet(width, dropout, min_channels=min_channels) for _ in groups]
        if not streams:
            raise ValueError("groups must name at least one lead group")
        super().__init__(lead_names, streams[0].n_features)
        self.groups = tuple(tuple(g) for g in groups)
        for s, g in enumerate(self.groups):
            if not g:
                raise ValueError(f"every lead group needs at least one lead, got groups {self.groups}")
            self.register_buffer(f"group{s}_leads", torch.tensor(lead_index(self.lead_names, g)), persistent=False)
        self.streams = nn.ModuleList(streams)
        self.projections = nn.ModuleList(ProjectionHead(s.n_features) for s in streams)

    def n_views(self, copies: int) -> int:
        return copies * len(self.groups)

    def _stream_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        # (N, L, T) -> per stream (N, n_features), averaged over the stream's leads
        return [net(x.index_select(1, getattr(self, f"group{s}_leads"))).mean(dim=1)
                for s, net in enumerate(self.streams)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input views (B, C, L, T) -> embeddings (B, C x S, 128), view c x S + s for copy c and stream s."""
        self._check(x, 4, "embed")
        b, c, n_leads, t = x.shape
        # The projection is linear, so projecting the lead-averaged features equals averaging the leads'
        # projections, at 1/len(group) of the cost.
        z = [proj(f) for proj, f in zip(self.projections, self._stream_features(x.reshape(b * c, n_leads, t)))]
        return torch.stack(z, dim=1).reshape(b, c * len(self.groups), -1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Signals (B, L, T) -> the streams' lead-averaged features, averaged over streams: (B, n_features)."""
        self._check(x, 3, "features")
        return torch.stack(self._stream_features(x)).mean(dim=0)


def train_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward + backward ``model.embed`` on input views of ``input_shape`` (B, C, L, T).

    Counted by torch's FlopCounterMode on a copy of the model on the meta device, so it costs no compute and works
    for the paper's sizes on any machine. Convolutions and matmuls only, as the usual utilization figures count.
    """
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").train()
    x = torch.empty(*input_shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        meta.embed(x).sum().backward()
    return counter.get_total_flops()
