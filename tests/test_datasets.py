"""Offline federated data sets: FedProx's Synthetic(alpha, beta), federated digits, the LEAF reader."""

import json

import numpy as np
import pytest
import sklearn
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold

from pfedest import HeadSplit, PartialPersonalizedClassifier
from pfedest.datasets import (federate, load_federated_digits, load_leaf, make_federated_classification,
                              make_shifted_clients)


# ------------------------------------------------------------------- Synthetic
def test_synthetic_shapes_types_sizes_and_reproducibility():
    X, y, c = make_federated_classification(n_clients=12, n_samples_per_client=(20, 300), shuffle=False,
                                            random_state=1)
    again = make_federated_classification(n_clients=12, n_samples_per_client=(20, 300), shuffle=False,
                                          random_state=1)
    assert X.dtype == np.float32 and X.shape[1] == 60
    assert set(np.unique(y)) <= set(range(10))
    sizes = np.bincount(c)
    assert len(sizes) == 12 and sizes.min() >= 20 and sizes.max() <= 300
    assert np.all(np.diff(c) >= 0)  # shuffle=False: rows grouped by client
    for a, b in zip((X, y, c), again):
        np.testing.assert_array_equal(a, b)


def test_synthetic_sizes_follow_a_heavy_tailed_power_law():
    _, _, c = make_federated_classification(n_clients=400, n_samples_per_client=(10, 1000), n_features=2,
                                            random_state=0)
    sizes = np.bincount(c)
    # p(n) ~ n^-2 on [10, 1000]: median about 20, mean about 46; most clients small, a few large
    assert 15 <= np.median(sizes) <= 26
    assert sizes.mean() > 1.7 * np.median(sizes)


def test_synthetic_input_covariance_decays_as_j_to_the_minus_1_2():
    X, _, _ = make_federated_classification(n_clients=1, n_samples_per_client=4000, random_state=0)
    variance = X.var(axis=0)
    assert variance[0] == pytest.approx(1.0, rel=0.1)
    assert variance[59] == pytest.approx(60 ** -1.2, rel=0.1)


def test_each_client_labels_with_its_own_linear_model():
    X, y, c = make_federated_classification(n_clients=4, alpha=1, beta=1, n_samples_per_client=300,
                                            n_features=5, n_classes=3, random_state=0)
    for client in range(4):
        rows = c == client
        if len(np.unique(y[rows])) > 1:  # separable by construction: a linear model fits it all
            fit = LogisticRegression(C=1e4, max_iter=5000).fit(X[rows], y[rows])
            assert fit.score(X[rows], y[rows]) > 0.97


def test_alpha_and_beta_control_heterogeneity_and_iid_removes_it():
    def pooled_accuracy(**kwargs):
        X, y, _ = make_federated_classification(n_clients=10, n_samples_per_client=200, n_features=10,
                                                n_classes=3, random_state=0, **kwargs)
        return LogisticRegression(C=100, max_iter=3000).fit(X, y).score(X, y)

    def spread_of_client_means(beta):
        X, _, c = make_federated_classification(n_clients=30, beta=beta, n_samples_per_client=50,
                                                n_features=10, random_state=0)
        return np.var([X[c == k].mean() for k in range(30)])

    assert pooled_accuracy(iid=True) > 0.95  # one model labels everyone
    assert pooled_accuracy(alpha=5.0, beta=0.0) < pooled_accuracy(iid=True) - 0.1
    assert spread_of_client_means(10.0) > 5 * spread_of_client_means(0.0)


@pytest.mark.parametrize("kwargs, match", [({"alpha": -1}, "alpha is a variance"), ({"n_classes": 1}, "n_classes"),
                                           ({"n_samples_per_client": (10, 5)}, "low <= high")])
def test_synthetic_refuses_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_federated_classification(**kwargs)


# --------------------------------------------------------------------- digits
DIGITS = load_digits()
ORIGINAL = {(img / 16.0).astype(np.float32).tobytes(): label for img, label in zip(DIGITS.images, DIGITS.target)}


def true_digit(image):
    return ORIGINAL[np.ascontiguousarray(image, dtype=np.float32).tobytes()]


def test_digits_deals_every_image_once_to_clients_of_unequal_size():
    X, y, c = load_federated_digits(n_clients=20, label_shift=0.0, min_samples_per_client=15, random_state=0)
    assert X.shape == (1797, 64) and X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    np.testing.assert_array_equal(np.sort(X, axis=0), np.sort((DIGITS.data / 16).astype(np.float32), axis=0))
    sizes = np.bincount(c)
    assert len(sizes) == 20 and sizes.min() >= 15 and sizes.max() > 2 * sizes.min()
    assert [true_digit(row.reshape(8, 8)) for row in X[:50]] == y[:50].tolist()  # no shift: true labels


