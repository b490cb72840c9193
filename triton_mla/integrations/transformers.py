"""Run Hugging Face DeepSeek-V2/V3 models' attention through ``MLAAttention`` and a paged latent cache.

``patch_model(model)`` swaps every attention module of a ``DeepseekV3ForCausalLM`` /
``DeepseekV2ForCausalLM`` (or their base models) for :class:`HFMLAAttention`, an ``MLAAttention`` that keeps
the same parameters (same tensors, same names: ``save_pretrained`` and ``load_state_dict`` are unchanged)
and takes Hugging Face's attention call. ``model.generate()`` then works unchanged:

* a forward pre-hook on the base model plans each step once for all layers: one sequence per batch row,
  tokens masked out by the 2-D ``attention_mask`` (left padding) are skipped, not cached;
* the latents go to a :class:`triton_mla.PagedLatentCache` owned by the patch (``model.triton_mla``),
  pages handed out by its allocator; decode runs absorbed over it, prefill in MHA mode;
* Hugging Face's own cache object only counts tokens: each layer appends one key element per token and
  zero-width values to it, so its ``get_seq_length()`` (and so generate's positions and masks) stay
  right, for 2 bytes per token and layer (bf16).

A new generation (a cache of length 0, or a new cache object) starts over: all pages are freed. Not
supported: beam search and other cache reordering, cropping the cache (assisted decoding), custom 4-D
attention masks (only padding, through the 2-D mask, is honoured).
"""

from __future__ import annotations

import importlib
import inspect
import math
import weakref

import torch

from ..cache import FP8_DTYPES, PagedLatentCache
from ..layers.mla import MLAAttention
from ..layers.rope import RotaryEmbedding
from ..serving import MLABackend

__all__ = ["HFMLAAttention", "MODELS", "PagedMLARuntime", "cache_argument", "patch_model", "unpatch_model"]

# model_type -> (module, attention class): the one table of what can be patched
MODELS = {
    "deepseek_v3": ("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3Attention"),
    "deepseek_v2": ("transformers.models.deepseek_v2.modeling_deepseek_v2", "DeepseekV2Attention"),
}


class PagedMLARuntime:
    """Per-model state of a patched model: the paged latent cache, the planner and the live sequences.

    cache: :class:`PagedLatentCache` (one layer per decoder layer); backend: :class:`MLABackend`;
    plan: the current step's :class:`AttentionPlan` (set by the pre-hook, read by every layer).
    """

    def __init__(self, config, device, dtype, num_blocks, page_size, cache_dtype, max_batch_size, max_seq_len,
                 max_num_tokens):
        self.config = config
        self.cache = PagedLatentCache(num_blocks, page_size, config.kv_lora_rank, config.qk_rope_head_dim,
                                      num_layers=config.num_hidden_layers, dtype=cache_dtype or dtype, device=device)
        self.backend = MLABackend(max_batch_size, max_num_tokens, math.ceil(max_seq_len / page_size), page_size,
                                  device=device, num_blocks=num_blocks)
        self.device = torch.device(device)
        self.seq_ids: list[int] = []
        self._next_id = 0
        self._session = None  # weakref to the Hugging Face cache object of the running generation
        self._pending_session = False
        self._hf_len = 0  # tokens Hugging Face's cache will count after the current step
        self.plan = None
        self.index = None  # (T,) int64: positions in the flattened (b * s) batch of the tokens attended, or None
        self.shape = None
        self.hook = None  # the base model's forward pre-hook handle

    @property
    def bytes_per_token(self) -> int:
        """Latent cache bytes per token, all layers (1152 per layer in bf16 at DeepSeek's dims, 656 in FP8)."""
        return self.cache.bytes_per_token * self.config.num_hidden_layers

    def reset(self, batch_size: int):
        for sid in self.seq_ids:
            self.cache.allocator.free(sid)
        self.seq_ids = list(range(self._next_id, self._next_id + batch_size))
        self._next_id += batch_size
        for sid in self.seq_ids:
            self.cache.allocator.allocate(sid, 0)
        self._hf_len = 0

    def begin_step(self, b: int, s: int, attention_mask, past, use_cache: bool):
        """Plan a forward of b rows of s tokens (called once per model forward, before any layer)."""
        past_len = past.get_seq_length() if past is not None else 0
        known = past is not None and self._session is not None and self._session() is past
        if past_len == 0 or not known or b != len(self.seq_ids):
            if past_len:
                raise NotImplementedError("patch_model: the model was given a cache filled without the patch (or "
                                          "reordered, or after a step that failed): start the generation over")
            self.reset(b)
            self._session = weakref.ref(past) if past is not None else None
            self._pending_session = past is None and use_cache  # the model makes its cache: adopt it in a layer
        elif past_len != self._hf_len:
            raise NotImplementedError(f"patch_model: the cache holds {past_len} tokens, the patch expected "
                                      f"{self._hf_len}; cropping or editing the cache is not supported")
        valid = None
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and s > 0:
            new = attention_mask[:, -s:]
            if new.shape == (b, s) and not bool(new.all()):  # one small sync, only when a mask is given
                valid = new.bool().cpu()
        q_lens = [s] * b if valid is None else valid.sum(1).tolist()
        alloc = self.cache.allocator
        ctx = [alloc.seqlen(sid) for sid in self.seq_ids]
        try:
            for sid, n in zip(self.seq_ids, q_lens, strict=True):
                alloc.allocate(sid, n)
            tables = [alloc.pages(sid) for sid in self.seq_ids]
            self.plan = self.backend.plan(q_lens, ctx, tables)
        except Exception:
            # out of pages or past the planner's limits part-way: no half-grown sequences stay behind, and the
            # cache the model holds is no longer the patch's (its next use says to start the generation over)
            self.reset(0)
            self._session = None
            self._pending_session = False
            raise
        self._hf_len = past_len + s
        self.index = None
        if valid is not None:
            idx = torch.nonzero(valid.reshape(-1)).reshape(-1)
            self.index = idx.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" \
                else idx.to(self.device)
        self.shape = (b, s)

    def adopt(self, past):
        if self._pending_session and past is not None:
            self._session = weakref.ref(past)
            self._pending_session = False


