"""Contrastive image -> caption losses.

The paper trains with InfoNCE from image to caption at temperature 0.07. With
anonymous captions a batch is full of near-duplicates: two scenes of the same
relation get captions that differ in a word or are identical, and plain InfoNCE
pushes each image *away* from its twin's caption. The fix here is a
multi-positive target: every caption whose embedding is within ``pos_threshold``
cosine of the row's own caption counts as a positive, and the target
distribution is uniform over them (as in supervised-contrastive losses). That
needs no labels, so it also works on the paper's 114k captions. Where the data
does carry relation labels (the composed corpus), ``groups`` adds every pair of
the same label as a positive as well.

Caption targets never name objects, so neither half of that loss compares two
*images*. :func:`image_label_loss` does: a supervised-contrastive term among the
batch's images, where scenes of the same label are positives and every other
scene a negative. On grouped batches (``compose --grouped``) the hardest of
those negatives are the same objects on the same photograph in another
relation, which is exactly what image -> image retrieval must tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_MODES = ("infonce", "multipos")


@dataclass(frozen=True)
class LossConfig:
    temperature: float = 0.07
    symmetric: bool = False
    #: "infonce": only the row's own caption is positive; "multipos": see module docstring.
    mode: str = "multipos"
    #: caption-caption cosine at or above which two captions are the same target.
    pos_threshold: float = 0.9

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.mode not in LOSS_MODES:
            raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {self.mode!r}")
        if not -1.0 <= self.pos_threshold <= 1.0:
            raise ValueError(f"pos_threshold must be in [-1, 1], got {self.pos_threshold!r}")


def positive_mask(text_emb: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[B, B]`` bool: captions at or above ``threshold`` cosine, diagonal always set."""
    sim = text_emb @ text_emb.T
    mask = sim >= threshold
    mask.fill_diagonal_(True)
    return mask


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a row-stochastic target matrix."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                     config: LossConfig = LossConfig(), groups: torch.Tensor | None = None) -> torch.Tensor:
    """Image -> caption contrastive loss (plus caption -> image when ``symmetric``).

    Both inputs are ``[B, D]`` and L2-normalised; row ``i`` of each is a pair.
    ``groups`` (``[B]`` ints, multipos mode only) marks rows whose captions are
    positives for each other whatever their wording.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"need matching [B, D] embeddings, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    logits = image_emb @ text_emb.T / config.temperature
    if config.mode == "infonce":
        mask = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    else:
        mask = positive_mask(text_emb.detach(), config.pos_threshold)
        if groups is not None:
            mask = mask | (groups[:, None] == groups[None, :])
    targets = mask.to(logits.dtype)
    targets = targets / targets.sum(1, keepdim=True)
    loss = _soft_ce(logits, targets)
    if config.symmetric:
        # The mask is symmetric, so the caption -> image targets are its transpose.
        t = mask.T.to(logits.dtype)
        loss = 0.5 * (loss + _soft_ce(logits.T, t / t.sum(1, keepdim=True)))
    return loss


def image_label_loss(image_emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised-contrastive loss among images: same ``labels`` are positives.

    ``image_emb`` is ``[B, D]`` and L2-normalised, ``labels`` ``[B]`` ints. An
    image is never its own candidate; rows with no positive in the batch add
    nothing (zero when none has one).
    """
    if image_emb.ndim != 2 or labels.shape != image_emb.shape[:1]:
        raise ValueError(f"need [B, D] embeddings and [B] labels, got {tuple(image_emb.shape)} "
                         f"and {tuple(labels.shape)}")
    self_mask = torch.eye(len(labels), dtype=torch.bool, device=image_emb.device)
    # A finite "minus infinity" keeps 0 x log-probability at 0 in the soft cross-entropy.
    logits = (image_emb @ image_emb.T / temperature).masked_fill(self_mask, -1e4)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    has = pos.any(1)
    if not has.any():
        return image_emb.sum() * 0.0
    targets = pos[has].to(logits.dtype)
    return _soft_ce(logits[has], targets / targets.sum(1, keepdim=True))


def teacher_similarity_loss(image_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between the pairwise cosines of the rows and those of their teacher vectors.

    Both inputs are ``[B, D]`` / ``[B, E]`` and L2-normalised. The student keeps the teacher's
    neighbourhood among these rows (ordinary photographs) in absolute terms, so they stay as far
    apart as the teacher sees them instead of sharing one point; zero with fewer than two rows.
    """
    if image_emb.ndim != 2 or teacher_emb.ndim != 2 or len(image_emb) != len(teacher_emb):
        raise ValueError(f"need [B, D] and [B, E] embeddings, got {tuple(image_emb.shape)} "
                         f"and {tuple(teacher_emb.shape)}")
    if len(image_emb) < 2:
        return image_emb.sum() * 0.0
    off = ~torch.eye(len(image_emb), dtype=torch.bool, device=image_emb.device)
    gap = (image_emb @ image_emb.T) - (teacher_emb @ teacher_emb.T).to(image_emb.dtype)
    return (gap[off] ** 2).mean()
