from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MeshStateRequest(_message.Message):
    __slots__ = ("version_info",)
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    version_info: str
    def __init__(self, version_info: _Optional[str] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("name", "namespace", "service_account", "node", "labels", "address", "service", "ports", "spiffe_id", "netns", "uids", "pod_uid", "sidecar_container_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    UIDS_FIELD_NUMBER: _ClassVar[int]
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    service_account: str
    node: str
    labels: _containers.ScalarMap[str, str]
    address: str
    service: str
    ports: _containers.RepeatedScalarFieldContainer[int]
    spiffe_id: str
    netns: str
    uids: _containers.RepeatedScalarFieldContainer[int]
    pod_uid: str
    sidecar_container_id: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ..., node: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., address: _Optional[str] = ..., service: _Optional[str] = ..., ports: _Optional[_Iterable[int]] = ..., spiffe_id: _Optional[str] = ..., netns: _Optional[str] = ..., uids: _Optional[_Iterable[int]] = ..., pod_uid: _Optional[str] = ..., sidecar_container_id: _Optional[str] = ...) -> None: ...

class PolicyDocument(_message.Message):
    __slots__ = ("source", "yaml")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    source: str
    yaml: str
    def __init__(self, source: _Optional[str] = ..., yaml: _Optional[str] = ...) -> None: ...

class MeshState(_message.Message):
    __slots__ = ("version_info", "trust_domain", "workloads", "policies", "root_namespace", "trust_bundles", "service_entries")
    class TrustBundlesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    ROOT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    version_info: str
    trust_domain: str
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    policies: _containers.RepeatedCompositeFieldContainer[PolicyDocument]
    root_namespace: str
    trust_bundles: _containers.ScalarMap[str, bytes]
    service_entries: _containers.RepeatedCompositeFieldContainer[ServiceEntry]
    def __init__(self, version_info: _Optional[str] = ..., trust_domain: _Optional[str] = ..., workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[PolicyDocument, _Mapping]]] = ..., root_namespace: _Optional[str] = ..., trust_bundles: _Optional[_Mapping[str, bytes]] = ..., service_entries: _Optional[_Iterable[_Union[ServiceEntry, _Mapping]]] = ...) -> None: ...

class ServiceEntry(_message.Message):
    __slots__ = ("name", "namespace", "hosts", "ports", "endpoints", "subject_alt_names")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ALT_NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedScalarFieldContainer[int]
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    subject_alt_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[int]] = ..., endpoints: _Optional[_Iterable[str]] = ..., subject_alt_names: _Optional[_Iterable[str]] = ...) -> None: ...
