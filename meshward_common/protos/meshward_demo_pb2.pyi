from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetRatingRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: int
    def __init__(self, product_id: _Optional[int] = ...) -> None: ...

class SetRatingRequest(_message.Message):
    __slots__ = ("product_id", "reviewer", "stars")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    STARS_FIELD_NUMBER: _ClassVar[int]
    product_id: int
    reviewer: str
    stars: int
    def __init__(self, product_id: _Optional[int] = ..., reviewer: _Optional[str] = ..., stars: _Optional[int] = ...) -> None: ...

class RatingReply(_message.Message):
    __slots__ = ("product_id", "ratings", "service", "version", "pod", "caller", "callee", "trace_id", "received_metadata")
    class RatingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ReceivedMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLEE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_METADATA_FIELD_NUMBER: _ClassVar[int]
    product_id: int
    ratings: _containers.ScalarMap[str, int]
    service: str
    version: str
    pod: str
    caller: str
    callee: str
    trace_id: str
    received_metadata: _containers.ScalarMap[str, str]
    def __init__(self, product_id: _Optional[int] = ..., ratings: _Optional[_Mapping[str, int]] = ..., service: _Optional[str] = ..., version: _Optional[str] = ..., pod: _Optional[str] = ..., caller: _Optional[str] = ..., callee: _Optional[str] = ..., trace_id: _Optional[str] = ..., received_metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
