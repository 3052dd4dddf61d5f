"""Readers for the raw file formats: IDX (MNIST family, optionally gzipped), npz and npy, with clear errors."""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from benchmarks.datasets._errors import CorruptDataError, DatasetError

# IDX type codes (third byte of the magic number) -> numpy big-endian dtype
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def default_cache_dir() -> Path:
    """Where parsed data is cached: ``$MTLAGG_CACHE_DIR`` or ``~/.cache/mtlagg``."""
    return Path(os.environ.get("MTLAGG_CACHE_DIR") or Path.home() / ".cache" / "mtlagg")


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str, where: str) -> Path:
    """``data_dir`` as a Path, or a clear error when it is not given or not a folder."""
    if data_dir is None:
        raise DatasetError(
            f"{dataset}: no data folder given; pass data_dir (the CLI's --data-dir) or set MTLAGG_DATA_DIR. "
            f"Where to get the data: {where}"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{dataset}: the data folder {path} does not exist or is not a folder. {where}")
    return path


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (EOFError, OSError, zlib.error) as exc:
            raise CorruptDataError(f"{path}: the gzip file is truncated or damaged ({exc}); download it again") from exc
    return path.read_bytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): magic ``0 0 type ndim``, ``ndim`` big-endian uint32 sizes, data.

    Raises :class:`CorruptDataError` naming the file when the header is wrong or the data is short.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise CorruptDataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise CorruptDataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) < expected:
        raise CorruptDataError(
            f"{path}: the file is truncated: its header announces shape {shape} ({expected} bytes) "
            f"but it holds {len(raw)} bytes; download it again"
        )
    if len(raw) > expected:
        raise CorruptDataError(f"{path}: {len(raw) - expected} unexpected trailing bytes after the IDX data")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when the name ends in ``.gz`` (used by the tests)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def load_npz(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load ``keys`` from an npz archive; a truncated archive or a missing key raises a clear error."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise CorruptDataError(f"{path}: the archive lacks the arrays {missing} (it has {sorted(z.files)})")
            return {k: z[k] for k in keys}
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise CorruptDataError(f"{path}: the npz archive is truncated or damaged ({exc}); get the file again") from exc
    except ValueError as exc:
        raise CorruptDataError(f"{path}: cannot read the npz archive ({exc})") from exc


def load_npy(path: Path) -> np.ndarray:
    """Load one ``.npy`` array; a truncated or malformed file raises :class:`CorruptDataError` naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise CorruptDataError(f"{path}: cannot read the .npy file ({exc}); it may be truncated") from exc
