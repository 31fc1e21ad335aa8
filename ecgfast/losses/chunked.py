"""The chunked PyTorch backend of the two log-sum-exp primitives: works on any device, memory O(N x chunk).

Same signatures as the Triton kernels (``ecgfast.kernels.cross_lse`` / ``ecgfast.kernels.self_lse``) plus a
``chunk`` keyword. Logits are built one block of ``chunk`` rows at a time and never kept: forward saves only the
log-sum-exp vectors, backward recomputes each block. Every sum runs in a fixed order, so the path is deterministic
whatever ``deterministic`` says.

When every logit is bounded by ``|S| <= B`` with B small enough (``FIXED_SHIFT_LIMIT``; B comes from the row
norms, so normalized inputs with tau >= 0.025 qualify), exp(S) needs no shift at all: it lies in [exp(-B), exp(B)],
far inside fp32's range, so forward needs one exp per logit for both the row and the column sums, and backward one
exp per logit for both softmaxes. Beyond that bound the rows and columns take their own maxima (two exps per logit).
"""

from __future__ import annotations

import itertools

import torch

from ._numerics import FIXED_SHIFT_LIMIT

# Rows per block: about 16 MB of fp32 logits, small enough to stay cheap, large enough for an efficient matmul.
_BLOCK_ELEMENTS = 1 << 22


def _chunk_rows(n: int, chunk: int | None) -> int:
    if chunk is None:
        return max(64, _BLOCK_ELEMENTS // max(n, 1))
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows, got {chunk}")
    return chunk


def _as_scale(scale, like: torch.Tensor) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a float or a one-element tensor, got shape {tuple(scale.shape)}")
        return scale.reshape(())
    return torch.tensor(float(scale), dtype=torch.float32, device=like.device)


def _bound(s: float, a: torch.Tensor, b: torch.Tensor) -> float:
    """An upper bound on |s <a_i, b_j>| over all i, j (Cauchy-Schwarz)."""
    return abs(s) * float(a.norm(dim=1).max()) * float(b.norm(dim=1).max())


class _CrossLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, scale, chunk):
        n, v, _ = z.shape
        s = float(scale)
        zf = z.float()
        pairs = list(itertools.combinations(range(v), 2))
        row = torch.empty(len(pairs), n, dtype=torch.float32, device=z.device)
        col = torch.empty_like(row)
        for p, (a, b) in enumerate(pairs):
            za, zb = zf[:, a].contiguous(), zf[:, b].contiguous()
            bound = _bound(s, za, zb)
            za_s, zb_t = za * s, zb.T
            if bound <= FIXED_SHIFT_LIMIT:
                col_sum = torch.zeros(n, dtype=torch.float32, device=z.device)
                for start in range(0, n, chunk):
                    e = torch.mm(za_s[start : start + chunk], zb_t).exp_()
                    torch.log(e.sum(dim=1), out=row[p, start : start + chunk])
                    col_sum += e.sum(dim=0)
                col[p] = col_sum.log_()
            else:
                col_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=z.device)
                for start in range(0, n, chunk):
                    t = torch.mm(za_s[start : start + chunk], zb_t)
                    row[p, start : start + chunk] = torch.logsumexp(t, dim=1)
                    col_lse = torch.logaddexp(col_lse, torch.logsumexp(t, dim=0))
                col[p] = col_lse
        ctx.save_for_backward(z, scale, row, col)
        ctx.chunk = chunk
        return row, col

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        z, scale, row, col = ctx.saved_tensors
        chunk = ctx.chunk
        n, v, _ = z.shape
        s = float(scale)
        zf = z.float()
        # Gradients of S_ij / s, i.e. before the factor s: dz = s x these, and dscale = sum(dS * S) / s.
        dz = torch.zeros_like(zf)
        dscale = torch.zeros((), dtype=torch.float32, device=z.device)
        for p, (a, b) in enumerate(itertools.combinations(range(v), 2)):
            za, zb = zf[:, a].contiguous(), zf[:, b].contiguous()
            bound = _bound(s, za, zb)
            fixed = bound <= FIXED_SHIFT_LIMIT
            za_s, zb_t = za * s, zb.T
            gr, gc = grad_row[p], grad_col[p]
            da = torch.empty_like(za)
            db = torch.zeros_like(zb)
            if fixed:
                # dS_ij = exp(S_ij) (u_i + w_j) with the softmax normalizers folded into u and w.
                u = gr * torch.exp(-row[p])
                w = gc * torch.exp(-col[p])
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                t = torch.mm(za_s[rows], zb_t)
                if fixed:
                    e = t.exp_()
                    ds = e * w
                    ds.addcmul_(e, u[rows, None])
                else:
                    ds = torch.exp(t - col[p]).mul_(gc)
                    ds.addcmul_(torch.exp(t - row[p, rows, None]), gr[rows, None])
                torch.mm(ds, zb, out=da[rows])
                db.addmm_(ds.T, za[rows])
            dscale += (da * za).sum()
            dz[:, a] += da
            dz[:, b] += db
        grad_z = (dz * s).to(z.dtype) if ctx.needs_input_grad[0] else None
        grad_scale = dscale.to(scale.dtype) if ctx.needs_input_grad[1] else None
        return grad_z, grad_scale, None


