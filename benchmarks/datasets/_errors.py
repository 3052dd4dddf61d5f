"""Errors raised by the dataset loaders: each names the file, the folder and where users get the data."""

from __future__ import annotations


class DatasetError(Exception):
    """Base class of every dataset failure (bad name, missing or corrupt files, bad arguments)."""


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset name that is not registered; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class MissingDataError(DatasetError, FileNotFoundError):
    """Expected data files are absent: the message lists them, the folder searched and where to get them."""


class CorruptDataError(DatasetError, ValueError):
    """A data file exists but is truncated or malformed."""


def missing_files_message(dataset: str, folder: object, expected: list[str], where: str) -> str:
    """One message for every loader: which files were expected, where we looked, where to get them."""
    listing = "\n  ".join(expected)
    return (
        f"{dataset}: the data folder {folder} does not hold the expected files. Expected:\n  {listing}\n"
        f"Where to get them: {where}"
    )