def test_label_shift_gives_that_share_of_clients_their_own_relabelling():
    X, y, c = load_federated_digits(n_clients=10, label_shift=0.4, random_state=3, as_images=True)
    assert X.shape == (1797, 8, 8)
    relabelled = 0
    for client in range(10):
        rows = np.flatnonzero(c == client)
        pairs = {(true_digit(X[r]), y[r]) for r in rows}
        digits = [d for d, _ in pairs]
        labels = [lab for _, lab in pairs]
        assert len(set(digits)) == len(pairs) == len(set(labels))  # a bijection: the same image, a new name
        relabelled += any(d != lab for d, lab in pairs)
    assert relabelled == 4


def test_rotation_shift_rotates_every_image_of_a_client_by_one_angle():
    X, y, c = load_federated_digits(n_clients=8, label_shift=0.0, rotation_shift=0.5, as_images=True,
                                    random_state=0)
    rotated = 0
    for client in range(8):
        images = X[c == client]
        turns = {next(k for k in range(4) if np.rot90(img, -k).astype(np.float32).tobytes() in ORIGINAL)
                 for img in images if not np.array_equal(img, np.rot90(img))}
        assert len(turns) == 1
        rotated += turns != {0}
    assert rotated == 4


def test_digits_is_reproducible_and_refuses_impossible_settings():
    first = load_federated_digits(n_clients=5, random_state=7)
    for a, b in zip(first, load_federated_digits(n_clients=5, random_state=7)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="need more than the 1797 digits"):
        load_federated_digits(n_clients=200, min_samples_per_client=10)
    with pytest.raises(ValueError, match="label_shift"):
        load_federated_digits(label_shift=1.5)


def test_shifted_clients_are_unchanged():
    X, y, c = make_shifted_clients(n_clients=3, n_samples_per_client=10, random_state=0)
    assert X.shape == (30, 20) and np.bincount(c).tolist() == [10, 10, 10]


# ----------------------------------------------------------------------- federate
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_federate_deals_every_row_once_and_relabels_each_client_consistently(data):
    n_clients = data.draw(st.integers(1, 8), label="n_clients")
    n_small = data.draw(st.integers(0, n_clients), label="n_small_clients")
    small = data.draw(st.integers(1, 4), label="small_client_size")
    minimum = data.draw(st.integers(1, 5), label="min_samples_per_client")
    n_large = n_clients - n_small
    n = n_small * small + n_large * minimum + (data.draw(st.integers(0, 60), label="extra") if n_large else 0)
    names = np.array(list("abcde"))
    y = names[data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n), label="y")]
    label_shift = data.draw(st.floats(0, 1), label="label_shift")
    options = dict(label_shift=label_shift, min_samples_per_client=minimum, n_small_clients=n_small,
                   small_client_size=small, shuffle=data.draw(st.booleans(), label="shuffle"),
                   label_skew=data.draw(st.none() | st.floats(0.05, 20), label="label_skew"),
                   size_concentration=data.draw(st.none() | st.floats(0.1, 20), label="size_concentration"))
    X = np.arange(n, dtype=float)[:, None]  # the original row number, untouched without feature_shift
    X_out, y_out, c = federate(X, y, n_clients, random_state=data.draw(st.integers(0, 2**31 - 1)), **options)

    rows = X_out[:, 0].astype(int)
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))  # every row dealt once
    sizes = np.bincount(c, minlength=n_clients)
    assert len(sizes) == n_clients and sizes.min() >= 1  # every client gets rows
    assert (sizes == small).sum() >= n_small
    large = np.sort(sizes)
    for _ in range(n_small):
        large = np.delete(large, np.flatnonzero(large == small)[0])
    assert large.size == 0 or large.min() >= minimum
    if options["size_concentration"] is None and large.size:
        assert large.max() - large.min() <= 1
    if not options["shuffle"]:
        assert np.all(np.diff(c) >= 0)
    relabelled = 0
    for k in range(n_clients):
        pairs = set(zip(y[rows[c == k]].tolist(), y_out[c == k].tolist()))
        before, after = [b for b, _ in pairs], [a for _, a in pairs]
        assert len(set(before)) == len(set(after)) == len(pairs)  # a permutation of the labels
        assert set(after) <= set(y.tolist())
        relabelled += any(b != a for b, a in pairs)
    assert relabelled <= int(round(label_shift * n_clients))


def test_federate_relabels_that_share_of_clients_never_with_the_identity():
    y = np.arange(200) % 2  # two classes: a random permutation would be the identity half the time
    X_out, y_out, c = federate(np.arange(200.0)[:, None], y, n_clients=10, label_shift=0.3, random_state=0)
    truth = y[X_out[:, 0].astype(int)]
    flipped = [np.array_equal(y_out[c == k], 1 - truth[c == k]) for k in range(10)]
    kept = [np.array_equal(y_out[c == k], truth[c == k]) for k in range(10)]
    assert sum(flipped) == 3 and sum(kept) == 7


