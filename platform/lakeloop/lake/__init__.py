"""The versioned lake: named Delta tables with schemas, validation on ingest and time travel."""

from lakeloop.lake.catalog import Lake, check_table_name
from lakeloop.lake.schema import Column, TableSchema
from lakeloop.lake.table import Table, WriteResult

__all__ = ["Lake", "Table", "TableSchema", "Column", "WriteResult", "check_table_name"]
