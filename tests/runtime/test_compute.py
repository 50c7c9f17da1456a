"""Compute types (``runtime.compute``): float32 stays exact and untouched by the reduced types; bfloat16 and int8
run every family close to float32; int8 is batch-invariant; T5's FFN outliers cannot overflow; bad names are
refused with the valid ones."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import turboseq
from tests.helpers import MARIAN_CONFIGS, compute_types, make_marian, runs, source_batch
from turboseq.runtime import compute, cpu, packed

ALL_REDUCED = ("bfloat16", "int8", "int8_bfloat16")
REDUCED = tuple(ct for ct in ALL_REDUCED if runs(ct))  # what this CPU runs
_LOW = {torch.bfloat16, torch.float16, torch.int8, torch.quint8, torch.qint8, torch.qint32}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over positions of the cosine between logit vectors."""
    return F.cosine_similarity(a.flatten(0, -2).double(), b.flatten(0, -2).double(), dim=-1).mean().item()


def _targets(model, ids, mask, steps: int = 8) -> torch.Tensor:
    out = model.generate(ids, mask, num_beams=1, min_new_tokens=steps, max_new_tokens=steps)
    return out[:, :steps]


class _Kernels(TorchDispatchMode):
    """Records every operator that runs on (or is) a reduced-precision kernel, unless ``allowed`` is set."""

    def __init__(self):
        super().__init__()
        self.reduced: list[str] = []
        self.allowed = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.allowed:
            tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            if "quantized" in str(func) or any(t.dtype in _LOW for t in tensors):
                self.reduced.append(str(func))
        return out


def test_float32_runs_no_reduced_precision_kernel(marian_one):
    """After bfloat16 and int8 models were loaded in the process, a float32 model still runs only float32
    products and the process-wide settings are untouched. The one exception is by design and is checked for:
    the greedy LM head's bfloat16 screen, whose winner is recomputed in float32 (``runtime.head``)."""
    _, path = marian_one
    before = (torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision)
    fast = [turboseq.load(path, compute_type=name) for name in REDUCED]
    exact = turboseq.load(path)
    ids, mask = source_batch(1000, 1023, seed=2)
    for model in fast:
        model.generate(ids, mask, max_new_tokens=4)
    assert (torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision) == before

    kernels = _Kernels()
    greedy = exact.head.greedy

    def screened(*args):
        kernels.allowed = True
        try:
            return greedy(*args)
        finally:
            kernels.allowed = False

    exact.head.greedy = screened
    try:
        with kernels:
            exact.generate(ids, mask, num_beams=2, max_new_tokens=6)
            exact.generate(ids, mask, num_beams=1, max_new_tokens=6)
    finally:
        del exact.head.greedy
    assert kernels.reduced == []
    # the check can fail: the same recorder sees the int8 model's kernels
    with kernels:
        fast[REDUCED.index("int8")].generate(ids[:1], mask[:1], max_new_tokens=2)
    assert any("quantized" in name for name in kernels.reduced)


@pytest.mark.parametrize("compute_type", compute_types(*ALL_REDUCED))
def test_every_seq2seq_family_stays_close_to_float32(seq2seq, compute_type):
    name, model, _, path = seq2seq
    fast = turboseq.load(path, compute_type=compute_type)
    assert f"compute_type={compute_type}" in repr(fast)
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=5, eos=model.spec.eos_token_id)
    targets = _targets(model, ids, mask)
    exact = model.forward_logits(ids, mask, targets)
    approx = fast.forward_logits(ids, mask, targets)
    assert approx.dtype == torch.float32 and approx.shape == exact.shape
    # random weights drawn large (helpers.make_family_model) amplify rounding; quality on trained weights is the
    # bench's (turboseq bench --quality)
    assert _cosine(approx, exact) > 0.97, name
    out = fast.generate(ids, mask, num_beams=2, max_new_tokens=6)
    assert ((out >= 0) & (out < model.spec.vocab_size)).all()


