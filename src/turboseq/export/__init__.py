"""Models as ``torch.export`` programs in one ``.pt2`` file: the programs themselves (``graphs``), an encoder's
export (``encoder``), a generation model's (``writer``), and loading one back as a model (``loader``)."""
