"""Reading a :class:`~recsys_mt.data.parquet.ParquetSource`'s rows: row groups as Arrow tables,
Arrow columns as pandas dtypes, and group values as stable int64 codes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .parquet_epoch import RowGroup
from .parquet_plan import ParquetReadError, import_pyarrow
from .vocab import SchemaError, _canonical, _id_kind

MISSING_GROUP = -1
"""``"group"`` code of rows whose group value is missing."""


class _Reader:
    """Reads row groups, keeping the last opened file open; errors name file and row group."""

    def __init__(self, files: list[str], arrow_schema: Any):
        self.files = files
        self.arrow_schema = arrow_schema
        self._path: str | None = None
        self._file: Any = None

    def read(self, group: RowGroup) -> Any:
        pa, pq = import_pyarrow()
        path = self.files[group.file]
        where = f"{path}: row group {group.index}"
        try:
            if path != self._path:
                self.close()
                self._file, self._path = pq.ParquetFile(path), path
            table = self._file.read_row_group(group.index, columns=self.arrow_schema.names)
            table = table.select(self.arrow_schema.names).replace_schema_metadata(None)
            if table.schema.types != self.arrow_schema.types:
                table = table.cast(self.arrow_schema)
        except (OSError, ValueError, TypeError, pa.ArrowException) as e:
            raise ParquetReadError(f"{where}: cannot read: {e}") from e
        if table.num_rows != group.rows:
            raise ParquetReadError(
                f"{where}: holds {table.num_rows} rows, its footer said {group.rows} when the "
                "source was planned (was the file changed?)"
            )
        return table

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._path = None, None


def _pandas_dtype(t: Any) -> Any:
    """pandas dtype of an Arrow column: nullable ``Int64`` / ``boolean`` for signed integers and
    booleans, so a chunk holding a null does not turn int64 ids into float64."""
    pa, _ = import_pyarrow()
    if pa.types.is_signed_integer(t):
        return pd.Int64Dtype()
    if pa.types.is_boolean(t):
        return pd.BooleanDtype()
    return None


def arrow_frame(table: Any, list_columns: Iterable[str] = ()) -> pd.DataFrame:
    """``table`` as a DataFrame with :func:`_pandas_dtype`'s dtypes; the id-list columns named in
    ``list_columns`` stay Arrow lists (``pd.ArrowDtype``): pyarrow's own conversion turns a chunk
    of ``list<int64>`` holding a null into float64 arrays, merging ids above 2^53."""
    lists = [c for c in dict.fromkeys(list_columns) if c in table.column_names]
    df = table.drop_columns(lists).to_pandas(types_mapper=_pandas_dtype)
    for c in lists:
        df[c] = pd.Series(pd.arrays.ArrowExtensionArray(table.column(c)), index=df.index)
    return df[table.column_names]


def _group_codes(col: pd.Series) -> np.ndarray:
    """int64 ``[N]`` stable hashes of group values (``MISSING_GROUP`` where missing)."""
    try:
        kind = _id_kind(col, f"group column {col.name!r}")
        values, missing = _canonical(col, kind)
    except (SchemaError, TypeError, ValueError):
        values, missing = col.astype(str).to_numpy(dtype=object), col.isna().to_numpy()
    codes = pd.util.hash_array(values).view(np.int64)
    codes[missing] = MISSING_GROUP
    return codes
