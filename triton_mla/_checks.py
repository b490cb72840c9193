"""Validation at the API boundary: shapes, dtypes and devices only, so no check ever syncs the GPU.

Checks on values (lengths, page ids) need the host to read device memory; they run only when
``TRITON_MLA_CHECK=1`` is set (the tests set it). Without it the kernels clamp what they read.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import torch

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_GRID_YZ = 65535  # CUDA's limit on a launch grid's second and third dimensions


def on_tensor_device(name: str, position: int):
    """Decorate a public function so that its kernels launch on the GPU of its argument ``name`` (at
    ``position`` when passed positionally). Triton launches on the *current* CUDA device and its current stream,
    whatever device the pointers are on; a model spread over GPUs in one process (``device_map="auto"``) calls
    layers on cuda:1 while cuda:0 is current, which would run the kernels on the wrong GPU. Where the tensor's GPU
    is already current (every engine's one-process-a-GPU case) or the tensor is not on a GPU, the call goes straight
    through."""
    def decorate(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            t = args[position] if len(args) > position else kwargs.get(name)
            index = _cuda_index(t)
            if index is not None and index != torch.cuda.current_device():
                with torch.cuda.device(index):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        return call
    return decorate


def _cuda_index(t):
    """The GPU index of a CUDA tensor, else None."""
    return t.get_device() if isinstance(t, torch.Tensor) and t.is_cuda else None


def value_checks_enabled(device=None) -> bool:
    """Whether the checks of values (lengths, page ids, cu_seqlens) run: TRITON_MLA_CHECK=1 always, =0 never;
    unset, where the values already lie on the host (a CPU ``device``), since reading them there costs no sync.
    On a GPU they read device memory, a sync serving cannot afford (and CUDA graph capture forbids)."""
    env = os.environ.get("TRITON_MLA_CHECK", "")
    if env != "":
        return env != "0"
    return device is not None and torch.device(device).type == "cpu"


def batch_invariant_default() -> bool:
    """``batch_invariant=None`` means the environment's choice: TRITON_MLA_BATCH_INVARIANT=1."""
    return os.environ.get("TRITON_MLA_BATCH_INVARIANT", "0") not in ("", "0")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _dtype_name(dtypes):
    if isinstance(dtypes, torch.dtype):
        return str(dtypes).replace("torch.", "")
    return " or ".join(_dtype_name(d) for d in dtypes)


def check_tensor(x, name, *, ndim=None, dtype=None, shape=None, device=None, last_contiguous=False):
    """Raise TypeError/ValueError naming ``name`` unless ``x`` is a tensor of the given form.

    ``shape`` may hold None for a free dimension.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    # runs a few times on every decode call: the common (passing) case takes the cheapest comparisons first
    if dtype is not None and x.dtype is not dtype:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if x.dtype not in allowed:
            raise TypeError(f"{name}: expected dtype {_dtype_name(allowed)}, got {_dtype_name(x.dtype)}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None and x.shape != tuple(shape):  # torch.Size is a tuple; a None entry takes the slow path
        if x.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, x.shape, strict=True)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name}: expected shape {want}, got {list(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {x.device}")
    if last_contiguous and x.dim() > 0 and x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {x.stride()}")
    return x


def check_runnable(device: torch.device, name="q"):
    """Kernels need a CUDA device, or the Triton interpreter for CPU tensors."""
    if device.type == "cuda":
        return
    if device.type == "cpu" and interpreting():
        return
    raise ValueError(
        f"{name}: tensors are on {device}; the kernels run on a CUDA device "
        "(or on the CPU under the Triton interpreter, TRITON_INTERPRET=1)"
    )


def check_device(device, name="device") -> torch.device:
    """A device argument as torch.device: a string torch cannot parse, or CUDA on a torch that sees no GPU, raises
    ValueError naming ``name`` (torch's own errors were a RuntimeError and an AssertionError)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: not a device: {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: {device!r}, but this torch sees no CUDA GPU (on a machine without one, pass "
                         "device='cpu')")
    return dev


def check_grid_yz(count, name, what):
    """A count that a kernel puts on grid axis 1 or 2: past CUDA's limit the launch would fail, so say so here."""
    if count > MAX_GRID_YZ:
        raise ValueError(f"{name}: at most {MAX_GRID_YZ} {what} a call (CUDA's grid limit), got {count}; "
                         "split the call")


def check_scale(value, name, default=None) -> float:
    """A softmax scale: ``default`` where None is given, else a finite real number (Python or NumPy), as a float."""
    if value is None and default is not None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite scale, got {value}")
    if abs(value) * 1.4426950408889634 > 3.4028234663852886e38:  # the kernels take scale * log2(e) as float32
        raise ValueError(f"{name}: {value} overflows float32 in the kernels (|scale| must be below 2.35e38)")
    return float(value)


def check_int(value, name, *, low=None, high=None) -> int:
    """An integer (Python or NumPy; not a bool) within [low, high], as a Python int (what kernels are launched
    with): callers keep the returned value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # (NumPy's bool is not Integral)
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected a value in [{low}, {high}], got {value}")
    return value


def check_bool(value, name) -> bool:
    """A flag: a Python or NumPy bool (not an int, a string or a tensor, whose truth would be taken silently)."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
