"""The Avro contracts of altlas and the codec that puts them on the wire.

Other teams generate code from the ``.avsc`` files in this package, so they
evolve compatibly only: new fields get defaults, enums have defaults, union
branches are appended.
"""

from altlas.schemas.catalog import EVENT_NAMES, SchemaCatalog, SchemaInfo
from altlas.schemas.codec import AvroCodec, WireFormat
from altlas.schemas.errors import AltlasError, DecodeError, ErrorCode

__all__ = [
    "EVENT_NAMES",
    "AltlasError",
    "AvroCodec",
    "DecodeError",
    "ErrorCode",
    "SchemaCatalog",
    "SchemaInfo",
    "WireFormat",
]
