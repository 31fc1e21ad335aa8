"""TemporalNet encoders: the per-lead 1-D backbone, the projection head, the single- and dual-stream models, and
reading checkpoints: ecgfast's own and the two files Dade et al. released.

Shapes follow DESIGN.md: signals (batch, leads, time), input views (batch, copies, leads, time), embeddings
(batch, views, d) with the view axis copy-major (v = c * S + s for copy c and stream or lead s).

Every model here has the same interface for the rest of ecgfast:

- ``embed(x)``: input views (B, C, L, T) -> embeddings (B, V, 128) for the contrastive loss, V = ``n_views(C)``;
- ``features(x)``: (B, L, T) -> (B, n_features) for downstream tasks (512 at width 1.0);
- ``classifier``: a Linear(n_features -> 1) head and ``forward(x)`` = ``classifier(features(x))``, (B, 1) logits.

Checkpoints: ``load_checkpoint(path)`` reads ecgfast's ``pretrain.pt`` and both files released by Dade et al.
(github.com/Deekshith-Dade/ecg-contrastive) strictly, into a ``Checkpoint`` (which model, its settings, its weights);
``load_pretrained(path)`` gives the ready model; ``save_authors_checkpoint`` writes the authors' layout back.

Channels-last memory format does not apply: it is defined for 4-D (and 5-D) tensors only, and a 1-D convolution's
(N, C, T) layout is already what oneDNN and cuDNN want.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ecgfast.leads import LEADS8, lead_index

__all__ = [
    "TemporalNet",
    "ProjectionHead",
    "SingleStreamTemporalNet",
    "DualStreamTemporalNet",
    "DEFAULT_GROUPS",
    "MODELS",
    "AUTHORS_SETTINGS",
    "Checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "save_authors_checkpoint",
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

# ------------------------------------------------------------------------------------------------------ checkpoints

MODELS: dict[str, type[_Encoder]] = {"single": SingleStreamTemporalNet, "dual": DualStreamTemporalNet}

# What the released weights of Dade et al. (github.com/Deekshith-Dade/ecg-contrastive, checkpoints/) were trained
# with: their network at width 1.0 with dropout 0.5, on 5 s of leads I, II, V1-V6 at 500 Hz ((16, 8, 2500) in
# their example). Keys are train.py's settings.
AUTHORS_SETTINGS: dict[str, float] = {"width": 1.0, "dropout": 0.5, "fs": 500.0, "window_s": 5.0}

# ecgfast's name of a TemporalNet tensor -> the authors' (their ECG_TemporalNet1D), rewritten in this order. The
# layers, their order, biases and BatchNorm placement are the same; only the names differ.
_AUTHORS_NAMES = (
    (r"^stem\.", "firstLayer."),
    (r"^branches\.0\.", "residualBlocks_time1."),  # the kernel-3 branch, first in the concatenation
    (r"^branches\.1\.", "residualBlocks_time2."),  # the kernel-7 branch
    (r"\.body\.0\.", ".conv1."),
    (r"\.body\.1\.", ".batchNorm1."),
    (r"\.body\.3\.", ".conv2."),
    (r"\.body\.4\.", ".batchNorm2."),
    (r"\.skip\.", ".resampleInput."),
    (r"^head\.", "integrationBlock."),
)
# May be absent from a file: the classifier (a checkpoint's is never trained; the authors' files have none) and
# BatchNorm's batch counters (PyTorch < 0.4.1 saved none; they take no part in a forward with a set momentum).
_OPTIONAL = re.compile(r"^classifier\.|(^|\.)num_batches_tracked$")
_AUTHORS_GROUP_KEYS = ("model_g1", "model_g2")  # the streams of leads I, II, V5, V6 and of V1-V4


def _authors_networks(model: _Encoder) -> list[dict[str, str]]:
    """For each network of the authors' layout (one, or model_g1 and model_g2): {their tensor name: ecgfast's}."""
    if isinstance(model, SingleStreamTemporalNet):
        prefixes = [("backbone.", "projection.")]
    else:
        prefixes = [(f"streams.{s}.", f"projections.{s}.") for s in range(len(model.streams))]
    networks = []
    for net, proj in prefixes:
        names = {}
        for key in model.state_dict():
            if key.startswith(net):
                theirs = key[len(net):]
                for pattern, repl in _AUTHORS_NAMES:
                    theirs = re.sub(pattern, repl, theirs)
                names[theirs] = key
            elif key.startswith(proj):  # their pretraining "finalLayer" is the projection head
                names["finalLayer." + key[len(proj):]] = key
        networks.append(names)
    return networks


def _listed(keys: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(keys[:most])
    return f"[{shown}{f', ... {len(keys) - most} more' if len(keys) > most else ''}]"


def _check_fit(given: Mapping, expected: Mapping[str, torch.Size], where: str) -> None:
    """Every tensor of ``given`` must be one of ``expected`` with its shape, and every non-optional one present."""
    missing = [k for k in expected if k not in given and not _OPTIONAL.search(k)]
    unexpected = [k for k in given if k not in expected]
    not_tensors = [k for k in given if k in expected and not isinstance(given[k], torch.Tensor)]
    shapes = [f"{k} {tuple(given[k].shape)} instead of {tuple(expected[k])}" for k in given
              if k in expected and k not in not_tensors and given[k].shape != expected[k]]
    problems = [f"{what} {_listed(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                            ("not tensors", not_tensors), ("wrong shapes", shapes))
                if keys]
    if problems:
        raise ValueError(f"{where} does not fit: " + "; ".join(problems))


def _meta_model(kind: str, width: float, dropout: float) -> _Encoder:
    with torch.device("meta"):  # names and shapes only, at no cost
        return MODELS[kind](width, dropout)


@dataclass(frozen=True)
class Checkpoint:
    """An encoder checkpoint read by ``load_checkpoint``: which model, its settings and its weights.

    Attributes:
        kind: ``"single"`` or ``"dual"`` (train.py's ``--model``), the key of ``MODELS``.
        width, dropout: the model's constructor arguments.
        state_dict: the weights under ecgfast's names, checked name by name and shape by shape against the model;
            ``classifier.*`` may be absent (a fresh one is used).
        settings: the settings the weights were trained with: train.py's saved config for its own checkpoints,
            ``{"model": kind, **AUTHORS_SETTINGS}`` for the authors' files.
        source: ``"ecgfast"``, ``"authors-single"`` (temporalnet.pth.tar) or ``"authors-groups"``
            (lead_groupings_temporalnet.pth.tar).
        path: the file it came from.
    """

    kind: str
    width: float
    dropout: float
    state_dict: dict[str, torch.Tensor]
    settings: dict
    source: str
    path: str

    def build(self) -> _Encoder:
        """The model with these weights on the CPU, in eval mode."""
        model = MODELS[self.kind](self.width, self.dropout)
        model.load_state_dict(self.state_dict, strict=False)  # its fit was checked when the file was read
        return model.eval()


def _read(path: Path) -> object:
    if not path.is_file():
        raise ValueError(f"no checkpoint file at {path}")
    try:
        # weights_only: a checkpoint from the internet must not run code when it is read
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} is not a checkpoint that torch.load(weights_only=True) reads ({reason}); ecgfast reads only "
            f"tensors and plain values from a checkpoint, since unpickling other objects can run code. If you trust "
            f"the file, re-save what it holds as plain values, e.g. torch.save({{'state_dict': "
            f"torch.load(path, weights_only=False)['state_dict']}}, new_path)") from e


def _authors_checkpoint(state: object, path: Path) -> Checkpoint:
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: state_dict is a {type(state).__name__}, not a mapping of tensors")
    if any(k in state for k in _AUTHORS_GROUP_KEYS):
        kind, source = "dual", "authors-groups"
        missing = [k for k in _AUTHORS_GROUP_KEYS if k not in state]
        unexpected = [str(k) for k in state if k not in _AUTHORS_GROUP_KEYS]
        if missing or unexpected:
            raise ValueError(f"{path}: the lead-groups format's state_dict holds exactly 'model_g1' (leads I, II, "
                             f"V5, V6) and 'model_g2' (V1-V4): missing {missing}, unexpected {unexpected}")
        parts = [(state[k], f"{path}: state_dict['{k}']") for k in _AUTHORS_GROUP_KEYS]
    else:
        kind, source = "single", "authors-single"
        parts = [(state, f"{path}: state_dict")]
    model = _meta_model(kind, AUTHORS_SETTINGS["width"], AUTHORS_SETTINGS["dropout"])
    own = model.state_dict()
    weights = {}
    for (given, where), names in zip(parts, _authors_networks(model)):
        if not isinstance(given, Mapping):
            raise ValueError(f"{where} is a {type(given).__name__}, not a mapping of tensors")
        # Saved from torch.nn.DataParallel, every name starts with "module." (their temporalnet.pth.tar does)
        if given and all(isinstance(k, str) and k.startswith("module.") for k in given):
            given = {k[len("module."):]: v for k, v in given.items()}
        _check_fit(given, {theirs: own[ours].shape for theirs, ours in names.items()},
                   f"{where} (the authors' ECG_TemporalNet1D at width 1.0, with its projection head)")
        for theirs, ours in names.items():
            weights[ours] = given[theirs] if theirs in given else torch.tensor(0)  # only a batch counter is absent
    return Checkpoint(kind, AUTHORS_SETTINGS["width"], AUTHORS_SETTINGS["dropout"], weights,
                      {"model": kind, **AUTHORS_SETTINGS}, source, str(path))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read an encoder checkpoint, check it against its architecture and say what it holds.

    Three layouts are recognised, by their contents:

    - ecgfast's own (``train.py pretrain``'s ``pretrain.pt``): ``{"model": state_dict, "config": settings}``, the
      settings naming the model (``"model"``: ``"single"`` or ``"dual"``), ``"width"`` and ``"dropout"``;
    - Dade et al.'s ``checkpoints/temporalnet.pth.tar``: ``{"state_dict": {"module.<name>": tensor}}``, one
      ECG_TemporalNet1D with its pretraining projection head (``finalLayer``), read as a width-1.0
      ``SingleStreamTemporalNet``;
    - Dade et al.'s ``checkpoints/lead_groupings_temporalnet.pth.tar``: ``{"state_dict": {"model_g1": ...,
      "model_g2": ...}}``, one network for leads I, II, V5, V6 and one for V1-V4, read as a width-1.0
      ``DualStreamTemporalNet``.

    Reading is strict: every tensor of the file is used, none but the classifier may be missing, every shape must
    match; anything else is a ValueError naming the file and the offending names and shapes. Other top-level
    entries (an optimizer's state, an epoch count) are ignored. Files are read with ``weights_only=True``.
    """
    path = Path(path)
    obj = _read(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return _authors_checkpoint(obj["state_dict"], path)
    if not (isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and isinstance(obj.get("config"),
                                                                                            Mapping)):
        found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} is not an encoder checkpoint: expected ecgfast's {{'model', 'config'}} (from "
                         f"train.py pretrain) or the authors' {{'state_dict'}}, found {found}")
    settings = dict(obj["config"])
    absent = [k for k in ("model", "width", "dropout") if k not in settings]
    if absent:
        raise ValueError(f"{path}: its config lacks {absent}, so the model it was trained as is unknown")
    if settings["model"] not in MODELS:
        raise ValueError(f"{path}: model {settings['model']!r} is none of ecgfast's {sorted(MODELS)}")
    ckpt = Checkpoint(settings["model"], float(settings["width"]), float(settings["dropout"]), dict(obj["model"]),
                      settings, "ecgfast", str(path))
    expected = {k: v.shape for k, v in _meta_model(ckpt.kind, ckpt.width, ckpt.dropout).state_dict().items()}
    _check_fit(ckpt.state_dict, expected, f"{path}: model (a {ckpt.kind}-stream TemporalNet at width {ckpt.width:g})")
    return ckpt


