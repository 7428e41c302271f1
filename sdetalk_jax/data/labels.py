"""The emotion-label table `emotion_labels.csv`: header `clip,<category>...`, one row of
non-negative weights per clip (docs/data.md)."""

from __future__ import annotations

import csv

import numpy as np

from sdetalk_jax.data.problems import DataError, Problem

EMOTION_LABELS_FILE = "emotion_labels.csv"


def read_emotion_labels(
    path: str,
) -> tuple[tuple[str, ...], dict[str, np.ndarray | None], list[Problem]]:
    """The emotion table: header `clip,<category>...`, one row of non-negative weights per clip.

    A UTF-8 byte-order mark is allowed (spreadsheets write one). A header that is not of that form
    raises DataError: without it no weight can be read. A clip with two rows that disagree maps to
    None (the scan leaves it out and says why); a repeated identical row is a warning."""
    rows = _read_rows(path)
    categories = _categories(path, rows)
    problems: list[Problem] = []
    labels: dict[str, np.ndarray | None] = {}
    first_line: dict[str, int] = {}
    for line_number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}:{line_number}"
        weights, reason = _row_weights(row, len(categories))
        if weights is None:
            problems.append(Problem(where, reason))
            continue
        name = row[0].strip()
        if name not in labels:
            labels[name], first_line[name] = weights, line_number
            continue
        problem = _second_row_problem(where, name, labels[name], weights, first_line[name])
        problems.append(problem)
        if problem.severity == "error":
            labels[name] = None
    return categories, labels, problems


def _read_rows(path: str) -> list[list[str]]:
    """Every row of the CSV file, the header first; a file that cannot be read is a DataError."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err


def _categories(path: str, rows: list[list[str]]) -> tuple[str, ...]:
    """The category names of the header row; a header that is not `clip,<distinct names>` is a
    DataError."""
    header = [cell.strip() for cell in rows[0]] if rows else []
    if len(header) < 2 or header[0] != "clip" or not all(header[1:]):
        raise DataError(
            f"{path}: header must be 'clip' followed by the emotion category names, got "
            f"{','.join(header)!r}"
        )
    if len(set(header[1:])) != len(header) - 1:
        raise DataError(f"{path}: the header names a category twice: {','.join(header)!r}")
    return tuple(header[1:])


def _row_weights(row: list[str], num_categories: int) -> tuple[np.ndarray | None, str]:
    """(the row's weights, "") when they are usable, else (None, why not)."""
    if len(row) != num_categories + 1:
        return None, f"row has {len(row) - 1} weights, header has {num_categories}"
    try:
        weights = np.array([float(cell) for cell in row[1:]], dtype=np.float32)
    except ValueError:
        return None, f"non-numeric weight in row for '{row[0]}'"
    if not np.all(np.isfinite(weights)):
        return None, f"NaN/Inf weight for '{row[0]}'"
    if np.any(weights < 0):
        return None, f"negative weight for '{row[0]}'"
    if weights.sum() <= 0:
        return None, f"weights of '{row[0]}' sum to zero"
    return weights, ""


def _second_row_problem(
    where: str, name: str, kept: np.ndarray | None, weights: np.ndarray, first_line: int
) -> Problem:
    """What another row for a clip already in the table is: a warning when it repeats the weights
    kept for the clip, else an error (and the caller leaves the clip out). `kept` is None once the
    clip's rows have disagreed."""
    if kept is not None and np.array_equal(kept, weights):
        return Problem(where, f"'{name}' repeats line {first_line}", "warning")
    return Problem(
        where,
        f"'{name}' has other weights on line {first_line}; "
        "the clip is left out until one row is removed",
    )