def test_forward_logits_equal_transformers(seq2seq):
    """The teacher-forced logits the quality bench relies on are transformers' logits (float32)."""
    name, model, ref, _ = seq2seq
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=5, eos=model.spec.eos_token_id)
    targets = _targets(model, ids, mask)
    with torch.inference_mode():
        expected = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=targets).logits
    torch.testing.assert_close(model.forward_logits(ids, mask, targets), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compute_type", compute_types(*ALL_REDUCED))
def test_decoder_only_stays_close_to_float32(causal, compute_type):
    name, model, ref, path = causal
    fast = turboseq.load(path, compute_type=compute_type)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.spec.vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    exact = model.forward_logits(ids, mask)
    with torch.inference_mode():
        expected = ref(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(exact[0], expected[0], rtol=1e-4, atol=1e-4)
    assert _cosine(fast.forward_logits(ids, mask)[mask.bool()], exact[mask.bool()]) > 0.99, name


@pytest.mark.parametrize("beams", [1, 3])
def test_int8_is_batch_invariant(marian, beams):
    """Activations get a scale per row that does not depend on the other rows: a sentence decodes to the same
    tokens alone and in any batch."""
    _, _, path = marian
    model = turboseq.load(path, compute_type="int8")
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=7)
    batched = model.generate(ids, mask, num_beams=beams, max_new_tokens=10)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = model.generate(ids[i : i + 1, :n], num_beams=beams, max_new_tokens=10)
        assert torch.equal(batched[i, : alone.shape[1]], alone[0])


def test_t5_feed_forward_outliers_do_not_overflow(text_model, tmp_path):
    """T5's FFN output sees activations beyond float16's range (transformers #20287): with the residual
    stream in float32 and that product in bfloat16 (never int8), every compute type stays finite and close."""
    _, ref, tokenizer, path = text_model
    if ref.config.model_type != "t5":
        pytest.skip("T5 only")
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    for key in weights:
        if "DenseReluDense.wi" in key:
            weights[key] = weights[key] * 30000.0
        if "DenseReluDense.wo" in key:
            weights[key] = weights[key] / 30000.0
    for name in path.iterdir():
        if name.name != "model.safetensors":
            (tmp_path / name.name).write_bytes(name.read_bytes())
    save_file(weights, tmp_path / "model.safetensors")
    exact = turboseq.load(tmp_path)
    assert exact.spec.decoder.layers[0].ffn.fc2.outliers
    enc = tokenizer(["The committee will publish its report.", "A short one."], return_tensors="pt", padding=True)
    largest = []
    hook = ref.__class__.from_pretrained(tmp_path).eval()
    handles = [
        block.layer[-1].DenseReluDense.wo.register_forward_hook(lambda m, i, o: largest.append(i[0].abs().max()))
        for block in hook.encoder.block
    ]
    targets = _targets(exact, enc["input_ids"], enc["attention_mask"])
    with torch.inference_mode():
        hook(**enc, decoder_input_ids=targets)
    for h in handles:
        h.remove()
    assert max(largest) > 65504  # the inputs of `wo` overflow float16
    reference = exact.forward_logits(enc["input_ids"], enc["attention_mask"], targets)
    for compute_type in REDUCED:
        logits = turboseq.load(tmp_path, compute_type=compute_type).forward_logits(
            enc["input_ids"], enc["attention_mask"], targets
        )
        assert torch.isfinite(logits).all()
        assert _cosine(logits, reference) > 0.99, compute_type


def test_encoder_embeddings_close_to_float32(minilm):
    model, _, _, path = minilm
    texts = ["A man is playing a guitar.", "The new movie is awesome!", "Stocks fell sharply on Monday."]
    exact = model.embed(texts)
    # AVX2's int8 products keep 7 bits of each activation (fbgemm's reduce_range: its pair-wise products
    # saturate otherwise): a little further from float32 than VNNI's 8 (0.988 on an AMD EPYC Zen 3)
    int8 = 0.99 if cpu.at_least(cpu.Capability.AVX512_VNNI) else 0.985
    for compute_type, floor in (("bfloat16", 0.999), ("int8", int8), ("int8_bfloat16", 0.99)):
        if not runs(compute_type):
            continue
        vectors = turboseq.load(path, compute_type=compute_type).embed(texts)
        assert F.cosine_similarity(vectors, exact).min().item() >= floor, compute_type


def test_weights_shrink_with_the_compute_type(marian_one):
    _, path = marian_one
    types = [name for name in compute.COMPUTE_TYPES if runs(name)]
    size = {name: compute.weight_bytes(turboseq.load(path, compute_type=name).spec) for name in types}
    if "bfloat16" in size:
        assert size["bfloat16"] < 0.55 * size["float32"]  # norms, biases and positions stay float32
    assert size["int8"] < 0.4 * size["float32"]


@pytest.mark.parametrize("config", ["gelu-tied-2h", "swish-untied-4h"])
def test_float32_holds_each_weight_once(config, tmp_path):
    """float32 holds one copy of every weight: the LM head only in panels, and a table tied to it looks up from
    the same panels (a dense head beside a packed one held the head twice: 1.55x the checkpoint here)."""
    from safetensors.torch import load_file

    make_marian(tmp_path, **MARIAN_CONFIGS[config])
    spec = turboseq.load(tmp_path).spec
    stored = sum(t.numel() * t.element_size() for t in load_file(tmp_path / "model.safetensors").values())
    positions = spec.encoder.embed.positions
    panel_padding = packed.PANEL * spec.lm_head.weight.shape[1] * 4
    screen = spec.lm_head.weight.numel() * 2  # the greedy shortcut's bfloat16 copy
    assert compute.weight_bytes(spec) <= stored + positions.numel() * 4 + panel_padding + screen
    assert isinstance(spec.lm_head.packed, packed.Panels) and spec.lm_head.weight.device.type == "meta"
    tied = spec.decoder.embed.packed is spec.lm_head.packed
    assert tied == (config == "gelu-tied-2h")


def test_panels_equal_the_dense_matrix():
    """``Panels``: rows, products (1 to 100 rows, a vocabulary not a multiple of the panel) and the dense copy
    equal the matrix they were made from."""
    torch.manual_seed(0)
    w = torch.randn(5 * packed.PANEL + 7, 24)
    panels = packed.Panels.of(w)
    assert panels.shape == w.shape
    assert torch.equal(panels.dense(), w)
    index = torch.tensor([[0, w.shape[0] - 1], [packed.PANEL, 3]])
    assert torch.equal(panels.take(index), w[index])
    bias = torch.randn(w.shape[0])
    for rows in (1, 4, 100):
        x = torch.randn(rows, 24)
        torch.testing.assert_close(panels.matmul(x, bias), x @ w.T + bias, rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 3, 24)
    assert panels.matmul(x).shape == (2, 3, w.shape[0]) and panels.matmul(x).is_contiguous()


def test_compute_type_errors_name_the_valid_ones(marian_one, monkeypatch):
    _, path = marian_one
    with pytest.raises(ValueError) as err:
        turboseq.load(path, compute_type="int4")
    assert str(err.value) == "unknown compute type 'int4'; valid: float32, bfloat16, int8, int8_bfloat16, auto"
    with pytest.raises(ValueError, match="float16 is not offered"):
        turboseq.load(path, compute_type="float16")
    with pytest.raises(ValueError, match="disagree"):
        turboseq.load(path, dtype="float32", compute_type="int8")
    with pytest.raises(ValueError, match="`dtype` must be one of float32, bfloat16"):
        turboseq.load(path, dtype="int8")
    monkeypatch.setattr(compute, "supported_compute_types", lambda device="cpu": ["float32"])
    with pytest.raises(ValueError) as err:
        turboseq.load(path, compute_type="int8")
    assert str(err.value) == "compute type 'int8' is not supported on this cpu (supported here: float32, auto)"
    assert turboseq.load(path, compute_type="auto").compute_type == "float32"


def test_auto_follows_the_cpu_capability(marian_one, monkeypatch):
    """``auto`` is the preference table's type for the capability turboseq chooses by, lowered here to each level
    at most the CPU's own; a type the lowered capability cannot run is refused as on such a CPU."""
    _, path = marian_one
    detected = cpu.cpu_info().detected
    for level in cpu.Capability:
        if level > detected:
            continue
        monkeypatch.setenv(cpu.ENV, level.label)
        want = cpu.AUTO[level]
        assert turboseq.load(path, compute_type="auto").compute_type == want, level
        supported = compute.supported_compute_types()
        assert ("int8" in supported) == (level >= cpu.Capability.AVX2)
        assert ("bfloat16" in supported) == (level >= cpu.Capability.AVX512_VNNI and "bfloat16" in _REAL)
    monkeypatch.setenv(cpu.ENV, "baseline")
    with pytest.raises(ValueError) as err:
        turboseq.load(path, compute_type="int8")
    assert str(err.value) == "compute type 'int8' is not supported on this cpu (supported here: float32, auto)"


_REAL = compute.supported_compute_types()


@pytest.mark.skipif("int8" not in _REAL, reason="fbgemm int8 is not available on this CPU")
def test_int8_without_vnni_keeps_seven_bit_activations_and_stays_batch_invariant(marian, monkeypatch):
    """Forced to AVX2 (no VNNI), the int8 product quantizes activations to 7 bits, as fbgemm needs there: results
    move a little, stay close to float32 and batch-invariant."""
    _, _, path = marian
    model = turboseq.load(path, compute_type="int8")
    exact = turboseq.load(path)
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=7)
    targets = _targets(exact, ids, mask)
    full = model.forward_logits(ids, mask, targets)
    monkeypatch.setenv(cpu.ENV, "avx2")
    seven = model.forward_logits(ids, mask, targets)
    if cpu.cpu_info().detected >= cpu.Capability.AVX512_VNNI:
        assert not torch.equal(full, seven)  # the reduced range is in effect
    assert _cosine(seven, exact.forward_logits(ids, mask, targets)) > 0.97
    batched = model.generate(ids, mask, max_new_tokens=8)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = model.generate(ids[i : i + 1, :n], max_new_tokens=8)
        assert torch.equal(batched[i, : alone.shape[1]], alone[0])


