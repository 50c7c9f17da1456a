"""Encoder-only models (BERT, RoBERTa, XLM-R): hidden states, sentence embeddings, classification.

Inputs of a call are sorted by length into batches; each batch is packed end to end so that no FLOPs go to
padding in the dense layers (``runtime.layers.encode_packed``); results come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from turboseq.formats.tokenizer import encode_pairs, encode_texts, load_tokenizer
from turboseq.generation.batching import make_batches
from turboseq.models.progress import progress_bar
from turboseq.runtime.layers import encode, encode_packed, linear
from turboseq.runtime.spec import EncoderSpec


class EncoderModel:
    def __init__(self, spec: EncoderSpec, config: dict, path: Path, device, compute_type: str):
        self.spec, self.config, self.path, self.device = spec, config, Path(path), device
        self.compute_type = compute_type  # runtime.compute: float32, bfloat16, int8, int8_bfloat16
        self._tokenizer = None

    @property
    def dtype(self) -> str:
        """The older name of ``compute_type``."""
        return self.compute_type

    def __repr__(self) -> str:
        return (
            f"turboseq.EncoderModel({self.config.get('model_type')}, {str(self.path)!r}, "
            f"compute_type={self.compute_type})"
        )

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    # --- token level -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, packed: bool = True) -> Tensor:
        """Last hidden states [batch, seq, d_model] of a right-padded batch (zeros at padded positions).
        ``packed=False`` runs the plain padded path instead (same result up to float rounding)."""
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        if ids.dim() != 2:
            raise ValueError(f"`input_ids` must be [batch, seq], got shape {tuple(ids.shape)}")
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, device=self.device)
        if mask.shape != ids.shape:
            raise ValueError(f"`attention_mask` shape {tuple(mask.shape)} differs from `input_ids` {tuple(ids.shape)}")
        if ids.shape[1] > self.spec.max_positions:
            raise ValueError(f"inputs have {ids.shape[1]} tokens; the model accepts at most {self.spec.max_positions}")
        if not packed:
            return encode(self.spec.encoder, ids, mask) * mask[..., None]
        lengths = mask.sum(dim=1)
        if bool((mask != (torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]).long()).any()):
            raise ValueError("`attention_mask` must be right padding (ones, then zeros) for the packed path")
        out = torch.zeros((*ids.shape, self.spec.d_model), dtype=torch.float32, device=ids.device)
        live = lengths > 0
        if live.any():
            hidden = encode_packed(self.spec.encoder, ids[mask.bool()], lengths[live])
            out[mask.bool()] = hidden
        return out

    def _pool(self, hidden: Tensor, lengths: Tensor, normalize: bool) -> Tensor:
        """Per-sequence vectors [batch, d_model] from packed states [total, d_model]."""
        mode = self.spec.pooling.mode
        batch = lengths.numel()
        seq = torch.repeat_interleave(torch.arange(batch, device=hidden.device), lengths)
        if mode == "cls":
            vectors = hidden[torch.cumsum(lengths, 0) - lengths]
        elif mode == "max":
            vectors = hidden.new_full((batch, hidden.shape[1]), -torch.inf)
            vectors = vectors.scatter_reduce(0, seq[:, None].expand_as(hidden), hidden, "amax")
        else:
            vectors = hidden.new_zeros((batch, hidden.shape[1])).index_add_(0, seq, hidden) / lengths[:, None]
        return F.normalize(vectors, p=2, dim=1) if normalize else vectors

    # --- text level --------------------------------------------------------------------------------------

    def _encode_texts(self, texts: Sequence[str], truncation: bool) -> list[Tensor]:
        rows = encode_texts(self.tokenizer, texts, self.spec.max_positions, truncation)
        return [torch.tensor(ids, dtype=torch.long) for ids in rows]

    @torch.inference_mode()
    def _run(
        self,
        rows: list[Tensor],
        batch_size,
        max_batch_tokens,
        fn,
        progress_desc: str | None = None,
        segments: list[Tensor] | None = None,
    ) -> list:
        """Sort ``rows`` (token id tensors) by length into packed batches, apply ``fn(hidden, lengths)`` to each
        batch's packed states, and return its per-row results in input order. ``segments``: each row's token
        segments (sentence pairs), or None for segment 0 throughout."""
        lengths = [len(r) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: -lengths[i])
        results: list = [None] * len(rows)
        with progress_bar(progress_desc is not None, len(rows), "text", progress_desc) as bar:
            for chunk in make_batches(order, lengths, batch_size, max_batch_tokens):
                tokens = torch.cat([rows[i] for i in chunk]).to(self.device)
                lens = torch.tensor([lengths[i] for i in chunk], device=self.device)
                types = None if segments is None else torch.cat([segments[i] for i in chunk]).to(self.device)
                hidden = encode_packed(self.spec.encoder, tokens, lens, types)
                for i, value in zip(chunk, fn(hidden, lens)):
                    results[i] = value
                bar.update(len(chunk))
        return results

    def _checked_rows(self, rows: Sequence[Sequence[int]]) -> list[Tensor]:
        tensors = [torch.as_tensor(list(r), dtype=torch.long) for r in rows]
        for i, t in enumerate(tensors):
            if not 1 <= len(t) <= self.spec.max_positions:
                raise ValueError(f"row {i} has {len(t)} tokens; rows need 1 to {self.spec.max_positions}")
        return tensors

    def embed_ids(
        self, rows: Sequence[Sequence[int]], *, batch_size: int = 32, normalize: bool | None = None
    ) -> Tensor:
        """``embed`` for token id lists (special tokens included), e.g. from your own tokenizer call."""
        norm = self.spec.pooling.normalize if normalize is None else normalize
        tensors = self._checked_rows(rows)
        if not tensors:
            return torch.zeros((0, self.spec.d_model))
        vectors = self._run(tensors, batch_size, None, lambda hidden, lens: self._pool(hidden.float(), lens, norm))
        return torch.stack(vectors).cpu()

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        normalize: bool | None = None,
        truncation: bool = False,
        progress: bool = False,
    ) -> Tensor:
        """Sentence embeddings [len(texts), d_model] (float32), pooled as the model directory says
        (sentence-transformers' modules.json; mean pooling otherwise). ``normalize`` defaults to whether the
        directory has a Normalize module."""
        norm = self.spec.pooling.normalize if normalize is None else normalize
        if not len(texts):
            return torch.zeros((0, self.spec.d_model))
        vectors = self._run(
            self._encode_texts(texts, truncation),
            batch_size,
            max_batch_tokens,
            lambda hidden, lens: self._pool(hidden.float(), lens, norm),
            "embed" if progress else None,
        )
        return torch.stack(vectors).cpu()

    def token_states_ids(self, rows: Sequence[Sequence[int]], *, batch_size: int = 32) -> list[Tensor]:
        """Each row's last hidden states [len, d_model] (float32), for token id lists: one vector per token, as
        text-embeddings-inference's ``/embed_all`` gives them."""
        tensors = self._checked_rows(rows)
        return self._run(
            tensors, batch_size, None, lambda hidden, lens: [h.float().cpu() for h in hidden.split(lens.tolist())]
        )

    def class_logits_ids(
        self,
        rows: Sequence[Sequence[int]],
        *,
        segments: Sequence[Sequence[int]] | None = None,
        batch_size: int = 32,
    ) -> Tensor:
        """The classification head's logits [len(rows), labels] (float32) for token id lists; ``segments``: each
        row's token segments, for sentence pairs (``encode_pairs``)."""
        head = self._head()
        tensors = self._checked_rows(rows)
        if not tensors:
            return torch.zeros((0, len(head.labels)))
        types = None if segments is None else [torch.as_tensor(list(s), dtype=torch.long) for s in segments]
        return torch.stack(
            self._run(tensors, batch_size, None, lambda h, lens: self._logits(h, lens).cpu(), segments=types)
        )

    def _head(self):
        if self.spec.classifier is None:
            raise ValueError(f"{self.path}: the model has no sequence-classification head")
        return self.spec.classifier

    def _logits(self, hidden: Tensor, lengths: Tensor) -> Tensor:
        """The head's float32 logits [batch, labels] from packed states: its first token's (CLS / <s>) state."""
        head = self.spec.classifier
        first = hidden[torch.cumsum(lengths, 0) - lengths]
        return linear(torch.tanh(linear(first, head.dense)), head.out).float()

    def classify(
        self,
        texts: Sequence[str],
        *,
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 32,
        truncation: bool = False,
        progress: bool = False,
    ) -> list[dict]:
        """The top label and its softmax score per text (or per (text, text pair), as a cross-encoder reads
        them): [{"label": ..., "score": ...}, ...]."""
        head = self._head()
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        if not len(texts):
            return []
        if text_pairs is None:
            rows, types = self._encode_texts(texts, truncation), None
        else:
            ids, segs = encode_pairs(self.tokenizer, list(zip(texts, text_pairs)), self.spec.max_positions, truncation)
            rows, types = [torch.tensor(r) for r in ids], [torch.tensor(s) for s in segs]

        def top(hidden, lens):
            probs = self._logits(hidden, lens).softmax(-1)
            return [{"label": head.labels[int(i)], "score": float(p[i])} for p, i in zip(probs, probs.argmax(-1))]

        desc = "classify" if progress else None
        return self._run(rows, batch_size, None, top, desc, segments=types)
