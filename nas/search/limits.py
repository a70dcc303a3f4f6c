"""The constraints of an experiment (`constraints.*`), checked on a built model before it trains."""

from __future__ import annotations

from nas.config import ConstraintsConfig
from nas.latency import latency_once_ms


def over_limits(model, image_size: int, limits: ConstraintsConfig) -> tuple[float | None, str]:
    """The model's latency if a limit needs it, and why the model is infeasible ('' if it is not)."""
    if not (limits.max_params or limits.max_latency_ms):
        return None, ""
    params = int(model.count_params())
    latency = latency_once_ms(model, image_size) if limits.max_latency_ms else None
    reasons = []
    if limits.max_params and params > limits.max_params:
        reasons.append(f"{params} parameters > max_params {limits.max_params}")
    if latency is not None and latency > limits.max_latency_ms:
        reasons.append(f"{latency:.2f} ms/frame > max_latency_ms {limits.max_latency_ms:g}")
    return latency, "infeasible: " + "; ".join(reasons) if reasons else ""
