"""Triton helpers for the FP8 latent layout (``triton_mla.fp8`` is the spec): quantize and read back.

A token's row is addressed by ``k_ptr`` (a uint8 pointer to the cache) plus its byte offset. The e4m3
values are turned into float16 with two shifts (e4m3fn is float16 with 4 fewer exponent bits and 7
fewer mantissa bits, so the result is exact and equals value * 2**-8); the caller multiplies by
``scale * 256``, which these helpers return already folded. No fp8 instructions are used, so this
runs on sm80 and in the interpreter, where Triton has no e4m3 conversions.
"""

import triton
import triton.language as tl

NOPE = tl.constexpr(512)
ROPE = tl.constexpr(64)
GROUP = tl.constexpr(128)
SCALE_BYTE = tl.constexpr(512)
ROPE_BYTE = tl.constexpr(528)


@triton.jit
def fp8_to_f16(x):
    """e4m3fn bytes -> float16 holding value * 2**-8, exactly (NaN bytes are never written)."""
    b = x.to(tl.uint16)
    bits = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
    return bits.to(tl.float16, bitcast=True)


@triton.jit
def load_fp8_group(k_ptr, tok_off, tok_ok, G: tl.constexpr, DTYPE: tl.constexpr):
    """Group G (values [128 G, 128 G + 128)) of each token: ([BLOCK_N, 128] in DTYPE, [BLOCK_N] fp32 factor).

    value = tile * factor exactly; masked tokens give 0 and factor 0. Scaling the dot products by the
    factor per token (QK: columns, PV: rows of P) keeps the dequantize off the tile itself.
    """
    offs = tl.arange(0, GROUP)
    x = tl.load(k_ptr + tok_off[:, None] + (offs + G * GROUP)[None, :], mask=tok_ok[:, None], other=0)
    scale = tl.load((k_ptr + tok_off + SCALE_BYTE + 4 * G).to(tl.pointer_type(tl.float32)), mask=tok_ok,
                    other=0.0)
    return fp8_to_f16(x).to(DTYPE), scale * 256.0


@triton.jit
def pv_excess(factor):
    """The factor e >= 1 by which P V's float16 operand P * factor must be divided so that it stays within
    2**14 (then dot(P * (factor / e), tile) * e is the product): max(factor) / 2**14 where the [BLOCK_N] factors
    pass 2**14, else 1. With the factors these helpers return (scale * 256), e is 1 for every latent group below
    448 * 64 = 28672 in magnitude; above 57344 the operand would overflow float16 without it. Scales are powers
    of two (FlashMLA's quantizer), so e is one too and dividing by it is exact."""
    return tl.maximum(tl.max(factor, axis=0) * (1.0 / 16384.0), 1.0)


@triton.jit
def load_fp8_rope(k_ptr, tok_off, tok_ok, DTYPE: tl.constexpr):
    """The 64 bf16 rope values of each token: [BLOCK_N, 64] in DTYPE (masked tokens give 0)."""
    offs = tl.arange(0, ROPE)
    ptrs = (k_ptr + tok_off[:, None] + ROPE_BYTE).to(tl.pointer_type(tl.bfloat16)) + offs[None, :]
    return tl.load(ptrs, mask=tok_ok[:, None], other=0.0).to(DTYPE)


@triton.jit
def load_fp8_nope(k_ptr, tok_off, tok_ok, DTYPE: tl.constexpr):
    """All 512 dequantized values of each token: [BLOCK_N, 512] in DTYPE (for kernels that want one tile)."""
    offs = tl.arange(0, NOPE)
    x = tl.load(k_ptr + tok_off[:, None] + offs[None, :], mask=tok_ok[:, None], other=0)
    scale_ptrs = (k_ptr + tok_off[:, None] + SCALE_BYTE).to(tl.pointer_type(tl.float32)) + \
        tl.arange(0, 4)[None, :]
    scale = tl.load(scale_ptrs, mask=tok_ok[:, None], other=0.0) * 256.0
    v = tl.reshape(fp8_to_f16(x).to(tl.float32), (x.shape[0], 4, GROUP)) * scale[:, :, None]
    return tl.reshape(v, (x.shape[0], NOPE)).to(DTYPE)


@triton.jit
def pow2_ceil(s):
    """The smallest power of two >= s, for positive normal fp32 s, from its exponent bits (exact)."""
    bits = s.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    return (exponent << 23).to(tl.float32, bitcast=True)


@triton.jit
def f32_to_e4m3(v):
    """fp32 with |v| <= 448 -> e4m3fn byte, rounded to nearest even (as torch's cast)."""
    bits = v.to(tl.uint32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    af = a.to(tl.float32, bitcast=True)
    # normal e4m3 (|v| >= 2^-6): round the mantissa to 3 bits (nearest even), rebias the exponent 127 -> 7
    r = a + 0x7FFFF + ((a >> 20) & 1)
    normal = (r >> 20) - (120 << 3)
    # subnormal: multiples of 2^-9; adding 2^23 makes the fp32 adder round to an integer, nearest even
    # (8, the rounding up of the largest subnormal, is also the byte of the smallest normal)
    sub = ((af * 512.0 + 8388608.0) - 8388608.0).to(tl.uint32)
    out = tl.where(af < 0.015625, sub, normal) | sign
    return out.to(tl.uint8)
