"""Weights laid out for the CPU's products: oneDNN's reordered copy of a linear (``prepack``), and a float32 LM
head held once in panels (``Panels``) with the bfloat16 screen of its exact greedy shortcut (``Screen``,
used by ``runtime.head.LMHead``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from turboseq.runtime.spec import Linear

# a float32 LM head (and the table tied to it) in panels of this many rows; MKL's float32 kernels work in
# strips of 16 and 48 columns, and 48-row panels multiplied as one batched product ran within about 10% of
# oneDNN's packed float32 weights from 1 to 256 rows (heads 58101x512, 50257x768, 32000x2048, 51865x384,
# Intel Xeon with AMX, 2 threads), where 16- or 32-row panels ran 5-45% slower and a plain [vocab, d] table
# 1.5-3.6x slower
PANEL = 48
# bytes of one batched product's result in ``Panels.matmul``
_GROUP_BYTES = 16 << 20
# rows of the head converted at a time while laying it out
_BLOCK_ROWS = 4096


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 products are native on ``device``: oneDNN's bfloat16 kernels need AVX-512 (BW, VL, DQ)
    or AVX-NE-CONVERT; an AVX2-only CPU (AMD Zen 1-3, most laptops) has neither, and there a bfloat16 screen
    would cost more than the float32 product it screens."""
    if torch.device(device).type != "cpu":
        return True
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def prepack(lin: Linear) -> None:
    """Reorder a CPU weight once into oneDNN's blocked layout (several times faster than BLAS for the 16-256
    rows of batched decoding, no slower for one row; same precision, only the summation order differs). A
    bfloat16 weight stays dense on a CPU without native bfloat16 products (``fast_bf16``)."""
    if lin.weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
        if lin.weight.dtype == torch.bfloat16 and not fast_bf16("cpu"):
            return
        lin.packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight.contiguous())


@dataclass
class Screen:
    """A bfloat16 copy of a float32 head W, and the bounds that make screening exact (``LMHead.greedy``):
    ``rounding`` = max_v |W_v - Wb_v|, ``norm_bf16`` = max_v |Wb_v|, ``slack`` bounds float32 accumulation."""

    lin: Linear
    rounding: float
    norm_bf16: float
    slack: float

    @classmethod
    def of(cls, rows: Callable[[int, int], Tensor], shape: tuple[int, int], device: torch.device) -> Screen:
        """Built from ``rows(a, b)`` (float32 rows a..b of W) a block at a time: float32 temporaries of a whole
        58k-row head would double a load's peak memory. The dense bfloat16 copy goes once packed."""
        vocab, width = shape
        weight_bf16 = torch.empty(shape, dtype=torch.bfloat16, device=device)
        rounding = norm_bf16 = 0.0
        for a in range(0, vocab, _BLOCK_ROWS):
            exact = rows(a, min(vocab, a + _BLOCK_ROWS))
            weight_bf16[a : a + _BLOCK_ROWS] = exact
            block = weight_bf16[a : a + _BLOCK_ROWS].float()
            rounding = max(rounding, (exact - block).norm(dim=1).max().item())
            norm_bf16 = max(norm_bf16, block.norm(dim=1).max().item())
        lin = Linear(weight_bf16)
        prepack(lin)
        if lin.packed is not None:
            lin.weight = weight_bf16.to("meta")  # the packed copy is the screen's weight
        # rounding of a float32-accumulated dot product of length n is below n * 2**-24 * |a| |b| (x2 margin)
        return cls(lin, rounding, norm_bf16, 2.0 * width * 2.0**-24 * norm_bf16)


