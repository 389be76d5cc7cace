"""SparseGPT's one-shot pruning of one linear layer (Frantar & Alistarh 2023, "SparseGPT: Massive
Language Models Can Be Accurately Pruned in One-Shot", ICML; reference implementation
github.com/IST-DASLab/sparsegpt, ``sparsegpt.py``, ``SparseGPT.fasterprune``).

The layer's weights are pruned so that its outputs on the calibration inputs change as little as
possible: with ``H = 2 X X^T`` the Hessian of ``||W X - W' X||^2``, columns (input features) are
visited left to right in blocks of ``blocksize``; a weight is chosen for removal by the OBS
saliency ``w^2 / [H^-1]_jj^2`` (the diagonal read from the upper Cholesky factor of ``H^-1``, as
the reference reads it) and, when a column is done, the error it leaves is spread over the
weights still to come through that factor's row (the OBS update), exactly as ``fasterprune`` does.

Where this differs from the reference, and why:

* Unstructured: the reference prunes every weight whose saliency is ``<=`` the value at index
  ``int(n * sparsity)`` of the block's sorted saliencies, which is one weight more than the share
  (and more with ties). Here exactly ``round(n * sparsity)`` weights of each block go, the lowest
  saliency first, so every method removes the same number of weights.
* Computed in float64 (the reference uses float32 for speed on a GPU); the layers here are small.
* The pruned weights are returned as a mask of kept weights, so recovery can keep them at zero.
"""

from __future__ import annotations

import torch

from apoptosis.core.errors import ApoptosisError

BLOCKSIZE = 128  # the paper's and the reference's column block size
PERCDAMP = 0.01  # dampening: 1% of the mean diagonal of H is added to it (the reference's percdamp)
N_OF_M = (2, 4)  # semi-structured pattern: 2 of every 4 consecutive input weights are pruned


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper Cholesky factor of ``(H + lambda I)^-1`` with ``lambda = percdamp * mean(diag H)``,
    and the (in,) mask of dead inputs (never nonzero in the calibration set: their diagonal is set to 1,
    as in the reference)."""
    H = hessian.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(percdamp * H.diagonal().mean())
    try:
        lower = torch.linalg.cholesky(H)
    except torch.linalg.LinAlgError:
        raise ApoptosisError("SparseGPT: the damped Hessian is not positive definite; use more --calibration") from None
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True), dead


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: str = "unstructured",
    blocksize: int = BLOCKSIZE,
    percdamp: float = PERCDAMP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, in) pruned and updated, and the (out, in) bool mask of kept weights.

    ``pattern``: ``unstructured`` (``sparsity`` of each block of columns, chosen adaptively from the
    block's weights as updated so far) or ``2:4`` (in every row, the 2 of each 4 consecutive
    columns with the lowest saliency, chosen when the first of the 4 is reached; ``sparsity`` is
    then 0.5 by definition and not read)."""
    W = weight.detach().double().clone()
    rows, columns = W.shape
    n, m = N_OF_M
    if pattern == "2:4" and columns % m:
        raise ApoptosisError(f"2:4 needs an input width divisible by 4, got {columns}")
    Hinv, dead = inverse_hessian_factor(hessian.to(W.device), percdamp)
    W[:, dead] = 0.0
    pruned = torch.zeros(rows, columns, dtype=torch.bool, device=W.device)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal()
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if pattern == "unstructured":
            saliency = (W1**2 / d[None, :] ** 2).flatten()
            k = round(saliency.numel() * sparsity)
            mask1.view(-1)[torch.argsort(saliency, stable=True)[:k]] = True
        for i in range(i2 - i1):
            if pattern == "2:4" and i % m == 0:
                saliency = W1[:, i : i + m] ** 2 / d[None, i : i + m] ** 2
                mask1.scatter_(1, i + torch.topk(saliency, n, dim=1, largest=False).indices, True)
            w = W1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(w), w)
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), ~pruned
