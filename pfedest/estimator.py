"""``PartialPersonalizedClassifier``: validate, encode labels and client ids, delegate to the engine."""

from __future__ import annotations

import copy
import warnings
from functools import partial
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .callbacks.base import callback_params, named_callbacks, set_callback_params
from .callbacks.training import Checkpoint
from .core.devices import resolve_device, to_device
from .core.engine import choose_engine
from .core.model import personalized_logits
from .core.server import ServerOptimizer, make_server_optimizer
from .fit_state import ClientData, FitState, estimator_state, load_estimator_state, seeds
from .history import History
from .nn.modules import build_module
from .nn.splits import make_split
from .settings import parameter_constraints
from .training import run_plan
from .validation import check_client_ids, check_row_shape, encode_labels


class PartialPersonalizedClassifier(ClassifierMixin, BaseEstimator):
    """A classifier trained by federated learning with a shared and a personal part per client.

    Each client (the rows sharing a ``client_ids`` value) keeps its own copy of the personal
    parameters; the shared parameters are averaged by a server. Every round, ``clients_per_round``
    clients are sampled and run local SGD with FedAlt or FedSim (Pillutla et al., ICML 2022);
    ``predict`` answers each row with its own client's model.

    Parameters
    ----------
    module : torch.nn.Module, callable or None, default=None
        The network. ``None`` builds an MLP (``hidden_layer_sizes``) for rows of features and a small
        CNN for images ``(n, C, H, W)`` or ``(n, H, W)``. A module instance is copied, its weights are
        the starting point. A callable (a module class or a factory) is called as
        ``module(n_features, n_classes)``, where ``n_features`` is an int for 2-D ``X`` and the shape
        of one row otherwise.
    split : str, list of str, callable or Split, default="head"
        Which parameters are personal: ``"head"`` (output layer), ``"input"`` (first layer),
        ``"adapters"`` (residual adapters inserted after each hidden layer), ``"full"`` (everything:
        local training), ``"none"`` (nothing: FedAvg); a list of parameter-name glob patterns; a
        callable ``(name, param) -> bool``; or a :class:`~pfedest.nn.splits.Split` object, whose
        ``fraction`` is tunable as ``split__fraction``.
    algorithm : {"fedalt", "fedsim"}, default="fedalt"
        FedAlt updates the personal part first (shared part fixed), then the shared part (new
        personal part fixed); FedSim updates both in the same local steps.
    n_rounds : int, default=50
        Communication rounds per call to ``fit``.
    clients_per_round : int or float, default=10
        Clients sampled each round (at most all of them); a float in (0, 1] is a fraction of them.
    personal_steps, shared_steps : int or None, default=None
        Local SGD steps on the personal and on the shared part; ``None`` is one epoch over the
        client's rows. FedSim takes ``shared_steps`` joint steps.
    lr : float, default=0.1
        Client learning rate of the shared part (and of the personal part unless ``personal_lr``).
    personal_lr : float or None, default=None
        Client learning rate of the personal part; ``None`` uses ``lr``.
    batch_size : int, default=32
        Rows per local minibatch.
    server_lr : float, default=1.0
        Server step on the averaged shared parameters; 1.0 is plain averaging (weighted as
        ``weighting`` says).
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Hidden widths of the default MLP (``module=None`` on 2-D input).
    engine : {"auto", "loop", "vmap"}, default="auto"
        ``"vmap"`` trains a round's clients in one batched computation, ``"loop"`` one after
        another; ``"auto"`` picks by device and model.
    max_clients_per_batch : int or None, default=None
        A round's clients are trained in chunks of at most this many (less memory); ``None`` sizes
        chunks to use at most half of the device's free memory.
    compile : bool, default=False
        With the vmap engine, compile each batched SGD step with ``torch.compile``: faster rounds
        after a one-time compile of seconds (GPU) to a minute (CPU); for long runs.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available (then Apple ``mps``), else the CPU.
    unseen_clients : {"error", "average"}, default="error"
        What ``predict`` does with a client it has not trained: raise a ``ValueError`` naming it,
        or use the shared part with the personal part averaged over known clients.
    pretrain_rounds : int, default=0
        FedAvg rounds on the whole network before personalization (``stage="pretrain"`` in
        ``history_``); the personal parts then start from the pre-trained model's (adapters stay the
        identity and are not pre-trained).
    finetune_epochs : int, default=0
        After the last round, epochs of local training of the personal part on every client, the
        shared part frozen (``stage="finetune"``).
    server_optimizer : {"sgd", "adam"} or ServerOptimizer, default="sgd"
        How the server applies the averaged pseudo-gradient ``u - mean(u_i)``: SGD (with
        ``server_lr=1`` and no momentum, plain averaging) or Adam (FedAdam; try ``server_lr=1e-3``),
        by name with ``server_lr``, or a :class:`~pfedest.core.server.ServerOptimizer` with its own
        settings (``ServerOptimizer("sgd", lr=1.0, momentum=0.9)`` is FedAvgM), searchable as
        ``server_optimizer__lr``.
    server_momentum : float in [0, 1), default=0.0
        Deprecated: server momentum of ``"sgd"``; pass
        ``server_optimizer=ServerOptimizer("sgd", momentum=...)`` instead.
    weighting : {"samples", "uniform"}, default="samples"
        How the server weighs each sampled client's shared parameters in the average: by its row
        count, or equally. ``"uniform"`` matches the paper's analysis, whose objective
        ``F = sum_i alpha_i F_i`` has ``alpha_i = 1/n`` (the equal-weight mean over uniformly
        sampled clients is an unbiased estimate of the mean over all); ``"samples"`` counts a client
        with more rows more, as FedAvg and the paper authors' code do. With equal row counts the two
        are the same.
    lr_schedule : {"constant", "linear", "step"} or callable, default="constant"
        Factor of the client learning rates per round, over each stage's rounds: a name, a schedule
        from :mod:`pfedest.core.schedules` (``LinearLR(warmup_rounds=5)``, ``StepLR(step_rounds=20)``), or
        a callable ``(round_index, n_rounds) -> factor``.
    clip_grad_norm : float or None, default=None
        Clip each local step's gradient (of the blocks it trains) to this norm.
    personal_l2 : float, default=0.0
        L2 penalty ``personal_l2 / 2 * ||v - target||^2`` on the personal part.
    personal_l2_target : {"zero", "init"}, default="zero"
        Pull the personal part towards zero or towards its value at the start of personalization.
    callbacks : list of Callback or (name, Callback) or None, default=None
        Hooks run at the start and end of training and of each round (:mod:`pfedest.callbacks`:
        ``EvaluateClients``, ``EarlyStopping``, ``Checkpoint``); cloned at each ``fit``. Each is
        addressed by its name, given or its class's in lower case (``callbacks__earlystopping__patience``).
    warm_start : bool, default=False
        Continue from the fitted state for ``n_rounds`` more rounds instead of starting over.
    verbose : int, default=0
        Show a progress bar over rounds with the running training loss.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the client sampling and the minibatches.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels seen in ``fit``.
    clients_ : ndarray of shape (n_clients,)
        The client ids, in the order of the personal state's leading axis.
    n_features_in_ : int
        Features (the second axis of ``X``) seen in ``fit``.
    module_ : torch.nn.Module
        The prepared network (with adapters, if the split inserts them); its architecture only.
    shared_params_ : dict of str to Tensor
        The shared parameters.
    personal_params_ : dict of str to Tensor
        The personal parameters, each of shape ``(n_clients, *param.shape)``.
    personal_fraction_ : float
        Share of the network's parameters that are personal.
    history_ : History
        One dict per round: ``round``, ``train_loss``, ``clients`` (ids sampled), ``n_clients``,
        ``bytes_up`` (shared parameters sent to the server), ``wall_time`` (seconds), ``lr``; plus
        what callbacks add.
    device_ : torch.device
        Where the state lives.
    engine_ : str
        The engine that ran.
    callbacks_ : list of Callback
        The live copies of ``callbacks`` used by the last ``fit``.
    stop_reason_ : str or None
        Why the last ``fit`` stopped a stage early (a callback's request), or ``None``.

    See Also
    --------
    pfedest.settings : every parameter, its default and what it changes, in one registry.

    Examples
    --------
    >>> from pfedest import PartialPersonalizedClassifier
    >>> from pfedest.datasets import make_shifted_clients
    >>> X, y, c = make_shifted_clients(n_clients=4, n_samples_per_client=40, random_state=0)
    >>> est = PartialPersonalizedClassifier(n_rounds=3, random_state=0).fit(X, y, client_ids=c)
    >>> est.predict(X[:2], client_ids=c[:2]).shape
    (2,)
    """

    __metadata_request__fit = {"client_ids": True}
    __metadata_request__predict = {"client_ids": True}
    __metadata_request__predict_proba = {"client_ids": True}
    __metadata_request__score = {"client_ids": True}

    #: The accepted values of every parameter, from the one registry of them (:mod:`pfedest.settings`).
    _parameter_constraints: dict = parameter_constraints()

    def __init__(self, module=None, *, split="head", algorithm="fedalt", n_rounds=50, clients_per_round=10,
                 personal_steps=None, shared_steps=None, lr=0.1, personal_lr=None, batch_size=32,
                 server_lr=1.0, hidden_layer_sizes=(64, 64), engine="auto", max_clients_per_batch=None,
                 compile=False, device="auto", unseen_clients="error", pretrain_rounds=0, finetune_epochs=0,
                 server_optimizer="sgd", server_momentum=0.0, weighting="samples", lr_schedule="constant",
                 clip_grad_norm=None, personal_l2=0.0, personal_l2_target="zero", callbacks=None, warm_start=False,
                 verbose=0, random_state=None):
        self.module = module
        self.split = split
        self.algorithm = algorithm
        self.n_rounds = n_rounds
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
        y : array-like of shape (n_samples,)
            Labels (any type scikit-learn accepts).
        client_ids : array-like of shape (n_samples,), default=None
            The client of each row (ints or strings). ``None``: all rows belong to one client.

        Returns
        -------
        self : PartialPersonalizedClassifier
        """
        self._check_server_settings(stacklevel=3)  # the caller of fit, past _fit_context's wrapper
        resume = self.warm_start and hasattr(self, "shared_params_")
        X, y = validate_data(self, X, y, reset=not resume, allow_nd=True, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        client_ids = check_client_ids(client_ids, len(X), known=self.clients_ if resume else None)
        if resume:
            check_row_shape(X, self.input_shape_, type(self).__name__)
        else:
            self._initialize(X, y, client_ids)
        codes = encode_labels(self.classes_, y)
        rows = self._rows_adding_new(client_ids)
        plan = ([["pretrain", self.pretrain_rounds]] if self.pretrain_rounds and not resume else []) \
            + [["train", self.n_rounds]] + ([["finetune", self.finetune_epochs]] if self.finetune_epochs else [])
        callbacks = [clone(cb) for _, cb in named_callbacks(self.callbacks)]
        # Checkpoint after every other callback, run_last ones too: it saves their state of the round
        self.callbacks_ = sorted(callbacks, key=lambda cb: (bool(getattr(cb, "run_last", False)),
                                                            isinstance(cb, Checkpoint)))
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
        >>> est = PartialPersonalizedClassifier(hidden_layer_sizes=(4,)).initialize([[0.0, 1.0], [1.0, 0.0]], [0, 1])
        >>> est.classes_.tolist(), sorted(est.personal_params_), len(est.history_)
        ([0, 1], ['net.2.bias', 'net.2.weight'], 0)
        """
        self._validate_params()
        self._check_server_settings(stacklevel=2)
        X, y = validate_data(self, X, y, reset=True, allow_nd=True, dtype=[np.float32, np.float64])
        check_classification_targets(y)
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
        return estimator_state(self, self._fit)

    def load_state_dict(self, state: dict) -> "PartialPersonalizedClassifier":
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
        shared, personal, history = load_estimator_state(self, self._fit, state, make_server)
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
        X, y = validate_data(self, X, y, reset=False, allow_nd=True, dtype=[np.float32, np.float64])
        check_row_shape(X, self.input_shape_, type(self).__name__)
        codes = encode_labels(self.classes_, y)
        rows = self._rows_adding_new(check_client_ids(client_ids, len(X), known=self.clients_))
        self._train([["personalize", epochs]], X, codes, rows, callbacks=[])
        return self

    # -------------------------------------------------------------- predict
    def predict_proba(self, X, client_ids=None):
        """Class probabilities of each row under its own client's model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
            Rows of clients the model knows (others as ``unseen_clients`` says).
        client_ids : array-like of shape (n_samples,), default=None
            Required when the model was fit on more than one client.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return torch.softmax(self._logits(X, client_ids).double(), dim=1).cpu().numpy()

    def predict(self, X, client_ids=None):
        """The label of each row under its own client's model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
        client_ids : array-like of shape (n_samples,), default=None
            Required when the model was fit on more than one client.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        best = self._logits(X, client_ids).argmax(1).cpu().numpy()
        return self.classes_[best]

    def score(self, X, y, client_ids=None, sample_weight=None):
        """Accuracy of ``predict(X, client_ids)`` against ``y`` (each row by its own client's model).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
        y : array-like of shape (n_samples,)
        client_ids : array-like of shape (n_samples,), default=None
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        from sklearn.metrics import accuracy_score

        return accuracy_score(y, self.predict(X, client_ids), sample_weight=sample_weight)

    def client_report(self, X, y, client_ids, baseline=None):
        """Every client's accuracy on its own rows, against a ``baseline`` model if given.

        See :func:`pfedest.evaluation.report.client_report` (summary rows, clients made worse, worst client).

        Parameters
        ----------
        X, y, client_ids : array-like
        baseline : fitted classifier, default=None
            E.g. the same estimator fitted with ``split="none"`` (FedAvg).

        Returns
        -------
        report : pfedest.evaluation.report.ClientReport
        """
        from .evaluation.report import client_report

        return client_report(self, X, y, client_ids, baseline=baseline)

    # ------------------------------------------------------------ internals
    def _train(self, plan, X, codes, rows, callbacks) -> None:
        data = ClientData.from_rows(X, codes, rows, len(self.clients_), self.device_)
        try:
            run_plan(self, self._fit, plan, data, callbacks)
        finally:
            self.stop_reason_ = self._fit.stop_reason

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
        for k, v in self.personal_params_.items():
            start = v.mean(0, keepdim=True).expand(len(new_ids), *v.shape[1:])
            self.personal_params_[k] = torch.cat([v, start])

    def _initialize(self, X, y, client_ids):
        """Labels, clients, network and a fresh fit state, from validated input."""
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes to learn; "
                             f"got 1 class: {classes[0]!r}.")
        self.classes_ = classes
        clients = np.unique(client_ids)
        seed, draw_seed = seeds(self.random_state)
        self.input_shape_ = X.shape[1:]
        self.device_ = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, personal_names = make_split(self.split).resolve(build_module(self.module, self.input_shape_, len(self.classes_),
                                                                 self.hidden_layer_sizes))
        with torch.no_grad():
            try:
                out = module(torch.as_tensor(np.array(X[:1]), dtype=torch.float32))
            except Exception as exc:
                raise ValueError(f"The module failed on a batch of shape {(1, *X.shape[1:])}: {exc}") from exc
        if tuple(out.shape) != (1, len(self.classes_)):
            raise ValueError(f"The module must return logits of shape (batch, n_classes) = (1, "
                             f"{len(self.classes_)}), got {tuple(out.shape)}.")
        self.module_ = module.to(self.device_)
        params = {n: p.detach().clone() for n, p in self.module_.named_parameters()}
        self.personal_names_ = personal_names
        self.shared_params_ = {n: p for n, p in params.items() if n not in personal_names}
        self.personal_params_ = {n: params[n].expand(len(clients), *params[n].shape).clone()
                                 for n in personal_names}
        n_personal = sum(params[n].numel() for n in personal_names)
        self.personal_fraction_ = n_personal / sum(p.numel() for p in params.values())
        self.clients_ = clients
        self.history_ = History()
        self.stop_reason_ = None
        # The fit state is kept for warm starts and checkpoints: a resumed fit draws exactly what
        # the first one would, and personalization pulls towards the same anchor.
        self._fit = FitState(seed=draw_seed, personal_init={n: params[n].clone() for n in personal_names})
        n_params = sum(p.numel() for p in params.values())
        self.engine_ = choose_engine(self.engine, self.module_, self.device_, n_params)

    def _logits(self, X, client_ids):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, allow_nd=True, dtype=[np.float32, np.float64])
        check_row_shape(X, self.input_shape_, type(self).__name__)
        rows, unseen = self._client_rows(check_client_ids(client_ids, len(X), known=self.clients_))
        personal = self.personal_params_
        if len(unseen):
            if self.unseen_clients == "error":
                raise ValueError(f"client_ids holds clients the model has not been trained on: "
                                 f"{unseen.tolist()[:20]}{' ...' if len(unseen) > 20 else ''}. Train them with "
                                 "personalize(X, y, client_ids), or set unseen_clients='average' to answer "
                                 "them with the known clients' average personal part.")
            personal = {k: torch.cat([v, v.mean(0, keepdim=True)]) for k, v in personal.items()}
            rows = np.where(rows < 0, len(self.clients_), rows)
        device = self.device_
        X_t = torch.as_tensor(np.array(X, dtype=np.float32), device=device)  # a copy: X may be read-only
        with torch.no_grad():
            return personalized_logits(self.module_, dict(self.module_.named_buffers()), self.shared_params_,
                                       personal, X_t, torch.as_tensor(rows, device=device))

    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself
        cpu = torch.device("cpu")
        if "module_" in state:
            state["module_"] = copy.deepcopy(state["module_"]).to(cpu)
        for key in ("shared_params_", "personal_params_"):
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
            self.module_ = self.module_.to(self.device_)
            self.shared_params_ = to_device(self.shared_params_, self.device_)
            self.personal_params_ = to_device(self.personal_params_, self.device_)
            self._fit = self._fit.to(self.device_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