@pytest.mark.skipif("bfloat16" not in _REAL, reason="bfloat16 is not supported on this CPU")
def test_bfloat16_greedy_bans_in_bfloat16_and_picks_the_same_tokens(marian_one, monkeypatch):
    """Greedy bfloat16 applies the bans to the bfloat16 logits and takes their argmax without a float32 copy:
    the same tokens as the float32 copy gives, with every ban processor active."""
    from turboseq.runtime.head import LMHead

    _, path = marian_one
    model = turboseq.load(path, compute_type="bfloat16")
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, seed=3)
    kwargs = dict(num_beams=1, min_new_tokens=6, max_new_tokens=12, no_repeat_ngram_size=2, bad_words_ids=[[5], [7, 8]])
    direct = model.generate(ids, mask, **kwargs)
    monkeypatch.setattr(LMHead, "greedy", lambda self, h, input_ids, procs: None)  # the float32 copy's path
    assert torch.equal(direct, model.generate(ids, mask, **kwargs))


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif("bfloat16" not in _REAL, reason="bfloat16 is not supported on this CPU")
def test_bfloat16_attention_kernel_follows_the_capability(marian_one, monkeypatch):
    """One decoded position over many rows: SDPA's flash kernel with AMX, two batched products without it (each
    as fast where chosen); both give the same tokens here."""
    _, path = marian_one
    model = turboseq.load(path, compute_type="bfloat16")
    ids, mask = source_batch(model.spec.vocab_size, model.spec.pad_token_id, 3, (12, 3, 9, 1, 15, 6, 4, 8, 10, 2))
    kwargs = dict(num_beams=1, min_new_tokens=4, max_new_tokens=4)
    outputs = {}
    for level in ("amx", "avx512_bf16"):
        if cpu.cpu_info().detected < cpu.Capability[level.upper()]:
            continue
        monkeypatch.setenv(cpu.ENV, level)
        with _Ops() as ops:
            outputs[level] = model.generate(ids, mask, **kwargs)
        two_products = "aten.matmul.default" in ops.names
        assert two_products == (level != "amx"), level
    if len(outputs) == 2:
        assert torch.equal(outputs["amx"], outputs["avx512_bf16"])


