"""Reading importers' input files, with errors that name the file, line and column.

Every problem becomes one :class:`~emergence.errors.SourceError` line. CSV line numbers count
the header as line 1, so data row ``i`` (0-based) is on line ``i + 2``; JSON errors give the
decoder's line and column; JSON Lines errors give the line of the record.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from emergence.errors import SourceError

CSV_HEADER_LINES = 1
INT64_LIMIT = 2.0**63  # counts are stored as int64; this and beyond cannot be
JSON_TOO_DEEP = "nested too deeply to read (not a results file?)"


def require_file(path: Path, what: str = "file") -> Path:
    """``path`` itself if it is a readable file, else a one-line error."""
    if not path.is_file():
        raise SourceError(f"{path}: {what} not found")
    return path


def read_csv(path: Path, required: list[str]) -> pl.DataFrame:
    """A CSV with every ``required`` column present (all other columns are kept)."""
    require_file(path, "CSV file")
    check_csv_shape(path)
    try:
        df = pl.read_csv(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(f"{path}: not a readable CSV ({first})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(df.columns[:12]) + (" ..." if len(df.columns) > 12 else "")
        raise SourceError(f"{path}: missing column {missing[0]!r} (found: {found})")
    return df


def check_csv_shape(path: Path) -> None:
    """Refuse a ragged or cut-short CSV, naming the line, before polars pads it with nulls.

    Every non-blank record must have as many fields as the header. A short last record in a
    file that does not end with a newline is reported as a file cut in the middle of a line.
    (A cut inside the last field of a complete-looking last line cannot be told from a
    file that simply lacks a final newline, as some published tables do.)
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        width = len(header or [])
        for record in reader:
            if record and len(record) != width:
                line = reader.line_num
                cut = not text.endswith(("\n", "\r")) and next(reader, None) is None
                why = ("the file ends in the middle of this line (cut short?)" if cut
                       else "a ragged row (every row needs one value per column)")
                raise SourceError(f"{path}, line {line}: {len(record)} fields, the header has {width}; {why}")
    except csv.Error as err:
        raise SourceError(f"{path}, line {reader.line_num}: not a readable CSV ({err})") from None


def check_int64(values: pl.Series, path: Path, column: str, line_of=None, scale: float = 1.0) -> None:
    """Refuse a count that is not finite or does not fit a 64-bit integer once scaled."""
    line_of = line_of or csv_line
    scaled = values.cast(pl.Float64) * scale
    bad = (scaled.is_nan() | scaled.is_infinite() | (scaled.abs() >= INT64_LIMIT)).fill_null(False).arg_true()
    if len(bad):
        row = int(bad[0])
        raise SourceError(f"{path}, {line_of(row)}, column {column!r}: {values[row]!r} is not a plausible count "
                          f"(it must be finite and below 9.2e18{f' after x {scale:g}' if scale != 1 else ''})")


def csv_line(row: int) -> str:
    """Where 0-based data row ``row`` is: ``"line N"`` (1-based, header is line 1)."""
    return f"line {row + CSV_HEADER_LINES + 1}"


def numeric_column(df: pl.DataFrame, path: Path, column: str, line_of=csv_line) -> pl.Series:
    """``df[column]`` as float64 (nulls kept); a non-number names its line."""
    col = df[column]
    if col.dtype.is_numeric() or col.dtype == pl.Null:
        return col.cast(pl.Float64)
    cast = col.cast(pl.Float64, strict=False)
    bad = (cast.is_null() & col.is_not_null()).arg_true()
    if len(bad):
        row = int(bad[0])
        raise SourceError(f"{path}, {line_of(row)}, column {column!r}: {col[row]!r} is not a number")
    return cast


def check_proportion(values: pl.Series, path: Path, column: str, line_of=csv_line) -> None:
    """Refuse an accuracy outside [0, 1] (or NaN), naming its line."""
    bad = (values.is_nan() | (values < 0) | (values > 1)).fill_null(False).arg_true()
    if len(bad):
        row = int(bad[0])
        raise SourceError(
            f"{path}, {line_of(row)}, column {column!r}: accuracy {values[row]!r} outside [0, 1]"
        )


def check_positive(values: pl.Series, path: Path, column: str, line_of=csv_line) -> None:
    """Refuse a non-positive or non-finite number (nulls are the caller's business)."""
    bad = (values.is_nan() | values.is_infinite() | (values <= 0)).fill_null(False).arg_true()
    if len(bad):
        row = int(bad[0])
        raise SourceError(f"{path}, {line_of(row)}, column {column!r}: {values[row]!r} must be a positive finite number")


def read_json(path: Path) -> Any:
    """A JSON document; a syntax error names its line and column."""
    require_file(path, "JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not UTF-8 text ({err.reason})") from None
    except RecursionError:
        raise SourceError(f"{path}: JSON {JSON_TOO_DEEP}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON Lines file."""
    require_file(path, "JSON Lines file")
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SourceError(f"{path}, line {lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise SourceError(f"{path}, line {lineno}: JSON {JSON_TOO_DEEP}") from None
            if not isinstance(record, dict):
                raise SourceError(f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def get_key(obj: dict, key: str, path: Path, where: str, kind: type | tuple[type, ...] = object) -> Any:
    """``obj[key]`` of type ``kind``, or an error naming the file and the key's place."""
    if not isinstance(obj, dict) or key not in obj:
        raise SourceError(f"{path}: {where} has no key {key!r}")
    value = obj[key]
    is_number_wanted = kind in (int, float, (int, float))
    if not isinstance(value, kind) or (is_number_wanted and isinstance(value, bool)):  # bool is an int
        raise SourceError(f"{path}: {where}[{key!r}] is {type(value).__name__}, expected {_kind_name(kind)}")
    return value


def as_proportion(value: Any, path: Path, where: str) -> float:
    """A number in [0, 1] (an accuracy) from a JSON value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SourceError(f"{path}: {where} is {value!r}, expected a number")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise SourceError(f"{path}: {where}: accuracy {value!r} outside [0, 1]")
    return float(value)


def as_count(value: int, path: Path, where: str) -> int:
    """A JSON integer that fits the contract's int64 columns (a count, a size)."""
    if not -INT64_LIMIT < value < INT64_LIMIT:
        raise SourceError(f"{path}: {where} is {big_number(value)}, not a plausible count (it must be below 9.2e18)")
    return value


def big_number(value: int) -> str:
    """A huge integer, shown short (``1e+30``; beyond a float's range, an order of magnitude)."""
    try:
        return f"{float(value):.3g}"
    except OverflowError:
        return "an integer beyond 1e308"


def _kind_name(kind) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__
