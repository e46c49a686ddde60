"""Fused attention for ONNX Runtime artifacts: diffusers ``Attention`` layers exported as ONNX Runtime's
``com.microsoft.MultiHeadAttention`` contrib op, whose CPU kernel runs flash attention (no (S × S) score matrix per
head: at 64 × 64 latents that matrix alone is 2 × 8 × 4096² floats = 1 GiB per attention layer). The CUDA provider
has the op too.

How: while a module is exported for ONNX Runtime, every diffusers ``Attention`` whose features this covers gets
:class:`FusedAttnProcessor` (diffusers' attention-processor API). The processor computes the projections as
diffusers' own ``AttnProcessor2_0`` does and calls one custom torch op, ``contextdiff::multi_head_attention``
(eager: ``scaled_dot_product_attention``, so the module computes the same thing), which the exporter translates
into the contrib op. The standard flavour never installs it: its attention stays in ``ai.onnx`` ops (MatMul,
Softmax), inside TensorRT's support matrix. The original processors come back after the export.

The inflated video UNet's sparse-causal self-attention (``contextdiff_ref.video.unet``) gets the same op through
:class:`FusedSparseCausalAttnProcessor`: its keys and values are frame 0's and the previous frame's tokens, 2N of them
per query frame, which the contrib op takes as a longer key sequence.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import onnx
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from contextdiff_ref.video.unet import SparseCausalAttnProcessor

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
CONTRIB_OP = "MultiHeadAttention"


@torch.library.custom_op("contextdiff::multi_head_attention", mutates_args=())
def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, H·d), (B, L, H·d), (B, L, H·d) -> (B, S, H·d): softmax(q kᵀ / √d) v per head, no mask."""
    b, s, inner = query.shape
    d = inner // num_heads
    q, k, v = (x.view(b, -1, num_heads, d).transpose(1, 2) for x in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, inner)


@multi_head_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int) -> torch.Tensor:
    return torch.empty_like(query)


def _infer_output(ctx: onnx.shape_inference.InferenceContext) -> None:
    """output: the query's type and shape, its last dim the value's (B, S, H·d_v)."""
    out = onnx.TypeProto()
    out.CopyFrom(ctx.get_input_type(0))
    value = ctx.get_input_type(2)
    if out.tensor_type.HasField("shape") and value.tensor_type.HasField("shape"):
        out.tensor_type.shape.dim[-1].CopyFrom(value.tensor_type.shape.dim[-1])
    ctx.set_output_type(0, out)


def _contrib_schema() -> onnx.defs.OpSchema:
    """The part of ONNX Runtime's ``com.microsoft.MultiHeadAttention`` (version 1) signature used here: query, key,
    value (B, S|L, H·d) -> output (B, S, H·d), attribute num_heads; with type and shape inference. onnx ships no
    schemas for contrib ops, and the exporter, the checker and shape inference need one."""
    schema = onnx.defs.OpSchema
    param = lambda name: schema.FormalParameter(name, "T")  # noqa: E731
    contrib = schema(
        "MultiHeadAttention", MS_DOMAIN, 1, inputs=[param("query"), param("key"), param("value")], outputs=[param("output")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[schema.Attribute("num_heads", schema.AttrType.INT, "number of attention heads", required=True)],
    )  # fmt: skip
    contrib.set_type_and_shape_inference_function(_infer_output)
    return contrib


@contextlib.contextmanager
def contrib_schemas() -> Iterator[None]:
    """Within the block onnx knows the contrib op (checker, shape inference); outside it, onnx is as it was, so other
    code in the process that checks ONNX Runtime graphs never meets this partial schema."""
    if onnx.defs.has(CONTRIB_OP, 1, MS_DOMAIN):
        yield
        return
    onnx.defs.register_schema(_contrib_schema())
    try:
        yield
    finally:
        onnx.defs.deregister_schema(CONTRIB_OP, 1, MS_DOMAIN)


def _onnx_multi_head_attention(query, key, value, num_heads: int):
    """The ONNX translation: one contrib node (its scale defaults to 1/√d, as scaled_dot_product_attention's)."""
    from onnxscript._internal.values import Op, Opset

    return Op(Opset(MS_DOMAIN, 1), CONTRIB_OP, _contrib_schema())(query, key, value, num_heads=num_heads)


TRANSLATION_TABLE = {torch.ops.contextdiff.multi_head_attention.default: _onnx_multi_head_attention}


class FusedAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` for the layers :func:`fused_processor` gives it to, with the attention itself one op."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:  # fmt: skip
        if attention_mask is not None:
            raise NotImplementedError("FusedAttnProcessor: attention masks are not fused (export this module's standard flavour)")
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:  # (B, C, H, W) -> (B, H·W, C), as in the VAE's mid-block attention
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        out = multi_head_attention(attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
        if spatial:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class FusedSparseCausalAttnProcessor(SparseCausalAttnProcessor):
    """The sparse-causal processor with its attention one op (the contrib op's scale is 1/√d: :func:`fused_processor` checks the layer's)."""

    def attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return multi_head_attention(query, key, value, attn.heads)


def _default_scale(attn: Attention) -> bool:
    return abs(attn.scale - (attn.inner_dim // attn.heads) ** -0.5) <= 1e-12 * attn.scale


def fused_processor(attn: Attention) -> FusedAttnProcessor | FusedSparseCausalAttnProcessor | None:
    """The fused processor that computes exactly what this layer's processor does, or None where none does."""
    if type(attn.processor) is SparseCausalAttnProcessor:
        return FusedSparseCausalAttnProcessor(attn.processor.num_frames) if _default_scale(attn) else None
    plain = attn.spatial_norm is None and attn.norm_q is None and attn.norm_k is None and attn.added_kv_proj_dim is None
    stock = type(attn.processor).__name__ in ("AttnProcessor2_0", "AttnProcessor")
    return FusedAttnProcessor() if plain and stock and not attn.is_causal and not attn.fused_projections else None


@contextlib.contextmanager
def fused_attention(module: torch.nn.Module) -> Iterator[int]:
    """Within the block, every supported diffusers ``Attention`` in ``module`` uses :class:`FusedAttnProcessor`;
    yields how many layers were switched. The previous processors are restored on exit."""
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    previous = [layer.processor for layer in layers]
    switched = 0
    try:
        for layer in layers:
            if (fused := fused_processor(layer)) is not None:
                layer.set_processor(fused)
                switched += 1
        logger.debug("fused attention in %d of %d attention layers", switched, len(layers))
        yield switched
    finally:
        for layer, processor in zip(layers, previous):
            layer.set_processor(processor)