class HFMLAAttention(MLAAttention):
    """``MLAAttention`` with Hugging Face's attention signature, reading its plan from the model's runtime.

    forward(hidden_states (b, s, hidden), position_embeddings, attention_mask, past_key_values, **kwargs)
    -> (attn_output (b, s, hidden), None). Positions, masks and cache come from the runtime's plan.
    """

    runtime: PagedMLARuntime

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        # (Hugging Face renamed the cache argument ``cache`` in transformers 5.24; older versions pass
        # ``past_key_values``)
        past_key_values = _hf_cache(past_key_values, kwargs.get("cache"))
        rt = self.runtime
        b, s, hidden = hidden_states.shape
        if rt.shape != (b, s):
            raise RuntimeError(f"HFMLAAttention: no plan for a ({b}, {s}) batch; call the patched model, not "
                               "the attention module, so that its pre-hook plans the step")
        if self.layer_idx == 0:
            rt.adopt(past_key_values)
        x = hidden_states.reshape(b * s, hidden)
        if rt.index is not None:
            x = x.index_select(0, rt.index)
        out = MLAAttention.forward(self, x, rt.plan, rt.cache.k_cache(self.layer_idx))
        if rt.index is not None:
            out = out.new_zeros(b * s, hidden).index_copy_(0, rt.index, out)
        if past_key_values is not None:
            # Hugging Face's cache only counts tokens: one key element per token (it reads an empty cache as
            # length 0), zero-width values
            past_key_values.update(hidden_states.new_zeros(b, 1, s, 1), hidden_states.new_zeros(b, 1, s, 0),
                                   self.layer_idx)
        return out.view(b, s, hidden), None


def _hf_cache(*candidates):
    """The Hugging Face cache object among its argument names' values (``past_key_values``, or ``cache`` from
    transformers 5.24 on), or None."""
    return next((c for c in candidates if c is not None), None)


def cache_argument(model) -> str:
    """The name under which the installed transformers passes a cache to the forward of ``model`` (a model or its
    class) and returns it: ``cache`` from 5.24 on, ``past_key_values`` before."""
    cls = model if isinstance(model, type) else type(model)
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _base_model(model):
    for name in ("model", "base_model"):
        inner = getattr(model, name, None)
        if inner is not None and inner is not model and hasattr(inner, "layers"):
            return inner
    if hasattr(model, "layers"):
        return model
    raise TypeError(f"model: no decoder layers found in {type(model).__name__}")


def _pre_hook(runtime):
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = ids.shape if ids is not None else embeds.shape[:2]
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(runtime.config, "use_cache", True)
        runtime.begin_step(shape[0], shape[1], kwargs.get("attention_mask", args[1] if len(args) > 1 else None),
                           _hf_cache(kwargs.get("past_key_values"), kwargs.get("cache")), bool(use_cache))
        return None

    return hook


