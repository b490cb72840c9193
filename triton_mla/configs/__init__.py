"""Launch configs as data: one JSON file per GPU family, the only place tile sizes live.

``decode_config(rows, dtype, device)`` picks the entry for a shape bucket (rows = s_q * h_q) from the
file of the device's family, chosen by compute capability. A GPU of an unknown family gets the
smallest family (99 KB of shared memory), which fits every GPU Triton supports. An entry with ``min_triton``
("3.7") is skipped under an older Triton (a kernel whose build is fast only from that version on).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
from pathlib import Path

import torch
import triton

CONFIG_DIR = Path(__file__).parent
logger = logging.getLogger("triton_mla")

# compute capability -> family file
FAMILIES = {
    (8, 0): "sm80",
    (8, 6): "sm86",
    (8, 7): "sm86",
    (8, 9): "sm89",
    (9, 0): "sm90",
    (12, 0): "sm120",
    (12, 1): "sm120",
}
SAFE_DEFAULT = "sm86"


def family_names():
    return sorted({*FAMILIES.values()})


@functools.cache
def load_family(name: str) -> dict:
    with open(CONFIG_DIR / f"{name}.json") as f:
        return json.load(f)


@functools.cache
def family_of(device_index: int | None) -> str:
    """The family file for a CUDA device (None: the CPU interpreter)."""
    override = os.environ.get("TRITON_MLA_CONFIG_FAMILY")
    if override:
        return override
    if device_index is None:
        return SAFE_DEFAULT
    cap = torch.cuda.get_device_capability(device_index)
    return FAMILIES.get(cap, SAFE_DEFAULT)


def triton_at_least(version: str, have: str | None = None) -> bool:
    """Whether Triton ``have`` (default: the installed one; major.minor, any suffix) is at least ``version``."""
    have = have or triton.__version__
    return tuple(int(x) for x in re.findall(r"\d+", have)[:2]) >= tuple(int(x) for x in version.split("."))


def pick(entries, rows: int, dtype: torch.dtype) -> dict:
    """The first entry of the dtype class whose ``max_rows`` bucket holds ``rows`` (skipping those whose
    ``min_triton`` this Triton is older than)."""
    kind = "float32" if dtype == torch.float32 else "16bit"
    candidates = [e for e in entries if e.get("dtype", kind) == kind
                  and triton_at_least(e.get("min_triton", "0.0"))]
    for entry in candidates:
        if entry["max_rows"] is None or rows <= entry["max_rows"]:
            return entry
    return candidates[-1]


_overrides: dict = {}


@contextlib.contextmanager
def overridden(**fields):
    """Temporarily replace config fields (tests use it to force many splits on small inputs)."""
    saved = dict(_overrides)
    _overrides.update(fields)
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)


def tuned_dir() -> Path:
    return Path(os.environ.get("TRITON_MLA_TUNED_DIR", Path.home() / ".cache" / "triton_mla"))


def sanitize(device_name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in device_name).strip("_").lower()


@functools.cache
def device_configs(device_index: int | None) -> dict:
    """The tuned file for this device if ``python -m triton_mla tune`` wrote one, else its family's."""
    if device_index is not None:
        name = torch.cuda.get_device_name(device_index)
        path = tuned_dir() / (sanitize(name) + ".json")
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("device") == name:
                logger.info("triton_mla: launch configs from %s (tuned for %s)", path, name)
                return doc
    fam = family_of(device_index)
    logger.info("triton_mla: launch configs from %s", CONFIG_DIR / f"{fam}.json")
    return load_family(fam)


def kernel_config(section: str, rows: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The entry of ``section`` ("decode", "prefill", ...) for ``rows`` and ``dtype`` on ``device``.

    A tuned file that lacks the section falls back to the family file's.
    """
    index = device.index if device.type == "cuda" else None
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()  # not cached: the current device can change
    entry = _entry(section, rows, dtype, index)
    return {**entry, **_overrides} if _overrides else entry


@functools.lru_cache(maxsize=1024)
def _entry(section: str, rows: int, dtype: torch.dtype, device_index: int | None) -> dict:
    """``kernel_config``'s pick before overrides, cached: it runs on every decode call, and what it reads
    (``device_configs``, ``load_family``) is itself cached for the life of the process. Overrides are applied
    by the caller on each call, so ``overridden`` takes effect at once."""
    doc = device_configs(device_index)
    if section not in doc:
        doc = load_family(family_of(device_index))
    return pick(doc[section], rows, dtype)


def decode_config(rows: int, dtype: torch.dtype, device: torch.device) -> dict:
    return kernel_config("decode", rows, dtype, device)


@functools.cache
def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few parts exercise the split path
    return torch.cuda.get_device_properties(device).multi_processor_count


def update_catch_all(family: str, section: str, fields: dict, tuned_on: str) -> Path:
    """Write ``fields`` into the 16-bit catch-all entry of ``section`` in a family file (the sweeps' winners).

    The file is read just before it is written, so other sections edited meanwhile are kept."""
    path = CONFIG_DIR / f"{family}.json"
    doc = json.loads(path.read_text())
    # (the catch-all every Triton takes: not one that only a newer Triton picks)
    target = next(e for e in doc[section] if e["dtype"] == "16bit" and e["max_rows"] is None
                  and "min_triton" not in e)
    target.update(fields)
    target["tuned_on"] = tuned_on
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return path

