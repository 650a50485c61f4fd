"""``PartialPersonalizedRegressor``: the scikit-learn regressor; values in, values out.

A thin head on :class:`~pfedest.base.PersonalizedEstimator`, as the classifier is: it says what the
targets are (one or several real values a row), how they are scaled for training, and the loss
(squared error, or Huber). Everything else (the rounds, FedAlt and FedSim, the engines, the splits,
callbacks, checkpoints, ``personalize``) is the base's.

Targets are standardized inside ``fit`` (``normalize_y=True``, the default): the mean and standard
deviation of each output are learned from the first fit's ``y`` (``y_mean_``, ``y_scale_``), the
network is trained on ``(y - y_mean_) / y_scale_`` and ``predict`` maps its outputs back, as
:class:`~sklearn.gaussian_process.GaussianProcessRegressor` does with ``normalize_y=True``
(scikit-learn's :class:`~sklearn.neural_network.MLPRegressor` trains on ``y`` as given; its users
wrap it in a ``TransformedTargetRegressor``). It is on by default because the defaults (``lr=0.3``, the divergence
guard) were calibrated on cross-entropy, whose gradients are of order one: on standardized targets
the squared error starts at about 0.5 (the loss of predicting the mean) with gradients of order one
too, whatever the units of ``y``. ``normalize_y=False`` trains on ``y`` as given, for a module
without an output bias (centring would add an intercept it does not have), such as the linear model
of :class:`pfedest.theory.problems.PersonalizedLeastSquares`, whose optimum the regressor then
reaches (``tests/test_regressor.py``).
"""

from __future__ import annotations

import inspect
from functools import partial

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted

from .base import PersonalizedEstimator
from .core.model import Criterion, huber, squared_error
from .estimator import PartialPersonalizedClassifier
from .settings import parameter_constraints

__all__ = ["PartialPersonalizedRegressor"]

#: The loss of predicting the mean of standardized targets: half their variance, 0.5.
_GUESS = 0.5


class PartialPersonalizedRegressor(RegressorMixin, PersonalizedEstimator):
    # the docstring is written below from the classifier's parameters (the same, one place) and the
    # regressor's own
    _parameter_constraints: dict = parameter_constraints("regressor")
    _y_checks: dict = {"multi_output": True, "y_numeric": True}

    __metadata_request__fit = {"client_ids": True}
    __metadata_request__predict = {"client_ids": True}
    __metadata_request__score = {"client_ids": True}

    def __init__(self, module=None, *, split="head", algorithm="fedalt", n_rounds=300, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, guard=None, guard_margin=0.5, guard_refit=True,
                 clients_per_round=10,
                 personal_steps=None, shared_steps=None, lr=0.3, personal_lr=None, batch_size=32,
                 server_lr=1.0, hidden_layer_sizes=(64, 64), engine="auto", max_clients_per_batch=None,
                 compile="auto", device="auto", precision="fp32", unseen_clients="error", pretrain_rounds=0,
                 finetune_epochs=0,
                 server_optimizer="sgd", server_momentum=0.0, weighting="samples", lr_schedule="constant",
                 clip_grad_norm=None, personal_l2=0.0, personal_l2_target="zero", privacy=None,
                 callbacks=None, warm_start=False,
                 verbose=0, random_state=None, loss="squared_error", epsilon=1.35,
                 normalize_y=True):
        # every parameter but the regressor's own goes to the base, by name (the registry holds them)
        shared = {name: value for name, value in locals().items()
                  if name not in ("self", "__class__", "loss", "epsilon", "normalize_y")}
        super().__init__(**shared)
        self.loss = loss
        self.epsilon = epsilon
        self.normalize_y = normalize_y

    # ------------------------------------------------------------ targets
    def _check_targets(self, y):
        if np.asarray(y).ndim > 2:
            raise ValueError(f"y must have one value or one row of values per sample; got shape {np.shape(y)}.")

    def _init_targets(self, y) -> int:
        values = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        self.n_outputs_ = values.shape[1]
        if not self.normalize_y:
            self.y_mean_, self.y_scale_ = np.zeros(self.n_outputs_), np.ones(self.n_outputs_)
            return self.n_outputs_
        self.y_mean_ = values.mean(axis=0)
        scale = values.std(axis=0)
        # a constant output is centred, not divided by ~0 (scikit-learn's StandardScaler does the same)
        self.y_scale_ = np.where(scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(self.y_mean_), 1.0),
                                 1.0, scale)
        return self.n_outputs_

    def _encode_targets(self, y) -> np.ndarray:
        values = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if values.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {values.shape[1]} output(s) per row, but {type(self).__name__} was fitted on "
                             f"{self.n_outputs_}.")
        return (values - self.y_mean_) / self.y_scale_

    def _criterion(self) -> Criterion:
        if self.loss == "huber":
            return Criterion(partial(huber, delta=float(self.epsilon)), guess=_GUESS)
        return Criterion(squared_error, guess=_GUESS)

    # -------------------------------------------------------------- predict
    def predict(self, X, client_ids=None):
        """The value(s) of each row under its own client's model, in the units of ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
            Rows of clients the model knows (others as ``unseen_clients`` says).
        client_ids : array-like of shape (n_samples,), default=None
            Required when the model was fit on more than one client.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            One column per output; a single output as a 1-D array (as scikit-learn's MLPRegressor).
        """
        check_is_fitted(self)
        out = self._logits(X, client_ids).double().cpu().numpy() * self.y_scale_ + self.y_mean_
        return out.ravel() if self.n_outputs_ == 1 else out

    def score(self, X, y, client_ids=None, sample_weight=None):
        """:math:`R^2` of ``predict(X, client_ids)`` against ``y``, averaged over outputs with equal weights.

        As :meth:`sklearn.base.RegressorMixin.score`, with each row predicted by its own client's model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        client_ids : array-like of shape (n_samples,), default=None
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        from sklearn.metrics import r2_score

        return r2_score(y, self.predict(X, client_ids), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


_OWN_PARAMETERS = """\
loss : {"squared_error", "huber"}, default="squared_error"
    The loss on standardized targets: half the squared error, or Huber's (half the squared error
    within ``epsilon`` of the target, linear beyond it: outliers pull with bounded force).
