"""Parameters in the forms they travel and rest in: Flower ``ArrayRecord`` objects and ``.npz`` files.

The server and the nodes send parameters to each other as one ``ArrayRecord`` under
:data:`ARRAYS_KEY` of a message (:func:`to_record`, :func:`to_tensors`), and a node keeps its personal
parameters in ``context.state`` the same way. On disk, a node's personal parameters and the
server's shared ones are ``.npz`` files, written atomically (:func:`write_npz`, :func:`read_npz`).

Both sides read this module, so it imports Flower only inside :func:`to_record`.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

import numpy as np
import torch

from .._files import atomic_write
from ..core.types import Params

__all__ = ["ARRAYS_KEY", "METRICS_KEY", "CONFIG_KEY", "to_numpy", "to_tensors", "to_record", "write_npz",
           "read_npz"]

#: The key of the parameters' ``ArrayRecord`` in a train or evaluate message.
ARRAYS_KEY = "arrays"
#: The key of a reply's ``MetricRecord``.
METRICS_KEY = "metrics"
#: The key of the server's ``ConfigRecord`` (``server-round``).
CONFIG_KEY = "config"
_META = "__meta__"


def to_numpy(params: Params) -> dict:
    """Each tensor as a C-contiguous numpy array on the CPU: what a record or a file holds.

    Parameters
    ----------
    params : dict of str to Tensor

    Returns
    -------
    dict of str to ndarray

    Examples
    --------
    >>> to_numpy({"w": torch.ones(2)})
    {'w': array([1., 1.], dtype=float32)}
    """
    return {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in params.items()}


def to_tensors(record: Mapping) -> Params:
    """The tensors of a Flower ``ArrayRecord`` (or of any mapping of arrays with a ``numpy()`` method), copied.

    Parameters
    ----------
    record : flwr.app.ArrayRecord
        Received in a message or kept in ``context.state``.

    Returns
    -------
    dict of str to Tensor

    Examples
    --------
    >>> to_tensors({"w": torch.ones(2)})
    {'w': tensor([1., 1.])}
    """
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def to_record(params: Params):
    """``params`` as a Flower ``ArrayRecord`` (needs ``flwr``).

    Parameters
    ----------
    params : dict of str to Tensor

    Returns
    -------
    flwr.app.ArrayRecord

    Examples
    --------
    >>> import pytest
    >>> flwr = pytest.importorskip("flwr")
    >>> record = to_record({"w": torch.ones(2)})
    >>> to_tensors(record)
    {'w': tensor([1., 1.])}
    """
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(a) for k, a in to_numpy(params).items()})


def write_npz(path, params: Params, meta: Optional[dict] = None) -> None:
    """Write ``params`` (and ``meta``, as JSON) to the ``.npz`` file ``path``, atomically.

    Parameters
    ----------
    path : str or Path
        The file; its folder must exist.
    params : dict of str to Tensor
    meta : dict, optional
        JSON-able facts about the parameters, stored beside them.

    Returns
    -------
    None

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "p.npz"
    >>> write_npz(path, {"w": torch.ones(2)}, meta={"round": 3})
    >>> read_npz(path)
    ({'w': tensor([1., 1.])}, {'round': 3})
    """
    arrays = to_numpy(params)
    extra = {} if meta is None else {_META: np.array(json.dumps(meta))}
    atomic_write(path, lambda f: np.savez(f, **extra, **arrays))


def read_npz(path) -> tuple:
    """The parameters in an ``.npz`` file of :func:`write_npz` (or of ``numpy.savez``), and its meta.

    The file is read without pickle: one that is not an ``.npz`` archive of numeric arrays (empty,
    truncated, another format, object arrays) or whose meta is not a JSON object is refused with
    a ``ValueError`` that names it and says what is wrong.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    params : dict of str to Tensor
    meta : dict
        Empty when the file holds none.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file cannot be read as parameters.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "p.npz"
    >>> np.savez(path, w=np.zeros(2, dtype=np.float32))
    >>> read_npz(path)
    ({'w': tensor([0., 0.])}, {})
    >>> _ = path.write_bytes(b"")
    >>> read_npz(path)
    Traceback (most recent call last):
    ...
    ValueError: .../p.npz is not a readable .npz file of parameters: EOFError: No data left in file
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # empty, truncated or another format: EOFError, BadZipFile, ValueError, ...
        raise ValueError(f"{path} is not a readable .npz file of parameters: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a readable .npz file of parameters: it holds one array, not an archive.")
    try:
        with data:
            meta = json.loads(str(data[_META])) if _META in data.files else {}
            params = {}
            for k in data.files:
                if k != _META:
                    a = data[k]
                    if a.dtype.kind not in "biuf":
                        raise ValueError(f"array {k!r} has dtype {a.dtype}, not a number type")
                    params[k] = torch.from_numpy(a.copy())
    except Exception as exc:  # a damaged member, object arrays (pickle), meta that is not JSON
        raise ValueError(f"{path} is not a readable .npz file of parameters: {type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a readable .npz file of parameters: its meta is not a JSON object.")
    return params, meta
