"""Small result types shared by the kernels' wrappers and the oracle."""

from __future__ import annotations

from typing import NamedTuple

import torch


class BatchHardInfo(NamedTuple):
    """What batch-hard mining chose, returned with ``return_info=True``.

    All tensors are detached. Indices point into the reference set (``embeddings`` itself
    when no ``ref_embeddings`` is given) and are -1 where the anchor is invalid (no positive
    or no negative); distances are 0 there.
    """

    pos_idx: torch.Tensor  # (B,) int64, hardest positive of each anchor
    neg_idx: torch.Tensor  # (B,) int64, hardest negative of each anchor
    pos_dist: torch.Tensor  # (B,) d(anchor, hardest positive)
    neg_dist: torch.Tensor  # (B,) d(anchor, hardest negative)
    valid: torch.Tensor  # (B,) bool, anchor has a positive and a negative
    num_valid: torch.Tensor  # () int64, number of valid anchors
    num_active: torch.Tensor  # () int64, valid anchors with a loss > 0
    active_fraction: torch.Tensor  # () float, num_active / max(num_valid, 1)


class BatchAllInfo(NamedTuple):
    """Statistics of batch-all triplet mining, returned with ``return_info=True``."""

    num_valid: torch.Tensor  # () int64, number of (anchor, positive, negative) triplets
    num_active: torch.Tensor  # () int64, triplets with a loss > 0
    active_fraction: torch.Tensor  # () float, num_active / max(num_valid, 1)
    valid_per_anchor: torch.Tensor  # (B,) int64, triplets of each anchor
    active_per_anchor: torch.Tensor  # (B,) int64, active triplets of each anchor


class SemiHardInfo(NamedTuple):
    """What semi-hard mining chose, returned with ``return_info=True``: one triplet per
    positive pair (i, p) whose anchor has a negative, in row-major (i, p) order.

    All tensors are detached. Positive and negative indices point into the reference set
    (``embeddings`` itself when no ``ref_embeddings`` is given).
    """

    anchor_idx: torch.Tensor  # (P,) int64, the anchor of each pair
    pos_idx: torch.Tensor  # (P,) int64, its positive
    neg_idx: torch.Tensor  # (P,) int64, the semi-hard negative chosen for the pair
    pos_dist: torch.Tensor  # (P,) d(anchor, positive)
    neg_dist: torch.Tensor  # (P,) d(anchor, chosen negative)
    num_pairs: torch.Tensor  # () int64, P
    num_active: torch.Tensor  # () int64, pairs with a loss > 0
    active_fraction: torch.Tensor  # () float, num_active / max(num_pairs, 1)
