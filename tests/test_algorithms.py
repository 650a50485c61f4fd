"""FedAlt and FedSim local updates checked against steps computed by hand."""

from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pfedest.core.algorithms import ALGORITHMS, StepSizes, fedalt, fedsim, personal_only, sgd_step

A = np.array([1.0, 2.0, -1.0, 0.5])
B = np.array([0.5, -1.0, 2.0, 1.0])
T = np.array([1.0, 0.0, 2.0, -1.0])


def quadratic_loss(shared, personal, idx, mask):
    """0.5 * (a u + b v - t)^2 per row: a two-block model whose gradients are easy by hand."""
    a, b, t = (torch.tensor(z, dtype=torch.float64)[idx] for z in (A, B, T))
    rows = 0.5 * (a * shared["u"] + b * personal["v"] - t) ** 2
    total = (rows * mask).sum()
    count = mask.sum()
    return total / count.clamp_min(1.0), (total.detach(), count)


def by_hand_grads(u, v, rows):
    r = A[rows] * u + B[rows] * v - T[rows]
    return np.mean(r * A[rows]), np.mean(r * B[rows])


def stream(batches):
    idx = torch.tensor(batches)
    return [(row, torch.ones(row.shape, dtype=torch.float64)) for row in idx]


def step_of(loss):
    return partial(sgd_step, loss)


P_BATCHES = [[0, 1], [2, 3]]
S_BATCHES = [[1, 2], [0, 3], [3, 1]]
LR = StepSizes(shared=0.1, personal=0.3)


def start():
    return {"u": torch.tensor(0.5, dtype=torch.float64)}, {"v": torch.tensor(-0.25, dtype=torch.float64)}


def test_fedalt_updates_personal_then_shared_with_the_new_personal():
    u, v = 0.5, -0.25
    for rows in P_BATCHES:  # v moves, u fixed
        v -= LR.personal * by_hand_grads(u, v, rows)[1]
    for rows in S_BATCHES:  # u moves, the new v fixed
        u -= LR.shared * by_hand_grads(u, v, rows)[0]
    shared, personal = start()
    new_u, new_v, _ = fedalt(step_of(quadratic_loss), shared, personal,
                             {"personal": stream(P_BATCHES), "shared": stream(S_BATCHES)}, LR)
    assert new_u["u"].item() == pytest.approx(u, abs=1e-12)
    assert new_v["v"].item() == pytest.approx(v, abs=1e-12)


def test_fedsim_updates_both_from_the_same_minibatch():
    u, v = 0.5, -0.25
    for rows in S_BATCHES:
        gu, gv = by_hand_grads(u, v, rows)  # both gradients at the same point
        u, v = u - LR.shared * gu, v - LR.personal * gv
    shared, personal = start()
    new_u, new_v, _ = fedsim(step_of(quadratic_loss), shared, personal, {"joint": stream(S_BATCHES)}, LR)
    assert new_u["u"].item() == pytest.approx(u, abs=1e-12)
    assert new_v["v"].item() == pytest.approx(v, abs=1e-12)


def test_fedalt_and_fedsim_differ_when_the_blocks_are_coupled():
    shared, personal = start()
    alt = fedalt(step_of(quadratic_loss), shared, personal, {"personal": stream(S_BATCHES), "shared": stream(S_BATCHES)}, LR)
    sim = fedsim(step_of(quadratic_loss), shared, personal, {"joint": stream(S_BATCHES)}, LR)
    assert abs(alt[0]["u"].item() - sim[0]["u"].item()) > 1e-3


def test_personal_only_never_moves_the_shared_part():
    shared, personal = start()
    new_u, new_v, _ = personal_only(step_of(quadratic_loss), shared, personal, {"personal": stream(P_BATCHES)}, LR)
    assert new_u["u"].item() == 0.5
    assert new_v["v"].item() != -0.25


def test_a_fully_masked_step_changes_nothing_and_a_partial_mask_ignores_padding():
    shared, personal = start()
    idx = torch.tensor([0, 1])
    u, v, (total, count) = sgd_step(quadratic_loss, shared, personal, idx, torch.zeros(2, dtype=torch.float64),
                                    0.1, 0.3)
    assert u["u"].item() == 0.5 and v["v"].item() == -0.25 and count.item() == 0
    u, v, _ = sgd_step(quadratic_loss, shared, personal, idx, torch.tensor([1.0, 0.0], dtype=torch.float64), 0.1, 0.3)
    gu, gv = by_hand_grads(0.5, -0.25, [0])
    assert u["u"].item() == pytest.approx(0.5 - 0.1 * gu)
    assert v["v"].item() == pytest.approx(-0.25 - 0.3 * gv)


@settings(max_examples=25, deadline=None, database=None)
@given(l2=st.floats(0.0, 5.0), clip=st.one_of(st.none(), st.floats(1e-3, 10.0)), anchor=st.floats(-2.0, 2.0),
       lrs=st.sampled_from([(0.1, None), (None, 0.3), (0.1, 0.3)]))
