"""The computation of federated training: pure functions and small state objects.

Nothing here knows the estimator or Flower; both drive it.

- :mod:`~pfedest.core.algorithms`: FedAlt, FedSim and personal-only local updates, written once
  against an injected SGD ``step``.
- :mod:`~pfedest.core.rounds`: one round as ``client_updates`` (the sampled clients' local updates)
  and ``server_update`` (average and server step).
- :mod:`~pfedest.core.engine`: how client updates run: one after another (loop) or batched (vmap).
- :mod:`~pfedest.core.sampling`: client sampling and minibatch draws, keyed by (seed, round, client).
- :mod:`~pfedest.core.schedules`, :mod:`~pfedest.core.server`: learning-rate schedules and the
  server optimizer.
- :mod:`~pfedest.core.model`: the network as a function of (shared, personal) parameters.
- :mod:`~pfedest.core.devices`: where tensors live.
"""
