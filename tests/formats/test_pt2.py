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
    from turboseq.export.encoder import export_encoder

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
    from turboseq.export.encoder import load_exported

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


# --- one archive, one reading: duplicated, ambiguous or hidden members ------------------------------------------


def _root(export_file) -> str:
    with zipfile.ZipFile(export_file) as z:
        return z.namelist()[0].split("/")[0]


def _evil_members(root: str, marker) -> list[tuple[str, bytes]]:
    """A weights config asking torch to unpickle ``weight_0``, and ``weight_0`` holding the payload."""
    config = {"config": {"evil": {"path_name": "weight_0", "is_param": True, "use_pickle": True, "tensor_meta": None}}}
    return [
        (f"{root}/data/weights/model_weights_config.json", json.dumps(config).encode()),
        (f"{root}/data/weights/weight_0", pickle.dumps(_Marker(marker))),
    ]


def _spliced(export_file, dst, extra: list[tuple[str, bytes]], positions: list[int]):
    """The genuine members with ``extra[k]`` written before genuine member ``positions[k]`` (duplicates allowed)."""
    import warnings

    with zipfile.ZipFile(export_file) as zin, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        items = [(i, zin.read(i.filename)) for i in zin.infolist()]
        plan = [(p, k) for k, p in enumerate(positions)]
        with zipfile.ZipFile(dst, "w") as zout:
            for index, (item, data) in enumerate([*items, (None, None)]):
                for _, k in sorted(x for x in plan if x[0] == index):
                    zout.writestr(extra[k][0], extra[k][1])
                if item is not None:
                    zout.writestr(item, data)
    return dst


def test_duplicated_members_are_refused_wherever_they_sit(export_file, tmp_path):
    marker = tmp_path / "pwned"
    root = _root(export_file)
    evil = _evil_members(root, marker)
    with zipfile.ZipFile(export_file) as z:
        last = len(z.infolist())
    torch_ran_it = 0
    for positions in ([0, 0], [0, last], [last, last], [3, 7], [last, 0], [5, 5]):
        crafted = _spliced(export_file, tmp_path / f"dup-{positions[0]}-{positions[1]}.pt2", evil, positions)
        with pytest.raises(ModelLoadError, match="name one member twice"):
            turboseq.load(crafted)
        assert not marker.exists()
        try:  # torch alone: whichever copy it reads
            torch.export.load(crafted)
        except Exception:
            pass
        torch_ran_it += marker.exists()
        marker.unlink(missing_ok=True)
    assert torch_ran_it  # the hazard is real for at least one order


@pytest.mark.parametrize(
    "variant",
    [
        "{root}/DATA/weights/model_weights_config.json",  # case
        "{root}/./data/weights/model_weights_config.json",
        "{root}//data/weights/model_weights_config.json",
        "{root}\\data\\weights\\model_weights_config.json",
        "/{root}/data/weights/model_weights_config.json",
        "{root}/data/x/../weights/model_weights_config.json",
        "{root}/data/weights/",  # a directory member
        "{root}/data/weights/model_weights_config.json\x00.txt",
        "OTHER/data/weights/model_weights_config.json",  # a second root folder
    ],
)
def test_ambiguous_member_names_are_refused(export_file, tmp_path, variant):
    marker = tmp_path / "pwned"
    root = _root(export_file)
    name = variant.format(root=root)
    crafted = _spliced(export_file, tmp_path / "ambiguous.pt2", [(name, _evil_members(root, marker)[0][1])], [0])
    with pytest.raises(ModelLoadError, match="refused: not an archive that `turboseq export` writes"):
        turboseq.load(crafted)
    assert not marker.exists()


def test_bytes_no_member_owns_are_refused(export_file, tmp_path):
    genuine = export_file.read_bytes()
    cases = {
        "prepended": b"PK\x03\x04" + b"\0" * 64 + genuine,
        "appended": genuine + b"trailing bytes",
    }
    with zipfile.ZipFile(tmp_path / "comment.pt2", "w") as zout, zipfile.ZipFile(export_file) as zin:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.comment = b"a comment"
    cases["comment"] = (tmp_path / "comment.pt2").read_bytes()
    # a member's bytes cut out of the central directory, still in the file (the end record's count is fixed)
    for name, data in cases.items():
        path = tmp_path / f"{name}.pt2"
        path.write_bytes(data)
        with pytest.raises(ModelLoadError, match="refused|not a readable"):
            turboseq.load(path)


def test_a_member_the_central_directory_hides_is_refused(export_file, tmp_path):
    """A local header and payload that the central directory does not list, between two listed members."""
    root = _root(export_file)
    hidden = tmp_path / "hidden.pt2"
    with zipfile.ZipFile(export_file) as zin, zipfile.ZipFile(hidden, "w") as zout:
        items = zin.infolist()
        for k, item in enumerate(items):
            zout.writestr(item, zin.read(item.filename))
            if k == 2:
                zout.writestr(f"{root}/data/weights/weight_0", b"hidden payload")
        zout.filelist = [i for i in zout.filelist if not i.filename.endswith("weight_0")]
        zout.NameToInfo.pop(f"{root}/data/weights/weight_0")
    with pytest.raises(ModelLoadError, match="belong to no member"):
        turboseq.load(hidden)


def test_a_compressed_member_is_refused(export_file, tmp_path):
    crafted = tmp_path / "deflated.pt2"
    with zipfile.ZipFile(export_file) as zin, zipfile.ZipFile(crafted, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
    with pytest.raises(ModelLoadError, match="compressed"):
        turboseq.load(crafted)


def _name_variants(name: str):
    from hypothesis import strategies as st

    parts = name.split("/")

    def mutate(choice):
        kind, k, upper = choice
        p = list(parts)
        k %= len(p)
        if kind == "case":
            p[k] = p[k].upper() if upper else p[k].capitalize()
        elif kind == "dot":
            p.insert(k + 1, ".")
        elif kind == "empty":
            p.insert(k + 1, "")
        elif kind == "backslash":
            return "\\".join(p)
        elif kind == "dir":
            return "/".join(p[: k + 1]) + "/"
        elif kind == "same":
            pass
        return "/".join(p)

    kinds = st.sampled_from(["case", "dot", "empty", "backslash", "dir", "same"])
    return st.tuples(kinds, st.integers(0, 10), st.booleans()).map(mutate)


def test_fuzzed_member_names_and_orders_never_run_code(export_file, tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    root = _root(export_file)
    marker = tmp_path / "pwned"
    evil = _evil_members(root, marker)
    with zipfile.ZipFile(export_file) as z:
        last = len(z.infolist())

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        st.tuples(_name_variants(evil[0][0]), _name_variants(evil[1][0])),
        st.lists(st.integers(0, last), min_size=2, max_size=2),
    )
    def check(names, positions):
        crafted = _spliced(
            export_file, tmp_path / "fuzz.pt2", [(names[0], evil[0][1]), (names[1], evil[1][1])], positions
        )
        try:
            turboseq.load(crafted)
        except ModelLoadError:
            pass
        assert not marker.exists(), (names, positions)

    check()
