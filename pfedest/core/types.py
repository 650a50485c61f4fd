"""Type names shared by the core."""

from __future__ import annotations

from typing import Dict

import torch

#: Named parameter tensors: the shared part ``u``, or the personal part (stacked over clients or one
#: client's ``v_i``).
Params = Dict[str, torch.Tensor]