def load_pretrained(path: str | Path) -> _Encoder:
    """The pretrained encoder of a checkpoint file, ready to use (CPU, eval mode): ``load_checkpoint(path).build()``.

    Reads Dade et al.'s released weights (``temporalnet.pth.tar`` -> ``SingleStreamTemporalNet``,
    ``lead_groupings_temporalnet.pth.tar`` -> ``DualStreamTemporalNet``, both at width 1.0) and ecgfast's own
    ``pretrain.pt``. For x (B, 8, T) in I, II, V1-V6 order, ``features(x)`` is their integration block's output
    averaged over the leads (and, for the lead groups, over the two streams) and ``embed`` applies their projection
    head. The classifier is freshly initialized. See ``load_checkpoint`` for the strictness.
    """
    return load_checkpoint(path).build()


def save_authors_checkpoint(model: _Encoder, path: str | Path) -> None:
    """Write a width-1.0 encoder in the layout of Dade et al.'s released files, which their code loads.

    A ``SingleStreamTemporalNet`` becomes ``{"state_dict": {"module.<name>": ...}}`` (temporalnet.pth.tar), a
    ``DualStreamTemporalNet`` with the default lead groups ``{"state_dict": {"model_g1": ..., "model_g2": ...}}``
    (lead_groupings_temporalnet.pth.tar); the projection head is their ``finalLayer``, the classifier is left out.
    """
    kind = next((k for k, cls in MODELS.items() if type(model) is cls), None)
    if kind is None:
        raise ValueError(f"model must be one of {[cls.__name__ for cls in MODELS.values()]}, "
                         f"got {type(model).__name__}")
    if kind == "dual" and model.groups != DEFAULT_GROUPS:
        raise ValueError(f"the authors' lead-groups layout has the groups {DEFAULT_GROUPS}, the model {model.groups}")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    reference = _meta_model(kind, AUTHORS_SETTINGS["width"], AUTHORS_SETTINGS["dropout"])
    _check_fit(own, {k: v.shape for k, v in reference.state_dict().items()},
               f"{type(model).__name__} with {model.n_features} features (the authors' layout holds width 1.0)")
    parts = [{theirs: own[ours].detach().cpu().clone() for theirs, ours in names.items()}
             for names in _authors_networks(model)]
    state = {f"module.{k}": v for k, v in parts[0].items()} if kind == "single" else dict(zip(_AUTHORS_GROUP_KEYS,
                                                                                             parts))
    torch.save({"state_dict": state}, path)


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
