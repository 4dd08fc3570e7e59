"""Helpers shared by the readers: opening plain or gzipped files, splitting lines and checking columns.

Every check raises :class:`DataFormatError` with the file, the 1-based line and the field, so no reader skips
a bad line without saying so.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import io
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from coldprompt.data.errors import DataFormatError

#: Separators that show a file was written with the wrong delimiter, named in error messages.
_OTHER_SEPARATORS = {"::": "'::'", "\t": "a tab", ",": "','", ";": "';'", "|": "'|'", " ": "a space"}


def require_folder(folder: str | Path, must_contain: str) -> Path:
    """Return ``folder`` as a Path, raising FileNotFoundError when it is not a directory."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found: {path}; it must contain {must_contain}")
    return path


def find_file(folder: Path, name: str) -> Path | None:
    """Return ``folder/name``, or ``folder/name.gz`` when only the gzipped copy exists, or None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def require_file(folder: Path, name: str, must_contain: str) -> Path:
    """Return ``folder/name`` (or its .gz copy), raising FileNotFoundError that lists the files required."""
    path = find_file(folder, name)
    if path is None:
        raise FileNotFoundError(f"{folder / name} not found (nor {name}.gz); the folder must contain {must_contain}")
    return path


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read a whole text file, decompressing it first when its name ends in ``.gz``.

    ``utf-8`` also drops a leading byte-order mark. Invalid bytes raise DataFormatError with their line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataFormatError(path, f"not a valid gzip file ({error}); recompress it or remove the .gz suffix") from None
    codec = "utf-8-sig" if encoding == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataFormatError(
            path, f"byte 0x{data[error.start]:02x} is not valid {encoding}; save the file as {encoding}", line=line
        ) from None


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for each non-blank line of a plain or gzipped file, without line endings.

    Streams the file, so large review dumps never sit in memory whole. Blank lines at the end are ignored,
    but a blank line followed by more data raises DataFormatError.
    """
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    codec = "utf-8-sig" if encoding == "utf-8" else encoding
    opener = gzip.open if path.suffix == ".gz" else open
    blank_line = None
    line_number = 0
    try:
        # Binary lines decoded one at a time, so a decoding error names its own line.
        with opener(path, "rb") as stream:
            for line_number, raw_line in enumerate(stream, start=1):
                line = raw_line.decode(codec).rstrip("\r\n")
                if not line.strip():
                    blank_line = blank_line or line_number
                    continue
                if blank_line is not None:
                    raise DataFormatError(path, "the line is empty; remove blank lines inside the file", line=blank_line)
                yield line_number, line
    except UnicodeDecodeError as error:
        message = f"byte 0x{error.object[error.start]:02x} is not valid {encoding}; save the file as {encoding}"
        raise DataFormatError(path, message, line=line_number) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataFormatError(path, f"not a valid gzip file ({error}); recompress it or remove the .gz suffix") from None


def parse_json_object(path: Path, line: str, line_number: int) -> dict:
    """Parse one JSON-lines record; Python-literal records (single quotes, as in Amazon's 2014 metadata) also work."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            message = f"malformed JSON ({error.msg} at column {error.colno}); each line must be one JSON object"
            raise DataFormatError(path, message, line=line_number) from None
    if not isinstance(record, dict):
        raise DataFormatError(path, f"expected a JSON object but found {type(record).__name__}", line=line_number)
    return record


def clean_title(title: str) -> str:
    """Unescape HTML entities such as ``&amp;`` and collapse runs of whitespace, tabs included, to one space."""
    return " ".join(html.unescape(title).split())


def split_lines(text: str) -> list[str]:
    """Split text into lines without their line endings (LF or CRLF), dropping trailing blank lines.

    Only ``\\n`` ends a line: ``str.splitlines`` would also split on characters such as U+0085, which
    latin-1 text can contain inside a title.
    """
    lines = text.split("\n")
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def split_fields(
    path: Path,
    lines: Sequence[str],
    separator: str,
    field_names: Sequence[str],
    *,
    first_line: int = 1,
    hint: str = "",
) -> list[tuple[str, ...]]:
    """Split every line on ``separator`` and return one tuple of strings per field (columns, not rows).

    Raises DataFormatError at the first line whose field count differs from ``len(field_names)``. When that
    line uses another separator, ``hint`` is appended to the message to say which reader or layout fits.
    """
    expected = len(field_names)
    counts = np.fromiter(map(str.count, lines, repeat(separator)), dtype=np.int64, count=len(lines))
    bad = np.flatnonzero(counts != expected - 1)
    if len(bad):
        index = int(bad[0])
        fields = lines[index].split(separator)
        raise field_count_error(path, lines[index], fields, separator, field_names, first_line + index, hint)
    if not lines:
        return [() for _ in field_names]
    # Every line has exactly expected - 1 separators, so splitting the joined text on both the separator and
    # the line break gives the same fields as splitting each line, with far fewer Python-level calls.
    flat = "\n".join(lines).replace(separator, "\n").split("\n")
    return [tuple(flat[position::expected]) for position in range(expected)]


def field_count_error(
    path: Path,
    line: str,
    fields: Sequence[str],
    separator: str,
    field_names: Sequence[str],
    line_number: int,
    hint: str = "",
) -> DataFormatError:
    """Build the error for a line with too few or too many fields, naming any other separator the line contains."""
    layout = ", ".join(field_names) if separator.isspace() else separator.join(field_names)
    shown_separator = _OTHER_SEPARATORS.get(separator, repr(separator))
    if not line.strip():
        return DataFormatError(path, "the line is empty; remove blank lines inside the file", line=line_number)
    expected = f"expected {len(field_names)} fields '{layout}' separated by {shown_separator} but found {len(fields)}"
    if len(fields) > len(field_names):
        message = f"{expected}; remove the extra fields"
        return DataFormatError(path, message, line=line_number, field=field_names[-1])
    message = f"missing; {expected}"
    wrong = [shown for text, shown in _OTHER_SEPARATORS.items() if text != separator and text in line]
    if separator not in line and wrong:
        message += f". The line contains {wrong[0]} instead of {shown_separator}{hint}"
    return DataFormatError(path, message, line=line_number, field=field_names[len(fields)])


def read_delimited(path: Path, text: str, delimiter: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Parse quoted CSV or TSV text into its header, its rows and the 1-based line number of each row.

    Fields may be quoted with ``"`` so that they can contain the delimiter. Raises DataFormatError when the
    file has no header or a quote is not closed.
    """
    reader = csv.reader(io.StringIO(text.rstrip("\r\n"), newline=""), delimiter=delimiter, strict=True)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    record_start = 1  # first line of the record being parsed, the line an unclosed quote opened on
    try:
        header = next(reader, None)
        record_start = reader.line_num + 1
        for row in reader:
            rows.append(row)
            line_numbers.append(reader.line_num)
            record_start = reader.line_num + 1
    except csv.Error as error:
        message = f"invalid quoting ({error}); a field that starts with '\"' must end with '\"' before the next delimiter"
        raise DataFormatError(path, message, line=record_start) from None
    if not header or not any(header):
        raise DataFormatError(path, "the file is empty; it needs a header line and at least one row", line=1)
    return header, rows, line_numbers


