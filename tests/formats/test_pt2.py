"""Export archives are checked before torch reads them: a crafted .pt2 must never run code on load."""

import json
import pickle
import zipfile

import pytest
import torch

import turboseq
from tests.helpers import make_encoder, run_cli
from turboseq.errors import ModelLoadError


class _Marker:
    """Unpickling this creates a file: the stand-in for an attacker's command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def export_file(tmp_path_factory):
    from turboseq.models.exported import export_encoder

    path = tmp_path_factory.mktemp("tiny-roberta")
    make_encoder(path, "roberta")
    return export_encoder(turboseq.load(path), path / "tiny.pt2")


def _rewrite(src, dst, replace: dict, add: dict | None = None):
    """A copy of the archive ``src`` with members replaced (by name suffix) or added (below the root folder)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in replace.items():
                if item.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(item, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def _pickled_constant(export_file, dst, marker):
    def mark_pickled(data):
        config = json.loads(data)
        config["config"]["evil"] = {
            "path_name": "tensor_evil",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        return json.dumps(config).encode()

    return _rewrite(
        export_file,
        dst,
        {"_constants_config.json": mark_pickled},
        {"data/constants/tensor_evil": pickle.dumps(_Marker(marker))},
    )


def _pickled_sample_inputs(export_file, dst, marker):
    return _rewrite(export_file, dst, {".pt": pickle.dumps(_Marker(marker))})


@pytest.mark.parametrize("craft", [_pickled_constant, _pickled_sample_inputs])
def test_a_crafted_export_never_runs_code(export_file, tmp_path, craft):
    marker = tmp_path / "pwned"
    crafted = craft(export_file, tmp_path / "crafted.pt2", marker)
    try:  # the hazard is real: torch itself runs the payload
        torch.export.load(crafted)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ModelLoadError, match="refused: archive member .* could carry code"):
        turboseq.load(crafted)
    from turboseq.models.exported import load_exported

    with pytest.raises(ModelLoadError, match="refused"):
        load_exported(crafted)
    res = run_cli("embed", "--model", crafted, stdin="hello\n")
    assert res.returncode == 2 and "refused" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()


def test_an_unexpected_member_is_refused(export_file, tmp_path):
    crafted = _rewrite(export_file, tmp_path / "extra.pt2", {}, {"data/constants/custom_obj_0": b"x"})
    with pytest.raises(ModelLoadError, match="custom_obj_0"):
        turboseq.load(crafted)


def test_the_genuine_export_still_loads(export_file):
    model = turboseq.load(export_file)
    assert model(torch.tensor([[0, 5, 9, 2]])).shape == (1, 64)