class Panels:
    """A float32 matrix W [rows, d] held once, in panels of ``PANEL`` rows, each panel transposed:
    ``data[i, :, j] = W[i * PANEL + j]`` (``data`` is [ceil(rows / PANEL), d, PANEL], the last panel padded with
    zeros). ``x @ W.T`` is one batched product over the panels, as fast as oneDNN's packed copy (``PANEL``), and
    a row of W is a strided read of ``data``: an LM head's embedding table, tied to it, and the greedy
    shortcut's exact rows need no second copy (a packed head kept a dense one too). ``screen``: the head's
    bfloat16 screen, made with the panels."""

    __slots__ = ("data", "rows", "screen")

    def __init__(self, data: Tensor, rows: int, screen: Screen | None = None):
        self.data, self.rows, self.screen = data, rows, screen

    @classmethod
    def of(cls, w: Tensor, release: Callable[[Tensor], None] = lambda t: None, screen: bool = False) -> Panels:
        """``w`` [rows, d] laid out in panels, converted to float32 a block at a time, ``release(block)`` called
        as each block of ``w`` is done (a mapped view's pages given back). With ``screen`` the bfloat16 screen is
        made first, while the panels do not exist yet: its dense copy, packed then dropped, is the load's
        largest transient, so it comes when least else is held."""
        rows, d = w.shape

        def read(a: int, b: int) -> Tensor:
            block = w[a:b].to(torch.float32, copy=True)  # its own: a view would fault released pages back in
            release(w[a:b])
            return block

        made = Screen.of(read, (rows, d), w.device) if screen else None
        n = -(-rows // PANEL)
        data = torch.empty(n, d, PANEL, device=w.device)
        data[-1].zero_()
        step = _BLOCK_ROWS // PANEL * PANEL
        for a in range(0, rows, step):
            b = min(rows, a + step)
            block = read(a, b)
            full = (b - a) // PANEL * PANEL
            if full:
                data[a // PANEL : (a + full) // PANEL].copy_(block[:full].view(-1, PANEL, d).transpose(1, 2))
            if full < b - a:  # the last rows, in the padded panel
                data[-1, :, : b - a - full].copy_(block[full:].t())
        return cls(data, rows, made)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.rows, self.data.shape[1]))

    @property
    def nbytes(self) -> int:
        """Bytes held: the panels and the screen (its packed bfloat16 copy, as large as a dense one)."""
        screen = 0 if self.screen is None else self.screen.lin.weight.numel() * 2
        return self.data.numel() * self.data.element_size() + screen

    def take(self, index: Tensor) -> Tensor:
        """``W[index]``: float32 rows [*index.shape, d] (``F.embedding`` of the tied table)."""
        flat = index.reshape(-1)
        out = self.data[flat // PANEL, :, flat % PANEL]
        return out.view(*index.shape, self.data.shape[1])

    def rows_between(self, a: int, b: int) -> Tensor:
        """``W[a:b]`` as a dense float32 copy."""
        return self.take(torch.arange(a, min(b, self.rows), device=self.data.device))

    def dense(self) -> Tensor:
        return self.rows_between(0, self.rows)

    def matmul(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``x @ W.T + bias``, float32 [..., rows], contiguous."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        m, (n, d, p) = x2.shape[0], self.data.shape
        full = self.rows // p
        out = torch.empty(m, self.rows, device=x2.device)
        # the product by groups of panels whose result, moved into place (and the bias added) while still
        # cached, stays within _GROUP_BYTES: 5-10% faster at 256 rows than one product over all panels
        group = max(1, _GROUP_BYTES // (m * p * 4))
        placed = out[:, : full * p].view(m, full, p)
        for g in range(0, full, group):
            e = min(full, g + group)
            y = torch.bmm(x2.expand(e - g, m, d), self.data[g:e]).transpose(0, 1)  # [m, panels, PANEL]
            if bias is None:
                placed[:, g:e].copy_(y)
            else:
                torch.add(y, bias[g * p : e * p].view(e - g, p), out=placed[:, g:e])
        if full < n:  # the padded panel's rows
            tail = self.data[-1, :, : self.rows - full * p]
            if bias is None:
                torch.mm(x2, tail, out=out[:, full * p :])
            else:
                torch.addmm(bias[full * p :], x2, tail, out=out[:, full * p :])
        return out.view(*shape[:-1], self.rows)
