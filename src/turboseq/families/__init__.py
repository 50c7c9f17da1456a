"""Model families: each module maps one checkpoint layout into ``turboseq.spec``.

A family module exposes ``MODEL_TYPES`` (config.json ``model_type`` values) and ``build(config, ckpt)``.
"""

from turboseq.families import bart, bert, marian, t5, whisper

FAMILIES = {model_type: module for module in (marian, bart, t5, bert, whisper) for model_type in module.MODEL_TYPES}
