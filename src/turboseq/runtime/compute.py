"""Compute types: the precision of a model's products, chosen once at load (CTranslate2's names).

- ``float32``: everything in float32, token-identical to transformers (the default).
- ``bfloat16``: every linear (fused q/k/v, cross-attention K/V, FFNs, output projection) in bfloat16 on
  oneDNN's prepacked weights; attention and the KV cache in bfloat16.
- ``int8``: int8 weights (one scale per output channel) and int8 activations quantized per row at run time,
  int32 accumulation (fbgemm's VNNI kernels); attention, the cache and everything else in float32.
- ``int8_bfloat16``: the int8 products of ``int8``, attention and the KV cache in bfloat16.

In every reduced type the residual stream, norms, softmax/log-softmax and beam scores stay float32: a linear
casts its input to its own precision and the residual sum promotes the result back (bfloat16 + float32 is
float32), so no activation can overflow as in float16. A family can mark a linear whose inputs carry outliers
(``Linear.outliers``: T5's FFN output, which transformers keeps in float32): one scale per row would flatten
everything but the outlier, so it runs in bfloat16 (float32's range, a scale per value) in the int8 types.
Embedding tables are stored in bfloat16 in the reduced types and
looked up into float32. Nothing here touches process-wide settings (matmul precision, oneDNN math mode).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from turboseq.runtime.cpu import Capability, at_least, auto_compute_type, cpu_info
from turboseq.runtime.packed import Panels, fast_bf16, prepack
from turboseq.runtime.spec import Embeddings, Linear, linears, parts, stacks

COMPUTE_TYPES = ("float32", "bfloat16", "int8", "int8_bfloat16")


@dataclass(frozen=True)
class ComputeType:
    name: str
    gemm: torch.dtype  # the linears' precision: float32, bfloat16, or int8
    attention: torch.dtype  # q/k/v, the KV cache and the attention products

    @property
    def reduced(self) -> bool:
        return self.name != "float32"


_TYPES = {
    "float32": ComputeType("float32", torch.float32, torch.float32),
    "bfloat16": ComputeType("bfloat16", torch.bfloat16, torch.bfloat16),
    "int8": ComputeType("int8", torch.int8, torch.float32),
    "int8_bfloat16": ComputeType("int8_bfloat16", torch.int8, torch.bfloat16),
}


def supported_compute_types(device: torch.device | str = "cpu") -> list[str]:
    """The compute types this machine runs on ``device``, fastest last."""
    if torch.device(device).type != "cpu":
        return ["float32", "bfloat16"]  # the int8 kernels here are CPU kernels
    names = ["float32"]
    level = cpu_info().capability
    if level >= Capability.AVX512_VNNI and fast_bf16("cpu"):
        names.append("bfloat16")
    if level >= Capability.AVX2 and "fbgemm" in torch.backends.quantized.supported_engines:
        names.append("int8")
        if "bfloat16" in names:
            names.append("int8_bfloat16")
    return names


def resolve_compute_type(name: str, device: torch.device | str = "cpu") -> ComputeType:
    """The compute type called ``name`` ("auto": the one this CPU runs fastest, ``runtime.cpu.AUTO``), or a
    ValueError naming the valid ones."""
    supported = supported_compute_types(device)
    if name == "auto":
        if torch.device(device).type != "cpu":
            return _TYPES[supported[-1]]
        preferred = auto_compute_type()
        return _TYPES[preferred if preferred in supported else "float32"]
    if name == "float16":
        raise ValueError(
            "compute type float16 is not offered: T5-family activations overflow its range (a known transformers "
            "issue) and CPUs gain nothing from it; use bfloat16 or int8 for a fast mode"
        )
    if name not in _TYPES:
        raise ValueError(f"unknown compute type {name!r}; valid: {', '.join(COMPUTE_TYPES)}, auto")
    if name not in supported:
        raise ValueError(
            f"compute type {name!r} is not supported on this {torch.device(device).type} "
            f"(supported here: {', '.join(supported)}, auto)"
        )
    return _TYPES[name]


# --- preparing a spec ---------------------------------------------------------------------------------------


@contextmanager
def dense_weights(spec):
    """Within the block, every linear of ``spec`` runs on its dense weight (its packed copy set aside, then put
    back): what tracing for ``torch.export`` needs, as oneDNN's opaque packed tensors cannot be exported."""
    saved = [(lin, lin.weight, lin.packed) for lin in linears(spec)]
    tables = [(emb, emb.tokens, emb.packed) for emb in parts(spec, Embeddings) if emb.packed is not None]
    dense: dict[int, Tensor] = {}  # one dense copy per packed tensor (a tied table and head share it)

    def unpacked(packed) -> Tensor:
        if id(packed) not in dense:
            # oneDNN's reorder back to the plain layout, or the panels' rows: the same values
            dense[id(packed)] = packed.dense() if isinstance(packed, Panels) else packed.to_dense()
        return dense[id(packed)]

    try:
        for lin, weight, packed in saved:
            if weight.device.type == "meta" and packed is not None and not lin.int8:
                lin.weight = unpacked(packed)
            lin.packed = None
        for emb, _tokens, packed in tables:
            emb.tokens, emb.packed = unpacked(packed), None
        yield
    finally:
        for lin, weight, packed in saved:
            lin.weight, lin.packed = weight, packed
        for emb, tokens, packed in tables:
            emb.tokens, emb.packed = tokens, packed