def patch_model(model, *, max_batch_size: int = 8, max_seq_len: int = 4096, page_size: int = 64,
                num_blocks: int | None = None, cache_dtype=None, max_num_tokens: int | None = None,
                prefill_mode: str = "auto"):
    """Make a Hugging Face DeepSeek-V2/V3 model run attention with triton_mla's kernels; returns ``model``.

    max_batch_size: most rows per forward. max_seq_len: longest sequence (prompt + generated, padding
    excluded). page_size: tokens per cache page. num_blocks: cache pages (default: enough for
    max_batch_size sequences of max_seq_len). cache_dtype: the latent cache's dtype, default the model's;
    "fp8" for FlashMLA's 656-byte FP8 layout (kv_lora_rank 512, rope 64 only). max_num_tokens: most tokens
    per forward (default max_batch_size * max_seq_len). prefill_mode: see ``MLAAttention``.

    The model keeps its parameters (the same tensors); ``model.triton_mla`` is the
    :class:`PagedMLARuntime` (cache, allocator, planner).
    """
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in MODELS:
        raise ValueError(f"model: model_type {model_type!r} is not supported; supported: {sorted(MODELS)}")
    if getattr(model, "triton_mla", None) is not None:
        raise ValueError("model: already patched")
    module_name, class_name = MODELS[model_type]
    attn_cls = getattr(importlib.import_module(module_name), class_name)
    base = _base_model(model)
    # the cache lives with the attention layers (one cache for all of them, so they must share one device; the
    # embeddings may sit elsewhere, e.g. offloaded)
    attn_params = [p for layer in base.layers for p in layer.self_attn.parameters()]
    devices = sorted({str(p.device) for p in attn_params})
    if len(devices) > 1:
        raise ValueError(f"model: its attention layers are on {', '.join(devices)}; patch_model keeps one paged "
                         "cache for all of them, so they must share one device (a device_map over several GPUs "
                         "is not supported)")
    param = attn_params[0] if attn_params else next(model.parameters())
    device, dtype = param.device, param.dtype
    if cache_dtype is not None and cache_dtype not in FP8_DTYPES and cache_dtype != dtype:
        # (the kernels read a 16/32-bit cache in the queries' dtype, i.e. the model's)
        raise ValueError(f"cache_dtype: a {cache_dtype} cache needs a {cache_dtype} model, this one is {dtype}; "
                         "pass None (the model's dtype) or 'fp8'")
    num_pages = math.ceil(max_seq_len / page_size)
    if num_blocks is None:
        num_blocks = max_batch_size * num_pages
    runtime = PagedMLARuntime(config, device, dtype, num_blocks, page_size, cache_dtype, max_batch_size, max_seq_len,
                              max_num_tokens or max_batch_size * max_seq_len)
    for decoder_layer in base.layers:
        old = decoder_layer.self_attn
        if not isinstance(old, attn_cls):
            raise TypeError(f"model: expected {class_name} attention modules, found {type(old).__name__}")
        new = HFMLAAttention.from_config(config, layer_idx=old.layer_idx, prefill_mode=prefill_mode, device="meta")
        new.load_state_dict(old.state_dict(), strict=True, assign=True)  # the same tensors: no copy
        new.rotary_emb = RotaryEmbedding(new.qk_rope_head_dim, new.rope_parameters, new.max_position_embeddings,
                                         new.rotary_emb.layout).to(device)
        new.train(old.training)
        new.runtime = runtime
        decoder_layer.self_attn = new
    runtime.hook = base.register_forward_pre_hook(_pre_hook(runtime), with_kwargs=True)
    model.triton_mla = runtime
    return model


def unpatch_model(model):
    """Undo :func:`patch_model`: Hugging Face's attention modules back, holding the same tensors; frees the cache."""
    runtime = getattr(model, "triton_mla", None)
    if runtime is None:
        raise ValueError("model: not patched")
    module_name, class_name = MODELS[model.config.model_type]
    attn_cls = getattr(importlib.import_module(module_name), class_name)
    for decoder_layer in _base_model(model).layers:
        new = decoder_layer.self_attn
        with torch.device("meta"):
            old = attn_cls(model.config, new.layer_idx)
        old.load_state_dict(new.state_dict(), strict=True, assign=True)
        old.train(new.training)
        decoder_layer.self_attn = old
    runtime.hook.remove()
    del model.triton_mla
    return model
