"""Integrations with model libraries: ``triton_mla.integrations.transformers.patch_model`` (Hugging Face).

Imported on demand: this package does not import transformers itself.
"""

__all__ = ["patch_model"]


def patch_model(model, **cache_options):
    """See :func:`triton_mla.integrations.transformers.patch_model`."""
    from .transformers import patch_model as _patch

    return _patch(model, **cache_options)