epsilon : float > 0, default=1.35
    Where ``loss="huber"`` turns linear, in standard deviations of ``y`` (in units of ``y`` with
    ``normalize_y=False``). 1.35 is :class:`sklearn.linear_model.HuberRegressor`'s default.
normalize_y : bool, default=True
    Train on ``y`` standardized per output (mean 0, variance 1; ``y_mean_``, ``y_scale_``) and
    map the predictions back, as :class:`sklearn.gaussian_process.GaussianProcessRegressor`
    does with ``normalize_y=True``: the default learning rate and loss scale then fit ``y`` of
    any units. ``False`` trains on ``y`` as given (``y_mean_ = 0``, ``y_scale_ = 1``): for a
    ``module`` without an output bias, whose model class a centred ``y`` would change.
"""

_OWN_ATTRIBUTES = """\
n_outputs_ : int
    Outputs per row (columns of ``y``; 1 for a 1-D ``y``).
y_mean_, y_scale_ : ndarray of shape (n_outputs,)
    Mean and standard deviation (1 for a constant output) of each output in the first ``fit``'s
    ``y`` (0 and 1 with ``normalize_y=False``): the network learns ``(y - y_mean_) / y_scale_``,
    ``predict`` maps back. A warm start or ``personalize`` keeps them.
"""


def _docstring() -> str:
    """The regressor's docstring: its summary, the classifier's parameters (shared, one text) and its own."""
    classifier = inspect.cleandoc(PartialPersonalizedClassifier.__doc__)
    params = classifier[classifier.index("Parameters\n----------\n"):classifier.index("\nAttributes\n")]
    attributes = classifier[classifier.index("Attributes\n----------\n"):classifier.index("\nSee Also\n")]
    attributes = attributes.replace("classes_ : ndarray of shape (n_classes,)\n    The labels seen in ``fit``.\n",
                                    _OWN_ATTRIBUTES)
    return f"""A regressor trained by federated learning with a shared and a personal part per client.

Each client (the rows sharing a ``client_ids`` value) keeps its own copy of the personal
parameters; the shared parameters are averaged by a server, as in
:class:`~pfedest.PartialPersonalizedClassifier`, whose parameters it shares. ``y`` holds one real
value a row, or several (multi-output); it is standardized for training (``y_mean_``,
``y_scale_``) and ``predict`` answers in its units; the losses in ``history_`` are on the
standardized targets (predicting the mean scores 0.5 with squared error). ``score`` is :math:`R^2`.

Where the parameters below speak of classes: a callable ``module`` is called as
``module(n_features, n_outputs)``, and ``early_stopping`` holds out rows spread over the range of
each client's (first) target.

{params}{_OWN_PARAMETERS}
{attributes}
See Also
--------
pfedest.PartialPersonalizedClassifier : the same model for labels.
pfedest.base.PersonalizedEstimator : ``fit``, ``initialize``, ``personalize``, ``client_report``,
    ``state_dict``, ``load_state_dict`` and ``request_stop``, which every pfedest estimator shares.

Examples
--------
>>> import numpy as np
>>> from pfedest import PartialPersonalizedRegressor
>>> rng = np.random.default_rng(0)
>>> X, c = rng.normal(size=(80, 3)), np.repeat([0, 1], 40)
>>> y = X @ [1.0, -2.0, 0.5] + np.where(c == 0, 10.0, -10.0)  # each client its own offset
>>> est = PartialPersonalizedRegressor(n_rounds=10, tol=None, random_state=0).fit(X, y, client_ids=c)
>>> est.predict(X[:2], client_ids=c[:2]).shape, est.score(X, y, client_ids=c) > 0.9
((2,), True)
"""


PartialPersonalizedRegressor.__doc__ = _docstring()