class _SelfLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, chunk):
        m = x.shape[0]
        s = float(scale)
        xf = x.float()
        lse = torch.empty(m, dtype=torch.float32, device=x.device)
        bound = _bound(s, xf, xf)
        fixed = bound <= FIXED_SHIFT_LIMIT
        xs = xf * s
        for start in range(0, m, chunk):
            t = torch.mm(xs[start : start + chunk], xf.T)
            # The block's own rows sit on the diagonal that starts at column `start`.
            diag = t[:, start : start + chunk].diagonal()
            if fixed:
                e = t.exp_()
                diag.zero_()
                torch.log(e.sum(dim=1), out=lse[start : start + chunk])
            else:
                diag.fill_(float("-inf"))
                lse[start : start + chunk] = torch.logsumexp(t, dim=1)
        ctx.save_for_backward(x, scale, lse)
        ctx.chunk = chunk
        return lse

    @staticmethod
    def backward(ctx, grad):
        x, scale, lse = ctx.saved_tensors
        chunk = ctx.chunk
        m = x.shape[0]
        s = float(scale)
        xf = x.float()
        # dS x (the rows' part) and dS^T x (the columns' part), before the factor s.
        d_rows = torch.zeros_like(xf)
        d_cols = torch.zeros_like(xf)
        if m > 1:  # a lone row has no logits (lse = -inf) and so no gradient
            bound = _bound(s, xf, xf)
            fixed = bound <= FIXED_SHIFT_LIMIT
            xs = xf * s
            if fixed:
                u = grad * torch.exp(-lse)
            for start in range(0, m, chunk):
                rows = slice(start, start + chunk)
                t = torch.mm(xs[rows], xf.T)
                if fixed:
                    ds = t.exp_().mul_(u[rows, None])
                else:
                    ds = torch.exp(t.sub_(lse[rows, None])).mul_(grad[rows, None])
                ds[:, rows].diagonal().zero_()
                torch.mm(ds, xf, out=d_rows[rows])
                d_cols.addmm_(ds.T, xf[rows])
        grad_x = ((d_rows + d_cols) * s).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_scale = (d_rows * xf).sum().to(scale.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_scale, None


def cross_lse(z: torch.Tensor, scale, *, deterministic: bool = False, chunk: int | None = None):
    """Row and column log-sum-exps of the cross-view logits, without the N x N matrix.

    Args:
        z: (N, V, d) fp32, fp16 or bf16 embeddings, V >= 2.
        scale: the logit multiplier (1 / tau, or CLIP's logit_scale): a float or a 0-dim tensor, which gets its
            gradient when it requires one.
        deterministic: accepted for parity with the Triton backend; this path is always deterministic.
        chunk: rows of logits per block (default: about 4M logits per block).

    Returns:
        (row, col), fp32 tensors of shape (P, N) for the P = V(V-1)/2 view pairs a < b in the order (0, 1), (0, 2),
        ..., (V-2, V-1): with S = scale z[:, a] z[:, b]^T, row[p, i] = logsumexp_j S_ij, col[p, j] = logsumexp_i S_ij.
    """
    if z.dim() != 3 or z.shape[1] < 2:
        raise ValueError(f"z must be (N, V, d) with V >= 2, got shape {tuple(z.shape)}")
    return _CrossLSE.apply(z, _as_scale(scale, z), _chunk_rows(z.shape[0], chunk))


def self_lse(x: torch.Tensor, scale, *, deterministic: bool = False, chunk: int | None = None) -> torch.Tensor:
    """Log-sum-exp of each row of the self-similarity logits, the row's own entry excluded, without the M x M matrix.

    Args:
        x: (M, d) fp32, fp16 or bf16.
        scale: the logit multiplier, a float or a 0-dim tensor (gets its gradient when it requires one).
        deterministic: accepted for parity with the Triton backend; this path is always deterministic.
        chunk: rows of logits per block (default: about 4M logits per block).

    Returns:
        lse (M,) fp32, lse[i] = logsumexp_{j != i} scale <x_i, x_j>; -inf when M = 1.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (M, d), got shape {tuple(x.shape)}")
    return _SelfLSE.apply(x, _as_scale(scale, x), _chunk_rows(x.shape[0], chunk))