def read_columns(
    path: Path, text: str, delimiter: str, field_names: Callable[[list[str]], list[str]] | None = None
) -> tuple[list[str], list[tuple[str, ...]], Callable[[int], int]]:
    """Parse delimited text with a header line into the header, one tuple per column and a row-to-line map.

    Text without any ``"`` is split directly, which is several times faster than the csv module on large
    files. Other text goes through the csv module, so quoted fields may contain the delimiter or line breaks.
    ``field_names`` turns the header into the field names that errors show, by default the header itself.
    It may raise DataFormatError to reject the header before any row is checked.
    """
    name_fields = field_names or list
    if '"' not in text:
        lines = split_lines(text)
        if not lines or not lines[0].strip():
            raise DataFormatError(path, "the file is empty; it needs a header line and at least one row", line=1)
        header = lines[0].split(delimiter)
        columns = split_fields(path, lines[1:], delimiter, name_fields(header), first_line=2)
        return header, columns, lambda index: index + 2
    header, rows, line_numbers = read_delimited(path, text, delimiter)
    check_row_lengths(path, name_fields(header), rows, line_numbers, delimiter)
    columns = list(zip(*rows)) if rows else [() for _ in header]
    return header, columns, line_numbers.__getitem__


def find_column(path: Path, header: Sequence[str], name: str, layout: str) -> int:
    """Return the position of ``name`` in ``header``, raising DataFormatError on line 1 when it is missing."""
    if name in header:
        return list(header).index(name)
    message = f"missing column; the header must contain {layout} but is '{', '.join(header)}'"
    if len(header) == 1:
        wrong = [shown for text, shown in _OTHER_SEPARATORS.items() if text in header[0]]
        if wrong:
            message += f". It contains {wrong[0]}, so the file may use another separator"
    raise DataFormatError(path, message, line=1, field=name)


def check_row_lengths(
    path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], line_numbers: Sequence[int], delimiter: str
) -> None:
    """Raise DataFormatError at the first row whose field count differs from the header's."""
    for row, line_number in zip(rows, line_numbers):
        if len(row) != len(header):
            raise field_count_error(path, delimiter.join(row), row, delimiter, header, line_number)


def parse_numbers(
    path: Path, column: Sequence[str], field: str, line_of: Callable[[int], int], *, expected: str = "a number"
) -> np.ndarray:
    """Convert a column of strings to float64, raising DataFormatError at the first value that is not finite."""
    try:
        values = np.array(column, dtype=np.float64)
    except ValueError:
        # Convert value by value, so each text that is not a number becomes NaN and the check below reports it.
        values = np.array([_to_float(value) for value in column], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if not len(bad):
        return values
    index = int(bad[0])
    raise DataFormatError(
        path, f"'{column[index]}' is not {expected}; fix or remove the line", line=line_of(index), field=field
    )


def check_ids_present(path: Path, column: Sequence[str], field: str, line_of: Callable[[int], int]) -> None:
    """Raise DataFormatError at the first empty id."""
    if "" in column:
        index = list(column).index("")
        raise DataFormatError(path, "the id is empty; every line needs one", line=line_of(index), field=field)


def check_ids_known(
    path: Path,
    column: Sequence[str],
    known: set[str] | dict[str, object],
    field: str,
    line_of: Callable[[int], int],
    source: Path,
) -> None:
    """Raise DataFormatError at the first id of ``column`` that ``source`` does not list."""
    unknown = set(column).difference(known)
    if not unknown:
        return
    index = next(i for i, value in enumerate(column) if value in unknown)
    count = "1 unknown id" if len(unknown) == 1 else f"{len(unknown)} unknown ids"
    message = (
        f"'{column[index]}' is not in {source.name} ({count} in all); "
        f"add the missing entries to {source.name} or remove their interactions"
    )
    raise DataFormatError(path, message, line=line_of(index), field=field)


def _to_float(value: str) -> float:
    """Return ``float(value)``, or NaN when the text is not a number."""
    try:
        return float(value)
    except ValueError:
        return float("nan")
