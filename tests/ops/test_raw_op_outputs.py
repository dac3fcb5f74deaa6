"""The raw ops' own outputs (csrc/ops.cpp's contract) on inputs small enough to work out by
hand: what the public functions reduce, -1 / 0 for invalid anchors, per-anchor sums and
counts. That every op is a proper custom op (torch.library.opcheck, torch.compile
fullgraph) is properties/test_contract.py's, for every op on every device."""

from __future__ import annotations

import pytest
import torch

ops = torch.ops.fastmine
F64 = torch.float64


def test_low_level_op_outputs():
    """Contract of the op itself (csrc/ops.cpp): -1 / 0 for invalid anchors, per-anchor loss."""
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [9.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 1, 2])
    loss, pi, ni, pd, nd = ops.batch_hard_triplet(x, lab, x, lab, 0.3, 0, False, True, 0)
    assert pi.tolist() == [1, 0, 3, 2, -1] and ni.tolist() == [2, 2, 1, 4, -1]
    assert pd.tolist() == [1, 1, 3, 3, 0] and nd.tolist() == [3, 2, 2, 3, 0]
    assert loss.tolist() == pytest.approx([0, 0, 1.3, 0.3, 0])


# Arguments as fastmine/functional.py passes them (csrc/ops.cpp has the schemas):
#   batch_all_triplet(x, labels, ref, ref_labels, margin, metric, soft, has_exclude, offset)
#   contrastive(x, labels, ref, ref_labels, pos_margin, neg_margin, power, metric, triangle,
#               has_exclude, offset)  -- triangle: the batch against itself, pairs j > i.


def test_low_level_all_pairs_op_outputs():
    """Contract of the ops themselves (csrc/ops.cpp): per-anchor sums and counts."""
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 1])
    s, valid, active = ops.batch_all_triplet(x, lab, x, lab, 0.3, 0, False, True, 0)
    assert valid.dtype == torch.int64 and active.dtype == torch.int64 and s.dtype == F64
    assert valid.tolist() == [2, 2, 2, 2] and active.tolist() == [0, 0, 2, 0]
    assert s.tolist() == pytest.approx([0, 0, 1.6, 0], abs=1e-14)
    out = ops.contrastive(x, lab, x, lab, 0.0, 2.5, 2.0, 0, True, False, 0)
    pos_sum, pos_nz, pos_n, neg_sum, neg_nz, neg_n = (t.tolist() for t in out)
    # pairs j > i: (0,1) same d=1; (0,2), (0,3) different; (1,2) different d=2 (0.5^2);
    # (1,3) different; (2,3) same d=3
    assert pos_n == [1, 0, 1, 0] and neg_n == [2, 2, 0, 0]
    assert pos_sum == pytest.approx([1, 0, 9, 0]) and pos_nz == [1, 0, 1, 0]
    assert neg_sum == pytest.approx([0, 0.25, 0, 0]) and neg_nz == [0, 1, 0, 0]
