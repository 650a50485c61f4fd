"""Tests of pfedest.history.History."""

import pytest

from pfedest.history import History


@pytest.fixture
def history():
    return History([{"round": r, "train_loss": 1.0 / r, "n_sampled": 10 * r} for r in range(1, 6)])


def test_column_access(history):
    assert history[:, "round"] == [1, 2, 3, 4, 5]
    assert history[:, "train_loss"] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert history[1:3, "n_sampled"] == [20, 30]
    assert history[::2, "round"] == [1, 3, 5]
    assert history[-2:, "round"] == [4, 5]


def test_single_cell(history):
    assert history[-1, "round"] == 5
    assert history[0, "train_loss"] == 1.0
    assert history[2, "n_sampled"] == 30


def test_rows(history):
    assert history[0] == {"round": 1, "train_loss": 1.0, "n_sampled": 10}
    assert history[-1]["round"] == 5
    part = history[1:3]
    assert isinstance(part, History)
    assert [row["round"] for row in part] == [2, 3]
    assert part[:, "round"] == [2, 3]
    assert part[-1, "round"] == 3


def test_is_a_list(history):
    assert isinstance(history, list)
    assert len(history) == 5
    history.append({"round": 6, "train_loss": 0.1, "n_sampled": 60})
    assert history[-1, "round"] == 6
    assert history[:, "round"][-2:] == [5, 6]


def test_empty_history():
    h = History()
    assert h[:, "round"] == []
    assert isinstance(h[:], History) and len(h[:]) == 0
    with pytest.raises(IndexError):
        h[-1, "round"]


def test_missing_key_raises(history):
    with pytest.raises(KeyError):
        history[:, "valid_loss"]
    with pytest.raises(KeyError):
        history[-1, "valid_loss"]