def test_float32_holds_each_linear_once(marian_one):
    """float32 keeps only the packed copy of every linear (oneDNN's, or the LM head's panels), and
    ``dense_weights`` gives the exact dense weights back, for an export."""
    from safetensors.torch import load_file

    from turboseq.runtime.spec import linears

    model, path = marian_one
    spec = model.spec
    assert all(lin.weight.device.type == "meta" and lin.packed is not None for lin in linears(spec))
    stored = load_file(str(path / "model.safetensors"))
    fc1, head = spec.decoder.layers[0].ffn.fc1, spec.lm_head
    with compute.dense_weights(spec):
        assert fc1.packed is None and torch.equal(fc1.weight, stored["model.decoder.layers.0.fc1.weight"])
        assert head.packed is None and torch.equal(head.weight, stored["lm_head.weight"])
        assert all(lin.weight.device.type == "cpu" for lin in linears(spec))
    assert fc1.weight.device.type == "meta" and fc1.packed is not None
    assert isinstance(head.packed, packed.Panels)


def test_int8_runs_outside_inference_mode_after_running_inside_it(marian_one):
    """int8's per-thread row buffer, first made under ``torch.inference_mode`` (as ``generate`` runs), must not
    break a later product outside it, where an inference tensor cannot be written."""
    _, path = marian_one
    lin = turboseq.load(path, compute_type="int8").spec.decoder.layers[0].ffn.fc1
    x = torch.randn(3, lin.weight.shape[1])
    compute._buffers.by_width = {}  # as in a fresh thread
    with torch.inference_mode():
        inside = compute.int8_linear(x, lin)
    assert torch.equal(compute.int8_linear(x, lin), inside)
