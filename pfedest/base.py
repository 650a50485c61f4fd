"""What every personalized estimator of pfedest shares: parameters, fit loop, state, clients, pickling.

:class:`PersonalizedEstimator` trains any network with a shared and a personal part per client;
a subclass (a head) says what the targets are (:class:`~pfedest.PartialPersonalizedClassifier`:
labels; :class:`~pfedest.PartialPersonalizedRegressor`: values) through four hooks:
``_check_targets``, ``_init_targets`` (which returns the output size the network must have),
``_encode_targets`` and ``_criterion`` (the loss, a :class:`~pfedest.core.model.Criterion`).
"""

from __future__ import annotations

import copy
import warnings
from functools import partial
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.utils.validation import check_is_fitted, validate_data

from .callbacks.base import callback_params, named_callbacks, set_callback_params
from .callbacks.training import Checkpoint
from .core.devices import resolve_device, to_device
from .core.engine import choose_engine
from .core.sampling import n_sampled
from .core.model import personalized_logits
from .core.server import ServerOptimizer, make_server_optimizer
from .fit_state import ClientData, FitState, estimator_state, load_estimator_state, seeds
from .guard import (check_guard, decide_clients, extend_guard, forget_guard, guard_holdout, guard_state,
                    guarded_personal, holds_out, load_guard_state, refit, refit_start, unseen_part)
from .history import History
from .nn.modules import build_module
from .nn.splits import make_split
from .privacy import check_privacy_settings
from .settings import parameter_constraints
from .training import run_plan
from .validation import check_client_ids, check_row_shape


