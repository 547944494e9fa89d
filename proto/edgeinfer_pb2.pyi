from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DropPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_POLICY_UNSPECIFIED: _ClassVar[DropPolicy]
    DROP_POLICY_LATEST: _ClassVar[DropPolicy]
    DROP_POLICY_ALL: _ClassVar[DropPolicy]

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR: _ClassVar[PixelFormat]
DROP_POLICY_UNSPECIFIED: DropPolicy
DROP_POLICY_LATEST: DropPolicy
DROP_POLICY_ALL: DropPolicy
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB: PixelFormat
PIXEL_FORMAT_BGR: PixelFormat

class ModelSelector(_message.Message):
    __slots__ = ("name", "precision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    precision: str
    def __init__(self, name: _Optional[str] = ..., precision: _Optional[str] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("model", "top_k", "drop_policy", "shared_memory")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DROP_POLICY_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    model: ModelSelector
    top_k: int
    drop_policy: DropPolicy
    shared_memory: SharedMemoryRegion
    def __init__(self, model: _Optional[_Union[ModelSelector, _Mapping]] = ..., top_k: _Optional[int] = ..., drop_policy: _Optional[_Union[DropPolicy, str]] = ..., shared_memory: _Optional[_Union[SharedMemoryRegion, _Mapping]] = ...) -> None: ...

class SharedMemoryRegion(_message.Message):
    __slots__ = ("key", "byte_size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    key: str
    byte_size: int
    def __init__(self, key: _Optional[str] = ..., byte_size: _Optional[int] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("height", "width", "pixel_format", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    pixel_format: PixelFormat
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., pixel_format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SharedMemoryImage(_message.Message):
    __slots__ = ("offset", "height", "width", "pixel_format")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    offset: int
    height: int
    width: int
    pixel_format: PixelFormat
    def __init__(self, offset: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., pixel_format: _Optional[_Union[PixelFormat, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("jpeg", "raw", "shared_memory")
    JPEG_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    jpeg: bytes
    raw: RawImage
    shared_memory: SharedMemoryImage
    def __init__(self, jpeg: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryImage, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("sequence", "capture_time_ns", "image")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    capture_time_ns: int
    image: Image
    def __init__(self, sequence: _Optional[int] = ..., capture_time_ns: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    frame: Frame
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "top_k", "image")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    model: ModelSelector
    top_k: int
    image: Image
    def __init__(self, model: _Optional[_Union[ModelSelector, _Mapping]] = ..., top_k: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class Class(_message.Message):
    __slots__ = ("index", "label", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "preprocess_ms", "inference_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("classes", "timings", "model", "precision", "device", "batch_size")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[Class]
    timings: Timings
    model: str
    precision: str
    device: str
    batch_size: int
    def __init__(self, classes: _Optional[_Iterable[_Union[Class, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., model: _Optional[str] = ..., precision: _Optional[str] = ..., device: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Dropped(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("sequence", "capture_time_ns", "prediction", "dropped", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    capture_time_ns: int
    prediction: Prediction
    dropped: Dropped
    error: FrameError
    def __init__(self, sequence: _Optional[int] = ..., capture_time_ns: _Optional[int] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., dropped: _Optional[_Union[Dropped, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelSelector
    def __init__(self, model: _Optional[_Union[ModelSelector, _Mapping]] = ...) -> None: ...

class Fidelity(_message.Message):
    __slots__ = ("top1_agreement", "top5_overlap", "sqnr_db", "frames")
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    TOP5_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    SQNR_DB_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    top1_agreement: float
    top5_overlap: float
    sqnr_db: float
    frames: int
    def __init__(self, top1_agreement: _Optional[float] = ..., top5_overlap: _Optional[float] = ..., sqnr_db: _Optional[float] = ..., frames: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "precision", "device", "input_height", "input_width", "num_classes", "weights", "aliases", "engine", "fidelity", "max_batch_size", "batch_sizes", "preprocess_on", "resize_size", "runtime")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_ON_FIELD_NUMBER: _ClassVar[int]
    RESIZE_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    precision: str
    device: str
    input_height: int
    input_width: int
    num_classes: int
    weights: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    engine: str
    fidelity: Fidelity
    max_batch_size: int
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    preprocess_on: str
    resize_size: int
    runtime: str
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., precision: _Optional[str] = ..., device: _Optional[str] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., num_classes: _Optional[int] = ..., weights: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., engine: _Optional[str] = ..., fidelity: _Optional[_Union[Fidelity, _Mapping]] = ..., max_batch_size: _Optional[int] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., preprocess_on: _Optional[str] = ..., resize_size: _Optional[int] = ..., runtime: _Optional[str] = ...) -> None: ...
