"""``PartialPersonalizedClassifier``: validate, encode labels and client ids, delegate to the engine."""

from __future__ import annotations

import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .callbacks import Checkpoint
from .core.devices import resolve_device, to_device
from .core.engine import ENGINES, bytes_per_client, choose_engine
from .history import History
from .core.model import personalized_logits
from .nn.modules import default_module
from .core.schedules import SCHEDULES
from .training import client_data, run_plan
from .nn.splits import NAMED_SPLITS, make_split


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
    server_optimizer : {"sgd", "adam"}, default="sgd"
        How the server applies the averaged pseudo-gradient ``u - mean(u_i)``: SGD (with
        ``server_lr=1`` and no momentum, plain averaging) or Adam (FedAdam; try ``server_lr=1e-3``).
    server_momentum : float in [0, 1), default=0.0
        Server momentum of ``"sgd"`` (FedAvgM).
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
    callbacks : list of Callback or None, default=None
        Hooks run at the start and end of training and of each round (:mod:`pfedest.callbacks`:
        ``EvaluateClients``, ``EarlyStopping``, ``Checkpoint``); cloned at each ``fit``.
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

    _parameter_constraints: dict = {
        "module": [None, nn.Module, callable],
        "split": [StrOptions(set(NAMED_SPLITS)), list, tuple, callable, HasMethods(["resolve"])],
        "algorithm": [StrOptions({"fedalt", "fedsim"})],
        "n_rounds": [Interval(Integral, 1, None, closed="left")],
        "clients_per_round": [Interval(Integral, 1, None, closed="left"),
                              Interval(Real, 0, 1, closed="right")],
        "personal_steps": [None, Interval(Integral, 0, None, closed="left")],
        "shared_steps": [None, Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "personal_lr": [None, Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "server_lr": [Interval(Real, 0, None, closed="neither")],
        "hidden_layer_sizes": [tuple, list],
        "engine": [StrOptions(set(ENGINES))],
        "max_clients_per_batch": [None, Interval(Integral, 1, None, closed="left")],
        "compile": ["boolean"],
        "device": [str, torch.device],
        "unseen_clients": [StrOptions({"error", "average"})],
        "pretrain_rounds": [Interval(Integral, 0, None, closed="left")],
        "finetune_epochs": [Interval(Integral, 0, None, closed="left")],
        "server_optimizer": [StrOptions({"sgd", "adam"})],
        "server_momentum": [Interval(Real, 0, 1, closed="left")],
        "weighting": [StrOptions({"samples", "uniform"})],
        "lr_schedule": [StrOptions(set(SCHEDULES)), callable],
        "clip_grad_norm": [None, Interval(Real, 0, None, closed="neither")],
        "personal_l2": [Interval(Real, 0, None, closed="left")],
        "personal_l2_target": [StrOptions({"zero", "init"})],
        "callbacks": [None, list, tuple],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

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
        resume = self.warm_start and hasattr(self, "shared_params_")
        X, y = validate_data(self, X, y, reset=not resume, allow_nd=True, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        if resume:
            self._check_input_shape(X)
            codes = self._encode_labels(y)
        else:
            encoder = LabelEncoder().fit(y)
            if len(encoder.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes to learn; "
                                 f"got 1 class: {encoder.classes_[0]!r}.")
            self.classes_ = encoder.classes_
            codes = encoder.transform(y)
        client_ids = self._check_client_ids(client_ids, len(X), fresh=not resume)
        if not resume:
            self._initialize(X, np.unique(client_ids))
        rows = self._rows_adding_new(client_ids)
        plan = ([["pretrain", self.pretrain_rounds]] if self.pretrain_rounds and not resume else []) \
            + [["train", self.n_rounds]] + ([["finetune", self.finetune_epochs]] if self.finetune_epochs else [])
        callbacks = [clone(cb) for cb in (self.callbacks or [])]
        # Checkpoint after every other callback, run_last ones too: it saves their state of the round
        self.callbacks_ = sorted(callbacks, key=lambda cb: (bool(getattr(cb, "run_last", False)),
                                                            isinstance(cb, Checkpoint)))
        run_plan(self, plan, client_data(self, X, codes, rows), self.callbacks_)
        return self

    def request_stop(self, reason: str) -> None:
        """Called by a callback: end the current stage after this round (later stages still run)."""
        self.stop_reason_ = reason
        self._stop_requested = True

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
        self._check_input_shape(X)
        codes = self._encode_labels(y)
        rows = self._rows_adding_new(self._check_client_ids(client_ids, len(X)))
        run_plan(self, [["personalize", epochs]], client_data(self, X, codes, rows), callbacks=[])
        return self

    # -------------------------------------------------------------- predict
    def predict_proba(self, X, client_ids=None):
        """Class probabilities of each row under its own client's model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *shape)``
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
    def _check_input_shape(self, X):
        if X.shape[1:] != self.input_shape_:
            raise ValueError(f"X has rows of shape {X.shape[1:]}, but {type(self).__name__} was fitted on "
                             f"rows of shape {self.input_shape_}.")

    def _encode_labels(self, y):
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(f"y holds labels unseen when the model was fitted: {unknown.tolist()}; "
                             f"known labels: {self.classes_.tolist()}.")
        return np.searchsorted(self.classes_, y)

    def _check_client_ids(self, client_ids, n_samples, fresh=False):
        """Client ids as an array; ``None`` means the model's one client (or client 0 on a fresh fit)."""
        known = None if fresh else getattr(self, "clients_", None)
        if client_ids is None:
            if known is not None and len(known) > 1:
                raise ValueError(f"client_ids is required: this model was fitted on {len(known)} "
                                 "clients and each row must say which one it belongs to.")
            return np.full(n_samples, known[0] if known is not None else 0)
        client_ids = np.asarray(client_ids)
        if client_ids.ndim != 1 or len(client_ids) != n_samples:
            raise ValueError(f"client_ids must be 1-D with one id per row of X ({n_samples} rows), got shape "
                             f"{client_ids.shape}.")
        if client_ids.dtype.kind == "f" and not np.all(np.isfinite(client_ids)):
            raise ValueError("client_ids contains NaN or infinity.")
        if client_ids.dtype.kind == "O":
            try:
                np.unique(client_ids)
            except TypeError as exc:
                raise TypeError("client_ids mixes types that cannot be compared (e.g. str and int); "
                                "use one type for all ids.") from exc
        if known is not None and len(client_ids) and _id_kind(client_ids) != _id_kind(known):
            # NumPy would compare "0" with 0 as different clients, or turn the known ids into text
            raise TypeError(f"client_ids are {_id_kind(client_ids)}s ({client_ids[:3].tolist()} ...) but this model's "
                            f"clients are {_id_kind(known)}s ({known[:3].tolist()} ...); pass ids of the same type.")
        return client_ids

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

    def _seed(self):
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _draw_seed(self, drawn: int) -> int:
        """The seed of the rounds' keyed draws (:class:`~pfedest.core.sampling.RoundKeys`): an int
        ``random_state`` itself, so that it equals the Flower app's ``seed``; else ``drawn``."""
        rs = self.random_state
        if isinstance(rs, Integral) and not isinstance(rs, (bool, np.bool_)):
            return int(rs)
        return drawn

    def _build_module(self, input_shape):
        n_classes = len(self.classes_)
        n_features = input_shape[0] if len(input_shape) == 1 else input_shape
        if self.module is None:
            module = default_module(input_shape, n_classes, self.hidden_layer_sizes)
        elif isinstance(self.module, nn.Module):
            module = copy.deepcopy(self.module)
        else:
            module = self.module(n_features, n_classes)
            if not isinstance(module, nn.Module):
                raise TypeError(f"module({n_features}, {n_classes}) returned {type(module).__name__}, "
                                "not a torch.nn.Module.")
        return module

    def _initialize(self, X, clients):
        seed = self._seed()
        # kept for warm starts and checkpoints: a resumed fit draws exactly what the first one would
        self._keyed_seed = self._draw_seed(seed)
        self.input_shape_ = X.shape[1:]
        self.device_ = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, personal_names = make_split(self.split).resolve(self._build_module(self.input_shape_))
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
        self._personal_init = {n: params[n].clone() for n in personal_names}
        self._servers = {}
        n_params = sum(p.numel() for p in params.values())
        self.engine_ = choose_engine(self.engine, self.module_, self.device_, n_params)
        example = torch.as_tensor(np.array(X[:1]), dtype=torch.float32, device=self.device_)
        self._bytes_per_client = bytes_per_client(self.module_, example, self.batch_size)

    def _logits(self, X, client_ids):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, allow_nd=True, dtype=[np.float32, np.float64])
        self._check_input_shape(X)
        rows, unseen = self._client_rows(self._check_client_ids(client_ids, len(X)))
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

    # ------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself
        cpu = torch.device("cpu")
        if "module_" in state:
            state["module_"] = copy.deepcopy(state["module_"]).to(cpu)
        for key in ("shared_params_", "personal_params_"):
            if key in state:
                state[key] = to_device(state[key], cpu)
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _id_kind(ids: np.ndarray) -> str:
    """``"number"`` or ``"string"`` (``"other"`` for anything else): the kind of client ids."""
    if ids.dtype.kind in "iufb":
        return "number"
    if ids.dtype.kind in "US":
        return "string"
    values = ids.tolist()
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, (int, float, np.number)) for v in values):
        return "number"
    return "other"
