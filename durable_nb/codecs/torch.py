"""torch tensors as their raw bytes (safetensors-style: dtype, shape and device in meta, the buffer as a
blob), including dtypes numpy lacks (bfloat16, float8, complex32).

A dense tensor in another memory order (a transpose, channels_last) keeps its strides: its bytes are stored in
memory order. Any other non-contiguous view (a step slice, an expand) is stored as its contiguous copy (same
values, shape and dtype). The storage a view shared is not kept. A tensor recorded on another device comes back
on that device when this process has it, else on the CPU with a one-line note on stderr. Parameters stay
Parameters; `requires_grad` is kept (not `.grad`). The same rebuild serves the pickle codec: tensors inside
pickled modules and optimizers travel out of band.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError
from ..fingerprint_libs import tensor_as_numpy
from .npy import raw_bytes

if TYPE_CHECKING:
    from .streams import Sink, Source


class TorchCodec:
    name = "torch"
    version = 2  # 2: a permuted dense tensor's strides (a reader of 1 would take its bytes as C order)
    safe = True

    def accepts(self, value: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and plain_tensor(value)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        meta = tensor_meta(value)
        sink.put(tensor_bytes(value))
        return meta

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        tensor = _empty(meta)
        sources[0].readinto(raw_bytes(_as_numpy(_in_memory_order(tensor))))
        return _finish(tensor, meta)


def plain_tensor(value: Any) -> bool:
    """A dense tensor or Parameter, nothing attached: what raw bytes plus meta give back exactly."""
    import torch

    return (type(value) in (torch.Tensor, torch.nn.Parameter) and value.layout == torch.strided
            and not (value.is_quantized or value.is_nested or value.is_meta) and not value.__dict__)


def tensor_meta(tensor: Any) -> dict[str, Any]:
    import torch

    meta = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
            "device": str(tensor.device), "requires_grad": tensor.requires_grad,
            "parameter": type(tensor) is torch.nn.Parameter}
    if _permuted(tensor):
        meta["stride"] = list(tensor.stride())
    return meta


def _order(stride: Sequence[int]) -> list[int]:
    """Dimensions from the outermost in memory to the innermost."""
    return sorted(range(len(stride)), key=lambda d: -stride[d])


def _permuted(tensor: Any) -> bool:
    """Dense and without gaps, but not in C order: a permutation of the dimensions makes it contiguous."""
    return not tensor.is_contiguous() and tensor.permute(_order(tensor.stride())).is_contiguous()


def _in_memory_order(tensor: Any) -> Any:
    return tensor.permute(_order(tensor.stride())) if _permuted(tensor) else tensor


def tensor_bytes(tensor: Any) -> Any:
    """The tensor's elements in memory order (C order for any but a permuted dense tensor) as a flat byte
    array: a view when it is dense on the CPU."""
    import numpy as np

    return raw_bytes(np.ascontiguousarray(tensor_as_numpy(_in_memory_order(tensor))))


def _as_numpy(tensor: Any) -> Any:
    return tensor_as_numpy(tensor)


def _dtype(name: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise DecodeError(f"torch here has no dtype {name!r}; upgrade torch to replay this tensor")
    return dtype


def _empty(meta: dict[str, Any]) -> Any:
    import torch

    dtype = _dtype(meta["dtype"])
    if "stride" not in meta:
        return torch.empty(meta["shape"], dtype=dtype)
    # Checked on the meta device (no memory) first: crafted strides could span far more than the data.
    if not _permuted(torch.empty_strided(meta["shape"], meta["stride"], dtype=dtype, device="meta")):
        raise DecodeError(f"tensor strides {meta['stride']} of shape {meta['shape']} are not a dense layout: the "
                          "log was modified")
    return torch.empty_strided(meta["shape"], meta["stride"], dtype=dtype)


def _finish(tensor: Any, meta: dict[str, Any]) -> Any:
    import torch

    device = meta["device"]
    if device != "cpu":
        if _has_device(device):
            tensor = tensor.to(device)
        else:
            print(f"durable_nb: a tensor recorded on {device} is restored on the CPU (no {device} here)",
                  file=sys.stderr)
    if meta["parameter"]:
        return torch.nn.Parameter(tensor, requires_grad=meta["requires_grad"])
    return tensor.requires_grad_(True) if meta["requires_grad"] else tensor


def _has_device(device: str) -> bool:
    import torch

    try:
        where = torch.device(device)
        if where.type == "cuda":
            return bool(torch.cuda.is_available()) and (where.index or 0) < torch.cuda.device_count()
        module = getattr(torch, where.type, None)
        available = getattr(module, "is_available", None)
        return bool(available()) if available is not None else False
    except (RuntimeError, AssertionError):
        return False


def reduce_tensor(tensor: Any) -> tuple[Any, ...]:
    """The pickle codec's reduction of a plain tensor: its bytes as an out-of-band buffer."""
    import pickle  # deferred for start-up speed: loaded already, a tensor is being pickled

    return rebuild_tensor, (pickle.PickleBuffer(tensor_bytes(tensor)), tensor_meta(tensor))


def rebuild_tensor(data: Any, meta: dict[str, Any]) -> Any:
    """From the pickle codec's out-of-band buffer (a writable bytearray), adopted without a copy."""
    import torch

    if not len(memoryview(data)):
        return _finish(_empty(meta), meta)
    tensor = torch.frombuffer(data, dtype=_dtype(meta["dtype"]))
    if "stride" in meta:  # dense: the strides span exactly the buffer's elements
        tensor = tensor.as_strided(meta["shape"], meta["stride"])
    return _finish(tensor.reshape(meta["shape"]), meta)
