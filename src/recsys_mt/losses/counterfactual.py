"""Counterfactual CVR risk in the style of ESCM² (Wang et al., SIGIR 2022).

"ESCM²: Entire Space Counterfactual Multi-Task Model for Post-Click Conversion Rate Estimation"
adds to ESMM's entire-space losses a *counterfactual* risk for the CVR tower: the conversion
loss measured on clicked rows and re-weighted by the inverse click propensity, an unbiased
estimate (when the propensity is right) of the CVR loss over **all** impressions, i.e. of
``p(buy | do(click))``. With ``o_i`` the click, ``r_i`` the purchase, ``p_i = σ(z_i)`` the CVR
prediction, ``e_i = BCE(r_i, p_i)`` its error and ``p̂_i = max(ctr_i, clip)`` the clipped,
detached propensity:

- **IPS** (inverse propensity score): ``L = (1/B) Σ_i o_i · e_i / p̂_i``.
- **DR** (doubly robust): ``L = (1/B) Σ_i [ê_i + o_i · (e_i − ê_i) / p̂_i]`` with an *imputed*
  error ``ê_i`` from an imputation model trained by
  ``L_imp = (1/B) Σ_i o_i · (e_i − ê_i)² / p̂_i``. DR is unbiased when either the propensity
  or the imputation is right, and its variance is lower than IPS's when ``ê`` is close to ``e``.

The functions are pure (tensors in, scalars out); :class:`~recsys_mt.MultiTaskModel` applies
them with ``counterfactual="ips"`` or ``"dr"``. The propensity is always detached: the CTR tower
is trained by its own loss, not by making the re-weighted CVR loss small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COUNTERFACTUALS = ("ips", "dr")


def _prepare(
    cvr_logit: Tensor, ctr_prob: Tensor, click: Tensor, purchase: Tensor, clip: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(z, p̂, o, r)`` as float ``[B]``; ``r`` zeroed where not clicked (it may be NaN there)."""
    if not 0.0 < clip <= 1.0:
        raise ValueError(f"clip must be in (0, 1], got {clip!r}")
    shape = cvr_logit.shape
    if cvr_logit.dim() != 1 or any(t.shape != shape for t in (ctr_prob, click, purchase)):
        raise ValueError(
            "cvr_logit, ctr_prob, click and purchase must all be [B]; got "
            f"{[tuple(t.shape) for t in (cvr_logit, ctr_prob, click, purchase)]}"
        )
    o = click.float()
    r = torch.where(o > 0, purchase.float(), torch.zeros_like(o))
    return cvr_logit.float(), ctr_prob.detach().float().clamp(min=clip), o, r


def ips_cvr_loss(
    cvr_logit: Tensor, ctr_prob: Tensor, click: Tensor, purchase: Tensor, clip: float = 0.05
) -> Tensor:
    """Inverse-propensity-weighted CVR loss (ESCM²-IPS).

    ``L = (1/B) Σ_i click_i · BCE(purchase_i, σ(cvr_logit_i)) / max(ctr_prob_i, clip)``.

    Only clicked rows contribute (to the value and to the gradient); dividing by ``B`` (all
    rows, not the clicked ones) makes it an estimate of the mean CVR loss over every impression.

    Args:
        cvr_logit: ``[B]`` conditional CVR logit ``z`` (``σ(z) = p(buy | click)``).
        ctr_prob: ``[B]`` click propensity; detached here (no gradient reaches it).
        click: ``[B]`` click labels in {0, 1}.
        purchase: ``[B]`` purchase labels; ignored (may be NaN) where ``click`` is 0.
        clip: lower bound on the propensity, so a tiny CTR cannot blow a row's weight up
            beyond ``1 / clip``.

    Returns:
        scalar loss.
    """
    z, p_hat, o, r = _prepare(cvr_logit, ctr_prob, click, purchase, clip)
    e = F.binary_cross_entropy_with_logits(z, r, reduction="none")
    return (o * e / p_hat).mean()


def dr_cvr_loss(
    cvr_logit: Tensor,
    imputation_logit: Tensor,
    ctr_prob: Tensor,
    click: Tensor,
    purchase: Tensor,
    clip: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """Doubly robust CVR loss (ESCM²-DR) and the imputation model's loss.

    With ``p_i = σ(cvr_logit_i)``, ``e_i = BCE(purchase_i, p_i)`` and ``p̂_i =
    max(ctr_prob_i, clip)``, the imputation output is read as an **imputed conversion label**
    ``r̃_i = σ(imputation_logit_i)`` and the imputed error is the error the CVR prediction would
    have if the label were drawn from it::

        ê_i = E_{r ~ Bernoulli(r̃_i)} BCE(r, p_i) = −[r̃_i log p_i + (1 − r̃_i) log(1 − p_i)]

    Then::

        dr  = (1/B) Σ_i [ê_i + click_i (e_i − ê_i) / p̂_i]          (r̃ detached)
        imp = (1/B) Σ_i click_i (e_i − ê_i)² / p̂_i                  (e and p detached)

    ``dr`` trains the CVR logit only, ``imp`` the imputation logit only. Why an imputed label
    rather than a free non-negative error (e.g. ``ê = softplus(·)``, the paper's "imputation
    tower predicts the error"): ``ê`` then depends on the CVR prediction, so the DR term gives
    the CVR tower a gradient on unclicked rows (towards ``r̃``). If ``ê`` did not depend on
    ``p``, the gradient of ``dr`` with respect to the CVR logit would equal IPS's exactly and DR
    would only change the loss value, not the training. ``ê`` also stays in the range of the
    errors it imputes: between ``−log p`` and ``−log(1 − p)``.

    Args:
        cvr_logit: ``[B]`` conditional CVR logit.
        imputation_logit: ``[B]`` imputation output (logit of the imputed label ``r̃``).
        ctr_prob: ``[B]`` click propensity; detached here.
        click: ``[B]`` click labels in {0, 1}.
        purchase: ``[B]`` purchase labels; ignored (may be NaN) where ``click`` is 0.
        clip: lower bound on the propensity.

    Returns:
        ``(dr_loss, imputation_loss)``, two scalars.
    """
    z, p_hat, o, r = _prepare(cvr_logit, ctr_prob, click, purchase, clip)
    if imputation_logit.shape != z.shape:
        raise ValueError(
            f"imputation_logit must be [B] like cvr_logit, got {tuple(imputation_logit.shape)}"
        )
    r_tilde = torch.sigmoid(imputation_logit.float())
    e = F.binary_cross_entropy_with_logits(z, r, reduction="none")
    e_hat = F.binary_cross_entropy_with_logits(z, r_tilde.detach(), reduction="none")
    dr = (e_hat + o * (e - e_hat) / p_hat).mean()
    e_hat_imp = F.binary_cross_entropy_with_logits(z.detach(), r_tilde, reduction="none")
    imp = (o * (e.detach() - e_hat_imp) ** 2 / p_hat).mean()
    return dr, imp
