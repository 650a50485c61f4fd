"""``PartialPersonalizedClassifier``: the scikit-learn classifier; labels in, labels out."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets

from .base import PersonalizedEstimator
from .core.model import cross_entropy
from .validation import encode_labels


class PartialPersonalizedClassifier(ClassifierMixin, PersonalizedEstimator):
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
        of one row otherwise. Only the clients' local steps run it in training mode (dropout masks
        keyed by ``random_state``, batch norm on each minibatch's real rows); predictions and the
        losses a fit reports use evaluation mode. Batch norm makes clients train one by one.
    split : str, list of str, callable or Split, default="head"
        Which parameters are personal: ``"head"`` (output layer), ``"input"`` (first layer),
        ``"adapters"`` (residual adapters inserted after each hidden layer), ``"full"`` (everything:
        local training), ``"none"`` (nothing: FedAvg); a list of parameter-name glob patterns; a
        callable ``(name, param) -> bool``; or a :class:`~pfedest.nn.splits.Split` object, whose
        ``fraction`` is tunable as ``split__fraction``.
    algorithm : {"fedalt", "fedsim"}, default="fedalt"
        FedAlt updates the personal part first (shared part fixed), then the shared part (new
        personal part fixed); FedSim updates both in the same local steps.
    n_rounds : int, default=300
        The most communication rounds of training per call to ``fit`` (scikit-learn's iterative
        estimators call this ``max_iter``; a federated run counts rounds, each a sample of clients).
        Training stops earlier when it has converged (``tol``).
    tol : float or None, default=1e-4
        Training stops when the monitored loss has not improved by more than ``tol`` for
        ``n_iter_no_change`` rounds in a row; if ``n_rounds`` end first, a ``ConvergenceWarning``
        says so. The monitored loss is the held-out loss with ``early_stopping``, otherwise the
        training loss averaged over the last pass over the clients (``train_loss_pass`` in
        ``history_``: as many rounds as sampling every client once takes). ``None`` runs all
        ``n_rounds``.
    n_iter_no_change : int, default=10
        Rounds without improvement that end training.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of each client's rows (spread over its labels), monitor
        their loss (``valid_loss`` in ``history_``) and end with the parameters of the best round.
    validation_fraction : float in (0, 1), default=0.1
        The share of each client's rows held out with ``early_stopping`` (clients with fewer than
        ``1 / validation_fraction`` rows hold none out).
    guard : {None, "validation"}, default=None
        ``"validation"``: guard every client against harmful personalization. ``validation_fraction``
        of each client's rows are held out of training; after training, each client keeps its
        personal part only where, on its own held-out rows, it beats the fallback (the average of
        the clients' personal parts) by ``guard_margin`` standard errors of the per-row
        cross-entropy difference; the other clients are answered by the fallback, as is a client
        with fewer than two held-out rows. See ``guard_weights_``, ``guard_evidence_`` and
        :doc:`/guide/guard`.
    guard_margin : float >= 0, default=0.5
        Standard errors of the mean per-row difference of the held-out losses (fallback minus
        personal) by which a client's personal model must beat the fallback to be kept; 0 keeps it
        on any positive difference.
    guard_refit : bool, default=True
        With ``guard``: once every client has decided on its held-out rows, train again on all the
        rows, held-out ones included, as scikit-learn refits the chosen model after a search: the
        same plan from the same start with the same draws (each stage for the rounds the guarded
        training ran, without callbacks), keeping every client's decision; the fallback is then the
        average of the refit personal parts. It doubles the fit's time; a Flower node does not
        refit (it matches ``guard_refit=False``). See :doc:`/guide/guard`.
    clients_per_round : int or float, default=10
        Clients sampled each round (at most all of them); a float in (0, 1] is a fraction of them.
    personal_steps, shared_steps : int or None, default=None
        Local SGD steps on the personal and on the shared part; ``None`` is one epoch over the
        client's rows. FedSim takes ``shared_steps`` joint steps.
    lr : float, default=0.3
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
    compile : bool or "auto", default="auto"
        With the vmap engine, compile each batched SGD step with ``torch.compile``: faster rounds
        after a one-time compile of seconds (GPU) to a minute (CPU); for long runs. ``"auto"``
        compiles on CUDA when the fit plans enough batched steps to pay for it, never on a CPU
        (:func:`pfedest.core.compiling.choose_compile`); ``compile_`` says what ran.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available (then Apple ``mps``), else the CPU.
    precision : {"fp32", "bf16"}, default="fp32"
        Arithmetic of the local steps' forward and backward passes: ``"bf16"`` runs them under
        ``torch.autocast`` to bfloat16 (parameters, updates and averages stay float32), for large
        rounds on a GPU, which are bound by memory traffic. Results then differ from fp32 by
        bfloat16 rounding (:ref:`precision`).
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
    privacy : DifferentialPrivacy or None, default=None
        User-level differential privacy of the shared part (DP-FedAvg,
        :class:`pfedest.privacy.DifferentialPrivacy`): clients sampled as its accountant assumes,
        each one's shared update clipped, Gaussian noise added by the server, every client weighted
        equally (``weighting`` is not used); the personal part is never sent. ``history_`` then
        holds the ``epsilon`` spent after each round. Needs ``pip install pfedest[privacy]``.
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
    fallback_params_ : dict of str to Tensor
        With ``guard``: the fallback's personal part, the average of the clients' after training
        (one block, no client axis).
    guard_weights_ : ndarray of shape (n_clients,)
        With ``guard``: 1.0 where a client keeps its personal part, 0.0 where the fallback answers it.
    guard_evidence_ : dict of str to ndarray
        With ``guard``: per client, ``n_valid`` (held-out rows), ``personal_loss`` and
        ``fallback_loss`` (their mean cross-entropy), ``gain`` (the difference) and ``gain_se``
        (its standard error); :meth:`client_report` shows them.
    history_ : History
        One dict per round: ``round``, ``train_loss``, ``clients`` (ids sampled), ``n_clients``,
        ``bytes_up`` (shared parameters sent to the server), ``wall_time`` (seconds), ``lr``; with
        ``privacy``, ``epsilon`` (spent so far, at its ``delta``), ``dp_clip`` (the clip norm of the
        round) and ``dp`` (the round's accounting); plus what callbacks add.
    device_ : torch.device
        Where the state lives.
    engine_ : str
        The engine that ran.
    compile_ : bool
        Whether the batched steps were compiled (``compile`` resolved).
    callbacks_ : list of Callback
        The live copies of ``callbacks`` used by the last ``fit``.
    n_iter_ : int
        Rounds of training the last ``fit`` ran (at most ``n_rounds``).
    stop_reason_ : str or None
        Why the last ``fit`` ended training: converged (``tol``), ``n_rounds`` used up before it
        converged, or a callback's request; ``None`` with ``tol=None`` and no request.

    See Also
    --------
    pfedest.base.PersonalizedEstimator : ``fit``, ``initialize``, ``personalize``, ``client_report``,
        ``state_dict``, ``load_state_dict`` and ``request_stop``, which every pfedest estimator shares.
    pfedest.PartialPersonalizedRegressor : the same model for real-valued targets.
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

    # ------------------------------------------------------------ targets
    def _check_targets(self, y):
        check_classification_targets(y)

    def _init_targets(self, y) -> int:
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes to learn; "
                             f"got 1 class: {classes[0]!r}.")
        self.classes_ = classes
        return len(classes)

    def _encode_targets(self, y) -> np.ndarray:
        return encode_labels(self.classes_, y)

    def _criterion(self):
        return cross_entropy(len(self.classes_))

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