@dataclass
class Staging:
    """Where the weights are while a model is laid out. ``mapped(t)``: ``t`` is a view of a weights file
    (``formats.hf``), read lazily; ``release(t)`` gives its pages back once converted. ``final`` collects the
    tensors already in their runtime dtype (a bfloat16 bias, a table), which the loader's last pass leaves alone.
    Converting block by block and releasing as it goes, a load never holds much more than its result."""

    mapped: Callable[[Tensor], bool] = lambda t: False
    release: Callable[[Tensor], None] = lambda t: None
    final: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # (linear, int8 weights) quantized, for fbgemm to pack
    lay_out: Callable[[Linear], None] | None = None  # lays one linear out for the compute type being loaded
    release_all: Callable[[], None] = lambda: None  # every mapped page given back (read again if needed)

    def convert(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """``t`` in ``dtype``, in memory of its own: a mapped view is copied a block of rows at a time, each
        block's pages released."""
        if not self.mapped(t):
            return t.to(dtype)
        out = torch.empty(t.shape, dtype=dtype)
        if t.dim() < 2:
            out.copy_(t)
            return out
        n = _rows(t)
        for a in _blocks(t):
            out[a : a + n].copy_(t[a : a + n])
            self.release(t[a : a + n])
        return out

    def keep(self, t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """``t`` converted to its final ``dtype`` and marked as final."""
        if t is None:
            return None
        out = self.convert(t, dtype)
        self.final.append(out)
        return out


_BLOCK_BYTES = 1 << 20  # a weight is converted about this many float32 bytes of rows at a time


def _blocks(t: Tensor) -> range:
    """Starts of the row blocks of ``t``, each ``_rows(t)`` long."""
    return range(0, t.shape[0], _rows(t))


def _rows(t: Tensor) -> int:
    return max(1, _BLOCK_BYTES // (4 * max(1, t[0].numel()))) if t.dim() and t.shape[0] else 1


def _quantize(lin: Linear, staging: Staging) -> None:
    """int8 weights with one scale per output channel, packed for fbgemm (the bias is added after the
    per-row rescale in ``int8_linear``). Done a block of rows at a time (the same per row as at once): the
    scales first, then the rows quantized straight into the int8 tensor fbgemm packs, so a load holds the
    int8 weights twice at most, never a float32 copy."""
    w = lin.weight
    rows = w.shape[0]
    scale = torch.empty(rows, dtype=torch.float64)
    n = _rows(w)
    for a in _blocks(w):
        scale[a : a + n] = (w[a : a + n].float().abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        staging.release(w[a : a + n])  # read again below, from the page cache
    zero = torch.zeros(rows, dtype=torch.long)
    # a deprecation warning says quantized tensors go away in some later torch; the range pinned in
    # pyproject keeps them (torch._int_mm is the alternative)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._empty_per_channel_affine_quantized(
            tuple(w.shape), scales=scale, zero_points=zero, axis=0, dtype=torch.qint8
        )
        for a in _blocks(w):
            qweight[a : a + n].copy_(w[a : a + n].float().contiguous())  # quantized with its rows' scales
            staging.release(w[a : a + n])
    # packed with the others at the end of ``prepare``, on several threads
    lin.int8, lin.weight = True, torch.empty(qweight.shape, device="meta")
    staging.pending.append((lin, qweight.int_repr(), scale))


def int8_weight(values: Tensor) -> Tensor:
    """int8 weights ``values`` [out, in] as the quantized tensor fbgemm packs: one scale of 1 for the whole
    tensor, the channels' own scales being applied to the product (``int8_linear``). fbgemm reads a
    per-channel tensor's scales and zero points one tensor element at a time, at about 2.7 us per output
    channel: 0.5 s of an opus-mt load's 1.25 s of packing on one thread (AMD EPYC Zen 3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._make_per_tensor_quantized_tensor(values, 1.0, 0)


def in_threads(fn: Callable, items: list) -> None:
    """``fn`` over ``items`` on as many threads as torch uses (fbgemm's packing holds no lock: most of an int8
    load's time), the first items first (callers put the largest first)."""
    if torch.get_num_threads() < 2 or len(items) < 2:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        list(pool.map(fn, items))


def largest_first(fn: Callable, jobs: list) -> None:
    """``fn(*job)`` for each job, a tuple whose second item is a tensor, the largest first, ``in_threads``;
    ``jobs`` is emptied and each job dropped once done, so what it holds (int8 weights fbgemm has packed) is
    freed then, not when all are done."""
    queue = [list(job) for job in sorted(jobs, key=lambda job: -job[1].numel())]
    jobs.clear()

    def run(job: list) -> None:
        fn(*job)
        job.clear()

    in_threads(run, queue)


def pack_pending(staging: Staging) -> None:
    """Pack the linears ``_quantize`` left to pack, the LM head (largest) first."""
    pack_int8(staging.pending)


# fbgemm packs a weight in slices of at most this many output rows, side by side on torch's threads: an LM head
# alone (58101 rows for opus-mt) took over half a second on one thread, most of an int8 load. Each slice's
# product is exactly that slice of the whole's (the same per-row quantized input, the same int32 sums), and
# ``int8_linear`` puts them side by side at no measurable cost.
PACK_SLICE_ROWS = 16384


def pack_int8(jobs: list, after: Callable[[Tensor], None] | None = None) -> None:
    """fbgemm's packed form of each job, on torch's threads, the largest slices first. A job is ``(linear,
    int8 values [out, in], float64 scales [out])``; ``after(values slice)`` once a slice is packed (releasing
    what it was read from). Empties ``jobs``."""
    slices, linears_ = [], []
    for lin, weight, scale in jobs:
        count = -(-weight.shape[0] // PACK_SLICE_ROWS)
        lin.packed, lin.int8 = [None] * count, True
        lin.int8_scale = scale.to(torch.float32)  # as fbgemm read a per-channel tensor's scales
        lin.weight = torch.empty(weight.shape, device="meta")  # shape only: the packed copy is the weight now
        linears_.append(lin)
        for i in range(count):
            slices.append((lin, weight[i * PACK_SLICE_ROWS : (i + 1) * PACK_SLICE_ROWS], i))
    jobs.clear()

    def pack(lin: Linear, part: Tensor, i: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            lin.packed[i] = torch.ops.quantized.linear_prepack(int8_weight(part), None)
        if after is not None:
            after(part)

    largest_first(pack, slices)
    for lin in linears_:
        lin.packed = lin.packed[0] if len(lin.packed) == 1 else tuple(lin.packed)


def int8_parts(lin: Linear) -> tuple[Tensor, Tensor]:
    """The int8 weights [out, in] and float64 scales [out] of a linear laid out by ``_quantize``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parts = [torch.ops.quantized.linear_unpack(p)[0] for p in _slices(lin.packed)]
    return torch.cat([q.int_repr() for q in parts]), lin.int8_scale.to(torch.float64)


def _slices(packed) -> tuple:
    return packed if isinstance(packed, tuple) else (packed,)


def prepare_linear(
    lin: Linear,
    ct: ComputeType,
    bf16: bool,
    head: bool,
    staging: Staging | None = None,
    bf16_weight: Tensor | None = None,
) -> None:
    """Lay one linear out for the fastest product of ``ct`` (see ``prepare``); nothing if already done.
    ``bf16_weight``: the weight already in bfloat16 (a tied LM head's embedding table), not converted again."""
    staging = staging or Staging()
    if lin.packed is not None or lin.int8:
        return
    source, on_cpu = lin.weight, lin.weight.device.type == "cpu"
    reduced = ct.reduced
    if reduced and ct.gemm == torch.int8 and not lin.outliers and on_cpu:
        _quantize(lin, staging)
        lin.bias = staging.keep(lin.bias, torch.float32)
        return
    reduced = reduced and bf16
    if head and not reduced and on_cpu:
        # float32's LM head: one copy, in panels (its embedding table, if tied, looks up from them: ``prepare``)
        lin.packed = Panels.of(source, staging.release, screen=fast_bf16(source.device))
        lin.weight = source.to("meta")
        lin.bias = staging.keep(lin.bias, torch.float32)
        return
    dtype = torch.bfloat16 if reduced else torch.float32
    if reduced and bf16_weight is not None:
        lin.weight = bf16_weight
    elif reduced or source.dtype != torch.float32:
        lin.weight = staging.convert(source, dtype)
    lin.bias = staging.keep(lin.bias, dtype)
    prepack(lin)
    if lin.packed is not None and (reduced or not head):
        lin.weight = lin.weight.to("meta")  # shape and dtype only: the packed copy is the weight now
        staging.release(source)
    elif lin.packed is None and on_cpu:
        # no oneDNN: F.linear hands BLAS a contiguous [in, out] matrix, faster for few-row products
        lin.weight = lin.weight.t().contiguous().t()
        staging.release(source)


def prepare(spec, ct: ComputeType, staging: Staging | None = None) -> None:
    """Lay every linear out for the fastest product of ``ct`` (weights on their device, float32 or the
    checkpoint's float type). A prepacked linear keeps only its packed form (a shape-only stand-in of the
    dense weight stays; ``dense_weights`` gives it back for an export). float32's LM head on the CPU is held in
    ``Panels``, and an embedding table tied to it looks up from the same panels (``Embeddings.packed``).
    Linears laid out already (while the family mapped them) are left as they are."""
    staging = staging or Staging()
    # a table shared by the encoder and the decoder stays shared: id -> (source table, bfloat16 table)
    converted: dict[int, tuple[Tensor, Tensor]] = {}
    bf16 = "bfloat16" in supported_compute_types(spec_device(spec))
    head = getattr(spec, "lm_head", None)

    def tables() -> None:
        for emb in parts(spec, Embeddings):
            if id(emb.tokens) not in converted:
                converted[id(emb.tokens)] = (emb.tokens, staging.keep(emb.tokens, torch.bfloat16))
            emb.tokens = converted[id(emb.tokens)][1]  # looked up into float32 (``runtime.layers.embed``)

    # bfloat16: the tables first, so that a tied head packs its table's bfloat16 copy; int8: the tables last,
    # so that fbgemm's transient copy while packing the head comes before the tables take their memory
    if ct.reduced and ct.gemm != torch.int8:
        tables()

    def lay_out(lin: Linear) -> None:
        same = converted.get(id(lin.weight)) if ct.reduced else None  # a tied head: its table's bfloat16 copy
        prepare_linear(lin, ct, bf16, lin is head, staging, None if same is None else same[1])

    # on torch's threads, the largest (the LM head) first: quantizing and reordering are most of a load's time
    head_table = None if head is None else head.weight
    in_threads(lay_out, sorted(linears(spec), key=lambda lin: -lin.weight.numel()))
    if head is not None and isinstance(head.packed, Panels):
        for emb in parts(spec, Embeddings):
            if emb.tokens is head_table:  # tied: one copy, the head's
                emb.tokens, emb.packed = head.weight, head.packed
    del head_table
    staging.release_all()
    pack_pending(staging)
    if ct.reduced and ct.gemm == torch.int8:
        tables()
    if not ct.reduced:
        return
    for stack in stacks(spec):
        stack.exact_attention = False
        for layer in stack.layers:
            # q/k/v and the cross-attention K/V come out in the attention precision (the cache's)
            layer.self_attn.qkv.out_dtype = ct.attention
            if getattr(layer, "cross_attn", None) is not None:
                layer.cross_attn.q.out_dtype = layer.cross_attn.kv.out_dtype = ct.attention


def spec_device(spec) -> torch.device:
    if hasattr(spec, "lm_head"):
        head = spec.lm_head
        device = head.packed.data.device if isinstance(head.packed, Panels) else head.weight.device
    else:
        device = spec.encoder.embed.tokens.device
    # a packed CPU weight leaves a shape-only stand-in (an int8 head read from a converted directory)
    return torch.device("cpu") if device.type == "meta" else device


def weight_bytes(spec) -> int:
    """Bytes of weights the runtime holds (packed forms counted as their dense size, shape-only stand-ins and
    tensors shared by several fields not counted twice)."""
    seen: set[int] = set()
    sizes: list[int] = []

    def walk(obj) -> None:
        if isinstance(obj, Tensor):
            if obj.device.type != "meta" and id(obj) not in seen:
                seen.add(id(obj))
                sizes.append(obj.numel() * obj.element_size())
        elif isinstance(obj, list):
            for item in obj:
                walk(item)
        elif hasattr(obj, "__dataclass_fields__"):
            for name in obj.__dataclass_fields__:
                if name == "packed" and isinstance(obj.packed, Panels):
                    if id(obj.packed) not in seen:  # a tied head and table hold the same panels
                        seen.add(id(obj.packed))
                        sizes.append(obj.packed.nbytes)  # its bfloat16 screen included
                elif isinstance(obj, Linear) and name == "packed":
                    if obj.packed is not None:
                        w = obj.weight
                        # int8: a byte per weight (its float32 channel scales are ``int8_scale``, counted below)
                        sizes.append(w.numel() if obj.int8 else w.numel() * w.element_size())
                else:
                    walk(getattr(obj, name))

    walk(spec)
    return sum(sizes)


# --- the int8 product -------------------------------------------------------------------------------------

_buffers = threading.local()


def _row_buffer(rows: int, width: int) -> Tensor:
    """A per-thread float32 buffer [>= rows + 1, width] whose row 0 holds +1 and -1 (see ``int8_linear``)."""
    cache_ = getattr(_buffers, "by_width", None)
    if cache_ is None:
        cache_ = _buffers.by_width = {}
    buf = cache_.get(width)
    # one made under inference_mode cannot be written outside it (a caller's own inference_mode, then plain use)
    stale = buf is not None and buf.is_inference() and not torch.is_inference_mode_enabled()
    if buf is None or stale or buf.shape[0] < rows + 1:
        buf = torch.zeros(max(rows + 1, 2 * (0 if buf is None or stale else buf.shape[0])), width)
        buf[0, 0], buf[0, 1 % width] = 1.0, -1.0
        cache_[width] = buf
    return buf


def int8_linear(x: Tensor, lin: Linear) -> Tensor:
    """``x @ W.T + b`` with int8 weights and int8 activations quantized per row, float32 in and out.

    fbgemm quantizes its whole input with one (asymmetric) range. Each row is divided by its largest magnitude
    first and a fixed row holding +1 and -1 is put in front, so that range is always [-1, 1]: every row gets its
    own 8-bit scale, and a row's result never depends on the other rows of the batch (batch invariance). The
    product is rescaled per output channel (the weights' scales), then per row with the bias added in one op.
    """
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()
    rows = x2.shape[0]
    scale = x2.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)  # [rows, 1] (vector_norm(inf) is slower)
    buf = _row_buffer(rows, shape[-1])[: rows + 1]
    torch.div(x2, scale, out=buf[1:])
    # without AVX-512 VNNI fbgemm multiplies u8 by s8 in pairs summed into int16 (AVX2's ``vpmaddubsw``), which
    # saturates unless activations keep 7 bits: its ``reduce_range``
    reduce_range = not at_least(Capability.AVX512_VNNI)
    # the weights' channel scales (packed with a scale of 1: ``int8_weight``)
    if isinstance(lin.packed, tuple):  # a large weight packed in row slices, each scaled into its columns
        y = torch.empty(rows, lin.int8_scale.shape[0])
        start = 0
        for p in lin.packed:
            part = torch.ops.quantized.linear_dynamic(buf, p, reduce_range)[1:]
            end = start + part.shape[1]
            torch.mul(part, lin.int8_scale[start:end], out=y[:, start:end])
            start = end
    else:
        y = torch.ops.quantized.linear_dynamic(buf, lin.packed, reduce_range)[1:].mul_(lin.int8_scale)
    y = torch.addcmul(lin.bias, y, scale) if lin.bias is not None else y.mul_(scale)
    return y.view(*shape[:-1], y.shape[-1])
