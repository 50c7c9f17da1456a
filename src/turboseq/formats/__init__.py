"""Reading files: Hugging Face directories and CTranslate2 ``model.bin`` (``read``, ``hf``, ``ct2``), ``families``
(checkpoint -> spec, one module each), ``tokenizer``, ``audio``, and the CTranslate2 -> Hugging Face ``convert``."""