def test_label_skew_concentrates_clients_on_few_classes_and_size_concentration_makes_sizes_unequal():
    X, y = DIGITS.data / 16, DIGITS.target

    def top_two_share(**kwargs):  # mean share of a client's rows in its two largest classes
        _, y_out, c = federate(X, y, n_clients=20, random_state=0, **kwargs)
        share = [np.sort(np.bincount(y_out[c == k]))[-2:].sum() / np.sum(c == k) for k in range(20)]
        return np.mean(share), np.bincount(c)

    skewed, sizes = top_two_share(label_skew=0.1)
    mixed, _ = top_two_share()
    assert skewed > 0.7 and mixed < 0.35 and np.ptp(sizes) <= 1  # ten classes near equal: 0.2
    _, unequal = top_two_share(size_concentration=0.5, min_samples_per_client=5)
    assert unequal.min() >= 5 and unequal.max() > 4 * np.median(unequal)


@pytest.mark.parametrize("transform", ["affine", "permute"])
def test_feature_shift_transforms_that_share_of_clients_each_its_own_way(transform):
    X = np.random.default_rng(0).standard_normal((120, 5))
    X_out, y_out, c = federate(X, np.arange(120), n_clients=6, feature_shift=0.5, feature_transform=transform,
                               random_state=1)
    shifted = 0
    for k in range(6):
        before, after = X[y_out[c == k]], X_out[c == k]  # y = row number
        if np.array_equal(before, after):
            continue
        shifted += 1
        if transform == "affine":  # after = before * a + b, one (a, b) per feature
            for j in range(5):
                a, b = np.polyfit(before[:, j], after[:, j], 1)
                np.testing.assert_allclose(before[:, j] * a + b, after[:, j], atol=1e-9)
                assert a > 0
        else:  # one column order for all the client's rows
            order = [int(np.flatnonzero(before[0] == v)[0]) for v in after[0]]
            np.testing.assert_array_equal(before[:, order], after)
    assert shifted == 3


def test_feature_transform_may_be_a_callable_and_images_keep_their_shape():
    images = DIGITS.images[:200] / 16
    X_out, _, c = federate(images, DIGITS.target[:200], n_clients=4, feature_shift=0.5,
                           feature_transform=lambda rows, rng: np.rot90(rows, 1, axes=(1, 2)), random_state=0)
    assert X_out.shape == (200, 8, 8)
    untouched = {image.tobytes() for image in images}
    assert sum(X_out[c == k][0].tobytes() not in untouched for k in range(4)) == 2
    permuted, _, _ = federate(images, DIGITS.target[:200], n_clients=4, feature_shift=1.0,
                              feature_transform="permute", random_state=0)
    assert permuted.shape == (200, 8, 8)


def test_federate_is_reproducible_and_keeps_integer_features_unless_it_transforms_them():
    X, y = DIGITS.data.astype(int), DIGITS.target
    first = federate(X, y, n_clients=7, label_skew=0.5, label_shift=0.5, random_state=3)
    for a, b in zip(first, federate(X, y, n_clients=7, label_skew=0.5, label_shift=0.5, random_state=3)):
        np.testing.assert_array_equal(a, b)
    assert first[0].dtype == X.dtype
    assert federate(X, y, n_clients=7, feature_shift=0.5, random_state=3)[0].dtype == np.float64


@pytest.mark.parametrize("kwargs, match", [
    ({"n_clients": 0}, "n_clients must be a positive integer"),
    ({"label_shift": 1.5}, r"label_shift is a share of the clients and must be in \[0, 1\], got 1.5"),
    ({"label_skew": 0.0}, "label_skew is a Dirichlet concentration"),
    ({"feature_transform": "rotate"}, "feature_transform must be one of"),
    ({"n_clients": 5, "n_small_clients": 6}, "n_small_clients <= n_clients"),
    ({"n_clients": 6, "min_samples_per_client": 5}, "lower n_clients or the sizes"),
])
def test_federate_refuses_impossible_settings_and_says_which(kwargs, match):
    with pytest.raises(ValueError, match=match):
        federate(np.zeros((20, 2)), np.arange(20) % 2, **kwargs)
    with pytest.raises(ValueError, match="one label per row"):
        federate(np.zeros((20, 2)), np.zeros(19))


# ------------------------------------------------------------ shuffled rows and plain cross-validation
GENERATORS = {
    "shifted": lambda **kw: make_shifted_clients(n_clients=5, n_samples_per_client=(10, 20), **kw),
    "synthetic": lambda **kw: make_federated_classification(n_clients=5, n_samples_per_client=(10, 40),
                                                            n_features=4, **kw),
    "digits": lambda **kw: load_federated_digits(n_clients=5, **kw),
    "federate": lambda **kw: federate(DIGITS.data[:300] / 16, DIGITS.target[:300], n_clients=5, label_shift=0.4,
                                      feature_shift=0.4, label_skew=1.0, **kw),
}


