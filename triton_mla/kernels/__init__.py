"""Triton kernels: one file per kernel family. They check nothing; ``triton_mla.api`` validates."""