class PersonalizedEstimator(BaseEstimator):
    """Base class of pfedest's estimators; not for direct use (see :class:`~pfedest.PartialPersonalizedClassifier`).

    Its parameters are those of :mod:`pfedest.settings`, documented on the public estimators.
    """

    #: The accepted values of every parameter, from the one registry of them (:mod:`pfedest.settings`).
    _parameter_constraints: dict = parameter_constraints()
    #: What ``validate_data`` checks of ``y`` (a head accepting several targets says ``multi_output``).
    _y_checks: dict = {}

    def __init__(self, module=None, *, split="head", algorithm="fedalt", n_rounds=300, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, guard=None, guard_margin=0.5, guard_refit=True,
                 clients_per_round=10,
                 personal_steps=None, shared_steps=None, lr=0.3, personal_lr=None, batch_size=32,
                 server_lr=1.0, hidden_layer_sizes=(64, 64), engine="auto", max_clients_per_batch=None,
                 compile="auto", device="auto", precision="fp32", unseen_clients="error", pretrain_rounds=0,
                 finetune_epochs=0,
                 server_optimizer="sgd", server_momentum=0.0, weighting="samples", lr_schedule="constant",
                 clip_grad_norm=None, personal_l2=0.0, personal_l2_target="zero", privacy=None, callbacks=None,
                 warm_start=False, verbose=0, random_state=None):
        self.module = module
        self.split = split
        self.algorithm = algorithm
        self.n_rounds = n_rounds
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.guard = guard
        self.guard_margin = guard_margin
        self.guard_refit = guard_refit
        self.clients_per_round = clients_per_round
        self.personal_steps = personal_steps
        self.shared_steps = shared_steps
        self.lr = lr
        self.personal_lr = personal_lr
        self.batch_size = batch_size
        self.server_lr = server_lr
        self.hidden_layer_sizes = hidden_layer_sizes
        self.engine = engine
        self.max_clients_per_batch = max_clients_per_batch
        self.compile = compile
        self.device = device
        self.precision = precision
        self.unseen_clients = unseen_clients
        self.pretrain_rounds = pretrain_rounds
        self.finetune_epochs = finetune_epochs
        self.server_optimizer = server_optimizer
        self.server_momentum = server_momentum
        self.weighting = weighting
        self.lr_schedule = lr_schedule
        self.clip_grad_norm = clip_grad_norm
        self.personal_l2 = personal_l2
        self.personal_l2_target = personal_l2_target
        self.privacy = privacy
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.verbose = verbose
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, client_ids=None):
        """Train for ``n_rounds`` rounds (more rounds from the current state with ``warm_start``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
            Rows of all clients.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Labels (any type scikit-learn accepts), or a regressor's values (one or more a row).
        client_ids : array-like of shape (n_samples,), default=None
            The client of each row (ints or strings). ``None``: all rows belong to one client.

        Returns
        -------
        self : PartialPersonalizedClassifier
        """
        self._check_server_settings(stacklevel=3)  # the caller of fit, past _fit_context's wrapper
        if self.privacy is not None:
            check_privacy_settings(self)
        resume = self.warm_start and hasattr(self, "shared_params_")
        X, y = validate_data(self, X, y, reset=not resume, allow_nd=True, dtype=[np.float32, np.float64],
                             **self._y_checks)
        self._check_targets(y)
        client_ids = check_client_ids(client_ids, len(X), known=self.clients_ if resume else None)
        if resume:
            check_row_shape(X, self.input_shape_, type(self).__name__)
        else:
            self._initialize(X, y, client_ids)
        codes = self._encode_targets(y)
        rows = self._rows_adding_new(client_ids)
        plan = ([["pretrain", self.pretrain_rounds]] if self.pretrain_rounds and not resume else []) \
            + [["train", self.n_rounds]] + ([["finetune", self.finetune_epochs]] if self.finetune_epochs else [])
        callbacks = [clone(cb) for _, cb in named_callbacks(self.callbacks)]
        # Checkpoint after every other callback, run_last ones too: it saves their state of the round
        self.callbacks_ = sorted(callbacks, key=lambda cb: (bool(getattr(cb, "run_last", False)),
                                                            isinstance(cb, Checkpoint)))
        check_guard(self)
        if self.guard is None:
            forget_guard(self)  # a warm start without the guard answers with the personal parts
        self._train(plan, X, codes, rows, self.callbacks_)
        return self

    def initialize(self, X, y, client_ids=None):
        """Build the network and the starting state for this data, without training.

        Sets every fitted attribute (``classes_``, ``clients_``, ``module_``, ``shared_params_``,
        ``personal_params_``, ...) as ``fit`` does before its first round; a ``fit`` with
        ``warm_start=True`` then trains from here. Only the shape of ``X``, the labels and the
        client ids are read.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
        y : array-like of shape (n_samples,)
            Labels: every class the model will know.
        client_ids : array-like of shape (n_samples,), default=None
            The clients the model will know.

        Returns
        -------
        self : PartialPersonalizedClassifier

        Examples
        --------
        >>> from pfedest import PartialPersonalizedClassifier
        >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,)).initialize([[0.0, 1.0], [1.0, 0.0]], [0, 1])
        >>> est.classes_.tolist(), sorted(est.personal_params_), len(est.history_)
        ([0, 1], ['net.2.bias', 'net.2.weight'], 0)
        """
        self._validate_params()
        self._check_server_settings(stacklevel=2)
        X, y = validate_data(self, X, y, reset=True, allow_nd=True, dtype=[np.float32, np.float64],
                             **self._y_checks)
        self._check_targets(y)
        self._initialize(X, y, check_client_ids(client_ids, len(X)))
        return self

    def request_stop(self, reason: str) -> None:
        """Called by a callback: end the current stage after this round (later stages still run)."""
        self._fit.request_stop(reason)

    def state_dict(self) -> dict:
        """Everything needed to continue training: parameters, history, the fit's progress, callbacks' state.

        Tensors (on the CPU) and a JSON string, loadable with ``torch.load(..., weights_only=True)``;
        :class:`~pfedest.callbacks.Checkpoint` writes it. Available once the model is initialized,
        during a fit and after it.

        Returns
        -------
        dict
        """
        check_is_fitted(self)
        return {**estimator_state(self, self._fit), **guard_state(self)}

    def load_state_dict(self, state: dict) -> "PersonalizedEstimator":
        """Continue from a :meth:`state_dict` of the same run, or refuse it.

        The model must be initialized (or fitting) with the same network, classes, clients and
        training settings, and, during a fit, the same plan, data and callbacks with state;
        otherwise a :class:`~pfedest.checkpoint.CheckpointError` names what differs and nothing
        changes.

        Parameters
        ----------
        state : dict
            A :meth:`state_dict`.

        Returns
        -------
        self : PartialPersonalizedClassifier
        """
        check_is_fitted(self)
        make_server = partial(make_server_optimizer, self.server_optimizer, self.server_lr, self.server_momentum)
        take_guard = load_guard_state(self, state)  # checked before anything changes
        shared, personal, history = load_estimator_state(self, self._fit, state, make_server)
        take_guard()
        self.shared_params_ = shared
        for k, v in personal.items():
            self.personal_params_[k].copy_(v)
        self.history_ = history
        self.stop_reason_ = self._fit.stop_reason
        return self

    def personalize(self, X, y, client_ids, epochs=1):
        """Train the personal part of the given clients with the shared part frozen.

        Clients unknown to the model are added, their personal part starting from the average of
        the known clients'. Known clients continue from their own.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
        y : array-like of shape (n_samples,)
            Labels among ``classes_``.
        client_ids : array-like of shape (n_samples,)
        epochs : int, default=1
            Passes of ``personal_steps`` local steps (one epoch each by default).

        Returns
        -------
        self : PartialPersonalizedClassifier
        """
        check_is_fitted(self)
        if not isinstance(epochs, Integral) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if not self.personal_params_:
            raise ValueError("This model has no personal part (split='none'): there is nothing to personalize.")
        X, y = validate_data(self, X, y, reset=False, allow_nd=True, dtype=[np.float32, np.float64],
                             **self._y_checks)
        check_row_shape(X, self.input_shape_, type(self).__name__)
        codes = self._encode_targets(y)
        rows = self._rows_adding_new(check_client_ids(client_ids, len(X), known=self.clients_))
        self._train([["personalize", epochs]], X, codes, rows, callbacks=[])
        return self

    def client_report(self, X, y, client_ids, baseline=None):
        """Every client's score on its own rows (a classifier's accuracy, a regressor's :math:`R^2`), against a
        ``baseline`` model if given.

        See :func:`pfedest.evaluation.report.client_report` (summary rows, clients made worse, worst client).

        Parameters
        ----------
        X, y, client_ids : array-like
        baseline : fitted estimator of the same kind, default=None
            E.g. the same estimator fitted with ``split="none"`` (FedAvg).

        Returns
        -------
        report : pfedest.evaluation.report.ClientReport
        """
        from .evaluation.report import client_report

        return client_report(self, X, y, client_ids, baseline=baseline)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------ internals
    def _train(self, plan, X, codes, rows, callbacks) -> None:
        data = ClientData.from_rows(X, codes, rows, len(self.clients_), self.device_, dtype=_dtype(self.module_))
        stages = [stage for stage, _ in plan]
        valid, full = None, data
        guarded = holds_out(self, stages)
        start = refit_start(self) if guarded and self.guard_refit else None
        if guarded:
            data, valid = guard_holdout(data, self.validation_fraction, self._fit.seed)
        elif self.early_stopping and "train" in stages:
            data, valid = data.holdout(self.validation_fraction, self._fit.seed)
        try:
            run_plan(self, self._fit, plan, data, callbacks, valid=valid, criterion=self._criterion())
            if guarded:  # each client of this call decides on its own held-out rows
                decide_clients(self, valid, np.flatnonzero(data.counts + valid.counts),
                               refresh_fallback="train" in stages)
                if start is not None:  # the held-out rows given back; the decisions kept
                    refit(self, start, plan, full, self._criterion())
        finally:
            self.stop_reason_ = self._fit.stop_reason
            if "train" in stages:
                self.n_iter_ = self._fit.progress[stages.index("train")]

    def _row_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of each row (lower is better), which the guard compares the personal
        model and its fallback with: cross-entropy for the classifier, the regressor's loss summed over
        its outputs (on standardized targets)."""
        # the loss, not the 0/1 error that score counts: on a few held-out rows it tells the two models
        # apart far more often (docs/guide/guard.rst); double precision, since rows' differences are summed
        targets = targets.double() if targets.is_floating_point() else targets
        losses = self._criterion().function(outputs.double(), targets, reduction="none")
        return losses.reshape(len(losses), -1).sum(1)

    def _check_server_settings(self, stacklevel: int) -> None:
        if self.server_momentum:
            warnings.warn("server_momentum is deprecated: pass server_optimizer=ServerOptimizer('sgd', lr=..., "
                          f"momentum={self.server_momentum}) instead.", FutureWarning, stacklevel=stacklevel + 1)
        if isinstance(self.server_optimizer, ServerOptimizer) and (self.server_lr != 1.0 or self.server_momentum):
            raise ValueError("server_lr and server_momentum apply to a server_optimizer given by name; with a "
                             f"ServerOptimizer object ({self.server_optimizer!r}) set lr and momentum on it.")

    def get_params(self, deep=True):
        """The parameters; with ``deep``, also each callback's as ``callbacks__<name>__<param>``.

        Parameters
        ----------
        deep : bool, default=True

        Returns
        -------
        params : dict
        """
        params = super().get_params(deep=deep)
        if deep:
            try:
                params.update(callback_params(self.callbacks, prefix="callbacks"))
            except (TypeError, ValueError, AttributeError):
                pass  # not a list of callbacks: fit's parameter validation says so
        return params

    def set_params(self, **params):
        """Set parameters, a callback's by name (``callbacks__earlystopping__patience=3``) included.

        Parameters
        ----------
        **params : dict

        Returns
        -------
        self : PartialPersonalizedClassifier
        """
        mine = {k[len("callbacks__"):]: v for k, v in params.items() if k.startswith("callbacks__")}
        super().set_params(**{k: v for k, v in params.items() if not k.startswith("callbacks__")})
        if mine:
            self.callbacks = set_callback_params(self.callbacks, mine)
        return self

    def _client_rows(self, client_ids):
        """Row of the personal state for each id (-1 for unknown ids), and the unknown ids."""
        unique, inverse = np.unique(client_ids, return_inverse=True)
        index = {c: i for i, c in enumerate(self.clients_.tolist())}
        rows = np.array([index.get(c, -1) for c in unique.tolist()], dtype=np.int64)
        return rows[inverse], unique[rows < 0]

    def _rows_adding_new(self, client_ids):
        rows, unseen = self._client_rows(client_ids)
        if len(unseen):
            self._add_clients(unseen)
            rows, _ = self._client_rows(client_ids)
        return rows

    def _add_clients(self, new_ids):
        """New clients start from the average personal part of the known clients."""
        self.clients_ = np.concatenate([self.clients_, new_ids])
        extend_guard(self, len(new_ids))
        for k, v in self.personal_params_.items():
            start = v.mean(0, keepdim=True).expand(len(new_ids), *v.shape[1:])
            self.personal_params_[k] = torch.cat([v, start])

    def _initialize(self, X, y, client_ids):
        """Targets, clients, network and a fresh fit state, from validated input."""
        n_outputs = self._init_targets(y)
        clients = np.unique(client_ids)
        seed, draw_seed = seeds(self.random_state)
        self.input_shape_ = X.shape[1:]
        self.device_ = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = build_module(self.module, self.input_shape_, n_outputs, self.hidden_layer_sizes)
            module, personal_names = make_split(self.split).resolve(network)
        module.eval()  # trained in training mode only inside local steps (pfedest.core.model.training)
        with torch.no_grad():
            try:
                out = module(torch.as_tensor(np.array(X[:1]), dtype=_dtype(module)))
            except Exception as exc:
                raise ValueError(f"The module failed on a batch of shape {(1, *X.shape[1:])}: {exc}") from exc
        if tuple(out.shape) != (1, n_outputs):
            raise ValueError(f"The module must return logits of shape (batch, {n_outputs}), one per "
                             f"{'class' if hasattr(self, 'classes_') else 'output'}; got {tuple(out.shape)}.")
        self.module_ = module.to(self.device_)
        params = {n: p.detach().clone() for n, p in self.module_.named_parameters()}
        self.personal_names_ = personal_names
        self.shared_params_ = {n: p for n, p in params.items() if n not in personal_names}
        self.personal_params_ = {n: params[n].expand(len(clients), *params[n].shape).clone()
                                 for n in personal_names}
        n_personal = sum(params[n].numel() for n in personal_names)
        self.personal_fraction_ = n_personal / sum(p.numel() for p in params.values())
        self.clients_ = clients
        forget_guard(self)
        self.history_ = History()
        self.stop_reason_ = None
        # The fit state is kept for warm starts and checkpoints: a resumed fit draws exactly what
        # the first one would, and personalization pulls towards the same anchor.
        self._fit = FitState(seed=draw_seed, personal_init={n: params[n].clone() for n in personal_names})
        n_params = sum(p.numel() for p in params.values())
        self.engine_ = choose_engine(self.engine, self.module_, self.device_, n_params,
                                     n_sampled(self.clients_per_round, len(clients)))

    def _logits(self, X, client_ids):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, allow_nd=True, dtype=[np.float32, np.float64])
        check_row_shape(X, self.input_shape_, type(self).__name__)
        rows, unseen = self._client_rows(check_client_ids(client_ids, len(X), known=self.clients_))
        personal = guarded_personal(self)
        if len(unseen):
            if self.unseen_clients == "error":
                raise ValueError(f"client_ids holds clients the model has not been trained on: "
                                 f"{unseen.tolist()[:20]}{' ...' if len(unseen) > 20 else ''}. Train them with "
                                 "personalize(X, y, client_ids), or set unseen_clients='average' to answer "
                                 "them with the known clients' average personal part. To cross-validate, split "
                                 "each client's rows (pfedest.evaluation.ClientKFold, or shuffled rows), so that "
                                 "every client trains in every fold.")
            personal = unseen_part(self, personal)
            rows = np.where(rows < 0, len(self.clients_), rows)
        device = self.device_
        X_t = torch.as_tensor(np.array(X), dtype=_dtype(self.module_), device=device)  # a copy: X may be read-only
        with torch.no_grad():
            return personalized_logits(self.module_, dict(self.module_.named_buffers()), self.shared_params_,
                                       personal, X_t, torch.as_tensor(rows, device=device))

    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself
        cpu = torch.device("cpu")
        if "module_" in state:
            state["module_"] = copy.deepcopy(state["module_"]).to(cpu)
        for key in ("shared_params_", "personal_params_", "fallback_params_"):
            if key in state:
                state[key] = to_device(state[key], cpu)
        if "_fit" in state:
            state["_fit"] = state["_fit"].to(cpu)
        if "device_" in state:
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "device_" in state:
            # The fitted device may be missing here (trained on a GPU, loaded without one).
            self.device_ = resolve_device(self.device_)
            # evaluation mode, as fit leaves it: pickles from before it did held the training mode
            self.module_ = self.module_.to(self.device_).eval()
            self.shared_params_ = to_device(self.shared_params_, self.device_)
            self.personal_params_ = to_device(self.personal_params_, self.device_)
            if hasattr(self, "fallback_params_"):
                self.fallback_params_ = to_device(self.fallback_params_, self.device_)
            self._fit = self._fit.to(self.device_)


def _dtype(module) -> torch.dtype:
    """The floating dtype of ``module``'s parameters: the rows are fed in it (float32 unless the
    module was built in another, e.g. under ``torch.set_default_dtype(torch.float64)``)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