def sorted_rows(X, y, c):
    table = np.column_stack([c, y, X.reshape(len(X), -1)])
    return table[np.lexsort(table.T[::-1])]


@pytest.mark.parametrize("name", GENERATORS)
def test_rows_come_shuffled_by_default_the_same_rows_grouped_on_request(name):
    shuffled = GENERATORS[name](random_state=0)
    grouped = GENERATORS[name](shuffle=False, random_state=0)
    assert np.all(np.diff(grouped[2]) >= 0)
    np.testing.assert_array_equal(sorted_rows(*shuffled), sorted_rows(*grouped))
    X, _, c = shuffled
    for train, test in KFold(2).split(X):  # scikit-learn's plain folds: every client on both sides
        assert set(c[train]) == set(c[test]) == set(c)


def test_grid_search_with_plain_cv_scores_every_candidate():
    X, y, c = load_federated_digits(n_clients=10, random_state=0)
    est = PartialPersonalizedClassifier(split=HeadSplit(), n_rounds=2, hidden_layer_sizes=(16,), random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(est, {"split__fraction": [0.1, 0.5]}, cv=2, error_score="raise")
        search.fit(X, y, client_ids=c)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


# ----------------------------------------------------------------------- LEAF
def write_leaf(path, users, xs, ys, counts=None):
    data = {"users": users, "num_samples": counts or [len(v) for v in ys], "hierarchies": [],
            "user_data": {u: {"x": x, "y": y} for u, x, y in zip(users, xs, ys)}}
    path.write_text(json.dumps(data))


def test_leaf_reads_every_file_of_a_split_directory_in_name_order(tmp_path):
    write_leaf(tmp_path / "all_data_1.json", ["f2"], [[[0.5] * 4]], [[7]])
    write_leaf(tmp_path / "all_data_0.json", ["f0", "f1"], [[[0.0] * 4, [0.1] * 4], [[0.2] * 4]], [[1, 2], [3]])
    (tmp_path / "notes.txt").write_text("not a LEAF file")
    X, y, c = load_leaf(tmp_path)
    assert X.shape == (4, 4) and X.dtype == np.float32
    assert y.tolist() == [1, 2, 3, 7]
    assert c.tolist() == ["f0", "f0", "f1", "f2"]
    np.testing.assert_allclose(X[:, 0], [0.0, 0.1, 0.2, 0.5])
    images, _, _ = load_leaf(tmp_path, x_shape=(2, 2))
    assert images.shape == (4, 2, 2)
    with pytest.raises(ValueError, match=r"x_shape=\(3, 3\) does not fit rows of 4 values"):
        load_leaf(tmp_path, x_shape=(3, 3))
    _, _, first = load_leaf(tmp_path, max_clients=2)
    assert sorted(set(first.tolist())) == ["f0", "f1"]


def test_leaf_keeps_text_rows_and_joins_a_user_found_in_two_files(tmp_path):
    write_leaf(tmp_path / "a.json", ["THE_TEMPEST_MIRANDA"], [["to be or", "not to b"]], [["e", "e"]])
    write_leaf(tmp_path / "b.json", ["THE_TEMPEST_MIRANDA"], [["hello wo"]], [["r"]])
    X, y, c = load_leaf(tmp_path)
    assert X.tolist() == ["to be or", "not to b", "hello wo"]
    assert y.tolist() == ["e", "e", "r"]
    assert set(c.tolist()) == {"THE_TEMPEST_MIRANDA"}
    with pytest.raises(ValueError, match="needs numeric rows"):
        load_leaf(tmp_path, x_shape=(2, 4))


def test_leaf_reads_one_file_with_ragged_records(tmp_path):
    file = tmp_path / "sent140.json"
    write_leaf(file, ["u"], [[["id1", "date", "hi"], ["id2", "sad tweet"]]], [[1, 0]])
    X, y, _ = load_leaf(file)
    assert X.dtype == object and X[1] == ["id2", "sad tweet"]
    assert y.tolist() == [1, 0]


def test_leaf_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="No \\*.json file"):
        load_leaf(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a directory nor a file"):
        load_leaf(tmp_path / "missing")
    (tmp_path / "bad.json").write_text(json.dumps({"users": ["u"]}))
    with pytest.raises(ValueError, match=r"bad.json.*lacks the key\(s\) \['user_data'\]"):
        load_leaf(tmp_path)
    write_leaf(tmp_path / "bad.json", ["u"], [[[1.0], [2.0]]], [[0, 1]], counts=[5])
    with pytest.raises(ValueError, match="user 'u' has 2 x, 2 y and num_samples 5"):
        load_leaf(tmp_path)
