"""The Caffe 1.0 schema as data: message tables by family, in ``caffe.proto``'s field numbers.

:mod:`port.schema` turns them into protobuf descriptors; they are split by message family only to
keep each module readable.
"""

from __future__ import annotations

from .layers import LAYERS
from .legacy import LEGACY
from .net import NET

# A field: (name, number, type, label, default, packed). label: "o" optional, "r" repeated.
# Types are protobuf scalar names, or the name of a message / enum of this schema ("Parent.Enum" for
# nested enums). Enum tables: {enum name: [value names in order of their numbers]} or explicit numbers.


# Insertion order is the message order of the built file descriptor, as it was in one table.
SCHEMA: dict[str, dict] = {**NET, **LAYERS, **LEGACY}

TOP_LEVEL_ENUMS = {"Phase": ["TRAIN", "TEST"]}
