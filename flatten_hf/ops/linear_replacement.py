"""ReplaceMe's math: one linear map T that stands in for a removed block, folded into a down projection.

Let layer i (the last one kept before the cut) end with h = r + M, where M is its MLP's output and r
the residual stream before the MLP, and let Y be the hidden state after the removed block. ReplaceMe
(Shopkhoev et al., 2505.02819) replaces the block by a linear map on the MLP output,

    h' = r + M T,

and folds it into the MLP's down projection (M T = psi W^T T = psi (T^T W)^T, bias likewise), so
the model keeps a stock architecture and no parameter is added. T comes from calibration tokens:

- ``lstsq``: T = argmin ||M T - (Y - r)||^2 = (M^T M)^-1 M^T (Y - r), from the Gram matrix M^T M and
  the cross term M^T (Y - r) accumulated in float64 (ReplaceMe's Eq. 4; its default ridge is 0);
- ``cosine``: T = argmin_T E_t[1 - cos(r_t + M_t T, Y_t)], ReplaceMe's Eq. 5 (the "accurate" form,
  with the residual inside the cosine, which is the quantity that matters downstream), optimised
  with Adam from T = I exactly as its code does (10 epochs, batches of 1024 tokens, lr 1e-4).
"""

from __future__ import annotations

import torch

from .compensation import least_squares_refit, ridge_lambda


def lstsq_map(gram: torch.Tensor, cross: torch.Tensor, ridge_factor: float = 0.0) -> torch.Tensor:
    """T solving (M^T M + lam I) T = M^T (Y - r) + lam I: least squares, ridge pulling toward T = I.

    `ridge_factor` scales lam by the mean eigenvalue of M^T M (0: plain least squares, as ReplaceMe).
    """
    lam = ridge_lambda(gram, ridge_factor)
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    return least_squares_refit(gram, cross, eye, lam)


def cosine_map(mlp_out: torch.Tensor, residual: torch.Tensor, target: torch.Tensor, epochs: int = 10,
               batch_size: int = 1024, lr: float = 1e-4, seed: int = 0) -> torch.Tensor:
    """T minimising the mean cosine distance of r + M T to Y over tokens (rows), by Adam from T = I."""
    d = mlp_out.shape[1]
    transform = torch.eye(d, dtype=torch.float32, device=mlp_out.device).requires_grad_(True)
    optimizer = torch.optim.Adam([transform], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(mlp_out.shape[0], generator=generator).split(batch_size):
                idx = idx.to(mlp_out.device)
                pred = residual[idx].float() + mlp_out[idx].float() @ transform
                loss = 1 - torch.nn.functional.cosine_similarity(pred, target[idx].float(), dim=-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return transform.detach().double()


def fold_into_down_proj(weight: torch.Tensor, bias: torch.Tensor | None, transform: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`nn.Linear` weight [d, k] and bias [d] of a down projection whose output is then multiplied by T."""
    t = transform.double()
    new_weight = (t.T @ weight.double()).to(weight.dtype)
    new_bias = None if bias is None else (bias.double() @ t).to(bias.dtype)
    return new_weight, new_bias
