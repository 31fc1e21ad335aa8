"""The four losses, composed from the two log-sum-exp primitives.

The N x N work (the log-sum-exps) goes to a backend; the positive terms are linear in the logits, so they and
their gradients come from per-sample and per-patient sums of the embeddings in O(N V^2 d), here, once for both
backends. Everything runs in fp32 on the embeddings as the primitives see them (normalized in fp32, cast back to
the input dtype).

No call here waits for the GPU (the patient grouping sorts instead of ``torch.unique``, whose output size the host
would have to read), so a training step can be captured in a CUDA graph; only ``gather=True`` reads each rank's
batch size (``_gather.all_gather``).
"""

from __future__ import annotations

import torch

from ._dispatch import primitive
from ._gather import all_gather
from . import _numerics


def _check_embeddings(x: torch.Tensor, name: str, dim: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != dim:
        shape = "(N, V, d)" if dim == 3 else "(N, d)"
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape {shape}, got {got}")
    if x.dtype not in _numerics.DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.shape[0] < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must hold at least one sample with at least one feature, got {tuple(x.shape)}")


def _check_patient_id(patient_id: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    if not isinstance(patient_id, torch.Tensor) or patient_id.dim() != 1 or patient_id.shape[0] != z.shape[0]:
        got = tuple(patient_id.shape) if isinstance(patient_id, torch.Tensor) else type(patient_id).__name__
        raise ValueError(f"patient_id must be a 1-d tensor of length N = {z.shape[0]} (z's first axis), got {got}")
    if patient_id.is_floating_point() or patient_id.is_complex() or patient_id.dtype == torch.bool:
        raise ValueError(f"patient_id must hold integers, got {patient_id.dtype}")
    return patient_id.to(z.device)


def _scale(value, name: str, *, invert: bool):
    """The logit multiplier from ``temperature`` (invert) or ``logit_scale``: a positive float or a 1-element tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"{name} must be a float or a one-element float tensor, got {value.dtype} {tuple(value.shape)}"
            )
        value = value.reshape(())
        return 1.0 / value if invert else value
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return 1.0 / value if invert else value


def _patients(patient_id: torch.Tensor):
    """(inverse, counts, later): each sample's patient as an index in 0..N-1, the number of samples of each index
    (zero for unused ones), and for each sample i the number of j > i of the same patient. Fixed sizes throughout,
    so nothing waits for the device."""
    n = patient_id.shape[0]
    ids, order = torch.sort(patient_id, stable=True)  # stable: a patient's samples stay in index order
    first = torch.ones(n, dtype=torch.bool, device=ids.device)
    first[1:] = ids[1:] != ids[:-1]
    group = torch.cumsum(first, 0) - 1
    position = torch.arange(n, device=ids.device)
    rank = position - torch.cummax(torch.where(first, position, 0), 0).values  # place within the patient
    counts = torch.zeros_like(group).index_add_(0, group, torch.ones_like(group))
    inverse = torch.empty_like(group)
    inverse[order] = group
    later = torch.empty_like(group)
    later[order] = counts[group] - 1 - rank
    return inverse, counts, later


def _prepare(z, patient_id, *, gather: bool, normalize: bool):
    if gather:
        z = all_gather(z)
        patient_id = all_gather(patient_id) if patient_id is not None else None
    return (_numerics.normalize(z) if normalize else z), patient_id


def clocs_loss(z, patient_id, *, temperature=0.1, normalize=True, backend="auto", gather=False, deterministic=False):
    """CLOCS interlead/intersegment loss (Kiyasseh et al. 2021) over every pair of views.

    For each view pair a < b, S_ij = <z_i^a, z_j^b> / tau, r_i = logsumexp_j S_ij, c_j = logsumexp_i S_ij, and
    L_pair = mean_i (r_i - S_ii) + mean_j (c_j - S_jj) + [mean over i < j of the same patient of (r_i - S_ij)
    + mean over i > j of the same patient of (c_j - S_ij), when some patient has two samples]. The loss is the sum
    of L_pair over the pairs divided by n_terms (4 with such patients, else 2) times the number of pairs.

    Args:
        z: (N, V, d) embeddings, V >= 2 views (copy-major), fp32, fp16 or bf16.
        patient_id: (N,) integer patient of each sample; samples of one patient are positives of each other.
        temperature: tau, a positive float or a one-element tensor (gets its gradient when it requires one).
        normalize: L2-normalize z along d first (in fp32); a zero row stays zero and passes its gradient through
            unchanged (``ecgfast.losses._numerics.normalize``).
        backend: "auto" (Triton on CUDA GPUs from sm_80, else "torch"), "triton" or "torch" (the chunked path).
        gather: under torch.distributed, all-gather z and patient_id with gradient so that negatives span the
            global batch; the loss equals the single-process loss on the concatenated batch on every rank, and
            DDP's averaged gradients equal that single process's gradients.
        deterministic: an atomic-free backward in the Triton kernels (the torch path always is).

    Returns:
        The scalar loss (fp32).
    """
    _check_embeddings(z, "z", 3)
    if z.shape[1] < 2:
        raise ValueError(f"z must have at least 2 views for clocs_loss, got shape {tuple(z.shape)}")
    patient_id = _check_patient_id(patient_id, z)
    scale = _scale(temperature, "temperature", invert=True)
    cross = primitive("cross_lse", backend, z)
    z, patient_id = _prepare(z, patient_id, gather=gather, normalize=normalize)
    n, v, _ = z.shape
    row, col = cross(z, scale, deterministic=deterministic)
    a, b = torch.triu_indices(v, v, 1, device=z.device)
    zf = z.float()
    same_sample = torch.bmm(zf, zf.transpose(1, 2))[:, a, b].T  # (P, N): <z_i^a, z_i^b>
    total = (row.sum() + col.sum() - 2 * scale * same_sample.sum()) / n
    inverse, counts, later = _patients(patient_id)
    n_pairs = (counts * (counts - 1)).sum() // 2
    # sum over i != j of one patient of <z_i^a, z_j^b> = sum_g <A_g, B_g> - sum_i <z_i^a, z_i^b>, A_g and B_g the
    # patient's sums of views a and b. The rows and columns enter once per later same-patient sample. Computed
    # whether or not some patient has two samples (a tensor condition, not a host branch), then kept or dropped.
    per_patient = torch.zeros_like(zf).index_add_(0, inverse, zf)
    cross_patient = torch.bmm(per_patient, per_patient.transpose(1, 2))[:, a, b].sum()
    off_diagonal = cross_patient - same_sample.sum()
    patient_terms = (((row + col) @ later.to(row.dtype)).sum() - scale * off_diagonal) / n_pairs.clamp(min=1)
    total = total + torch.where(n_pairs > 0, patient_terms, 0.0)
    n_terms = torch.where(n_pairs > 0, 4.0, 2.0)
    return total / (n_terms * a.shape[0])


def supcon_loss(z, patient_id, *, temperature=0.1, normalize=True, backend="auto", gather=False, deterministic=False):
    """Supervised contrastive loss, L_out form (Khosla et al. 2020), over the N x V views of z flattened.

    The positives of a view are all other views with the same patient id; the negatives are every other view.
    An anchor without positives contributes zero but counts in the mean. No base-temperature factor.

    Args:
        z: (N, V, d) embeddings, V >= 1, fp32, fp16 or bf16.
        patient_id: (N,) integer patient of each sample.
        temperature, normalize, backend, gather, deterministic: as in ``clocs_loss``.

    Returns:
        The scalar loss (fp32).
    """
    _check_embeddings(z, "z", 3)
    patient_id = _check_patient_id(patient_id, z)
    scale = _scale(temperature, "temperature", invert=True)
    self_ = primitive("self_lse", backend, z)
    z, patient_id = _prepare(z, patient_id, gather=gather, normalize=normalize)
    n, v, d = z.shape
    x = z.reshape(n * v, d)
    lse = self_(x, scale, deterministic=deterministic)
    inverse, counts, _ = _patients(patient_id)
    inverse = inverse.repeat_interleave(v)
    xf = x.float()
    per_patient = xf.new_zeros((n, d)).index_add_(0, inverse, xf)
    n_pos = counts[inverse] * v - 1
    positive_mean = scale * ((per_patient[inverse] - xf) * xf).sum(1) / n_pos.clamp(min=1)
    per_anchor = torch.where(n_pos > 0, lse - positive_mean, 0.0)
    return per_anchor.mean()


def ntxent_loss(z, *, temperature=0.1, normalize=True, backend="auto", gather=False, deterministic=False):
    """SimCLR NT-Xent over the 2N x 2N logits of both views, self excluded; the positive is the other view.

    Args:
        z: (N, 2, d) embeddings of two views, fp32, fp16 or bf16.
        temperature, normalize, backend, gather, deterministic: as in ``clocs_loss``.

    Returns:
        The scalar loss (fp32).
    """
    _check_embeddings(z, "z", 3)
    if z.shape[1] != 2:
        raise ValueError(f"z must have exactly 2 views for ntxent_loss, got shape {tuple(z.shape)}")
    scale = _scale(temperature, "temperature", invert=True)
    self_ = primitive("self_lse", backend, z)
    z, _ = _prepare(z, None, gather=gather, normalize=normalize)
    n, _, d = z.shape
    lse = self_(z.transpose(0, 1).reshape(2 * n, d), scale, deterministic=deterministic)
    zf = z.float()
    positive = scale * (zf[:, 0] * zf[:, 1]).sum()
    return (lse.sum() - 2 * positive) / (2 * n)


def clip_loss(a, b, *, logit_scale, normalize=True, backend="auto", gather=False, deterministic=False):
    """Symmetric two-tower cross-entropy (CLIP): logits = logit_scale a b^T, targets on the diagonal.

    Args:
        a, b: (N, d) embeddings of the two towers, same shape and dtype (fp32, fp16 or bf16).
        logit_scale: the multiplier itself (already exponentiated, as open_clip passes it), a positive float or a
            one-element tensor (gets its gradient when it requires one).
        normalize, backend, gather, deterministic: as in ``clocs_loss``.

    Returns:
        The scalar loss (fp32): the mean of the row and the column cross-entropies.
    """
    _check_embeddings(a, "a", 2)
    _check_embeddings(b, "b", 2)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(
            f"a and b must share shape and dtype, got {tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}"
        )
    scale = _scale(logit_scale, "logit_scale", invert=False)
    cross = primitive("cross_lse", backend, a)
    z, _ = _prepare(torch.stack([a, b], dim=1), None, gather=gather, normalize=normalize)
    row, col = cross(z, scale, deterministic=deterministic)
    zf = z.float()
    positive = scale * (zf[:, 0] * zf[:, 1]).sum(1)
    return (row.mean() + col.mean()) / 2 - positive.mean()