def test_a_fully_masked_step_changes_nothing_whatever_the_options(l2, clip, anchor, lrs):
    # Padding steps of a client with fewer steps than others in its batch must be no-ops, penalty
    # and clipping included, or the batched engine would train small clients differently.
    shared, personal = start()
    zero_mask = torch.zeros(2, dtype=torch.float64)
    u, v, _ = sgd_step(quadratic_loss, shared, personal, torch.tensor([0, 1]), zero_mask, *lrs, clip=clip,
                       personal_l2=l2, personal_anchor={"v": torch.tensor(anchor, dtype=torch.float64)})
    assert u["u"].item() == 0.5 and v["v"].item() == -0.25


def test_loss_totals_count_every_real_row_of_every_step():
    shared, personal = start()
    _, _, (total, count) = fedalt(step_of(quadratic_loss), shared, personal,
                                  {"personal": stream(P_BATCHES), "shared": stream(S_BATCHES)}, LR)
    assert count.item() == 2 * (len(P_BATCHES) + len(S_BATCHES))
    assert total.item() > 0


def test_empty_blocks_are_skipped():
    shared, personal = start()
    new_u, new_v, _ = fedsim(step_of(quadratic_loss), {}, personal, {"joint": stream(S_BATCHES)},
                             StepSizes(shared=0.1, personal=0.3)) if False else (None, None, None)
    # an empty shared part (split="full") and an empty personal part (split="none")
    loss_v = lambda s, p, i, m: quadratic_loss({"u": torch.tensor(0.5, dtype=torch.float64)}, p, i, m)
    u, v, _ = fedalt(step_of(loss_v), {}, personal, {"personal": stream(P_BATCHES), "shared": stream(S_BATCHES)}, LR)
    assert u == {} and v["v"].item() != -0.25
    loss_u = lambda s, p, i, m: quadratic_loss(s, {"v": torch.tensor(-0.25, dtype=torch.float64)}, i, m)
    u, v, _ = fedsim(step_of(loss_u), shared, {}, {"joint": stream(S_BATCHES)}, LR)
    assert v == {} and u["u"].item() != 0.5


def test_algorithm_registry_names_its_streams():
    assert set(ALGORITHMS["fedalt"].streams) == {"personal", "shared"}
    assert set(ALGORITHMS["fedsim"].streams) == {"joint"}


def test_gradient_clipping_caps_the_joint_norm_of_the_trained_blocks():
    shared, personal = start()
    rows = [0, 1]
    gu, gv = by_hand_grads(0.5, -0.25, rows)
    norm = np.hypot(gu, gv)
    u, v, _ = sgd_step(quadratic_loss, shared, personal, torch.tensor(rows), torch.ones(2, dtype=torch.float64),
                       1.0, 1.0, clip=norm / 4)
    assert u["u"].item() == pytest.approx(0.5 - gu / 4)
    assert v["v"].item() == pytest.approx(-0.25 - gv / 4)
    u, v, _ = sgd_step(quadratic_loss, shared, personal, torch.tensor(rows), torch.ones(2, dtype=torch.float64),
                       1.0, 1.0, clip=norm * 4)  # under the cap: unchanged
    assert u["u"].item() == pytest.approx(0.5 - gu)


@pytest.mark.parametrize("anchor", [None, 1.0])
def test_personal_l2_pulls_towards_zero_or_the_anchor(anchor):
    shared, personal = start()
    rows = [0, 1]
    _, gv = by_hand_grads(0.5, -0.25, rows)
    target = 0.0 if anchor is None else anchor
    ref = None if anchor is None else {"v": torch.tensor(anchor, dtype=torch.float64)}
    _, v, _ = sgd_step(quadratic_loss, shared, personal, torch.tensor(rows), torch.ones(2, dtype=torch.float64),
                       None, 0.1, personal_l2=0.5, personal_anchor=ref)
    assert v["v"].item() == pytest.approx(-0.25 - 0.1 * (gv + 0.5 * (-0.25 - target)))


@pytest.mark.parametrize("trained", [(0,), (1,), (0, 1)])
def test_autograd_and_torch_func_give_the_same_gradients_zero_for_unused(trained):
    from pfedest.core.algorithms import sgd_gradients

    shared = {"u": torch.tensor(0.5, dtype=torch.float64), "unused": torch.ones(3, dtype=torch.float64)}
    personal = {"v": torch.tensor(-0.25, dtype=torch.float64)}
    idx, mask = torch.tensor([0, 2, 3]), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    by_func, stats_func = sgd_gradients(quadratic_loss, shared, personal, idx, mask, trained, personal_l2=0.3,
                                        clip=0.5)
    by_autograd, stats_autograd = sgd_gradients(quadratic_loss, shared, personal, idx, mask, trained,
                                                personal_l2=0.3, clip=0.5, autograd=True)
    assert by_func.keys() == by_autograd.keys() == set(trained)
    for block in trained:
        for k, g in by_func[block].items():
            torch.testing.assert_close(by_autograd[block][k], g)
    if 0 in trained:
        assert torch.equal(by_autograd[0]["unused"], torch.zeros(3, dtype=torch.float64))
    assert all(not g.requires_grad for block in by_autograd.values() for g in block.values())
    torch.testing.assert_close(stats_autograd, stats_func)
