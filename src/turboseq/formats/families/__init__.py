"""Model families: each module maps one checkpoint layout into ``turboseq.runtime.spec``.

A family module exposes ``MODEL_TYPES`` (config.json ``model_type`` values) and ``build(config, ckpt)``; it may
declare ``KIND`` ("seq2seq" by default, "speech", "encoder", "causal": which model object serves it) and
``generation_extras(model_dir, config, generation_config)`` (its own generation keys, e.g. Whisper's).
"""

from turboseq.formats.families import bart, bert, gpt2, llama, marian, t5, whisper

FAMILIES = {
    model_type: module for module in (marian, bart, t5, bert, whisper, gpt2, llama) for model_type in module.MODEL_TYPES
}
