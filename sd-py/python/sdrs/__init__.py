"""sdrs: Stable Diffusion 1.x inference in Rust.

Load a model with :meth:`Pipeline.from_file` and call :meth:`Pipeline.generate`::

    import sdrs

    pipe = sdrs.Pipeline.from_file("model.safetensors")
    result = pipe.generate("a lighthouse at dusk", steps=20, seed=42)
    result.images[0].save("out.png")

Adapters: ``generate(loras=[...], embeddings=[...], hypernetworks=[...])`` takes
:class:`Lora`, :class:`Embedding` and :class:`Hypernetwork` objects (or paths), and
``<lora:NAME:…>`` tags in the prompt resolve against ``lora_dir``.

:func:`scan_checkpoint` reports what a checkpoint holds and whether it is safe to load, and
:func:`convert_checkpoint` converts one to safetensors; neither runs code from the file.

Errors raised by sdrs derive from :class:`SdrsError` (missing files raise the builtin
:class:`FileNotFoundError`; :class:`InvalidArgumentError` is also a :class:`ValueError`).
"""

from sdrs._sdrs import (
    SCHEDULERS,
    CancelledError,
    DeviceError,
    Embedding,
    GenerationResult,
    Hypernetwork,
    InvalidArgumentError,
    Lora,
    ModelLoadError,
    Pipeline,
    ScanReport,
    SdrsError,
    __version__,
    convert_checkpoint,
    scan_checkpoint,
)

__all__ = [
    "SCHEDULERS",
    "CancelledError",
    "DeviceError",
    "Embedding",
    "GenerationResult",
    "Hypernetwork",
    "InvalidArgumentError",
    "Lora",
    "ModelLoadError",
    "Pipeline",
    "ScanReport",
    "SdrsError",
    "__version__",
    "convert_checkpoint",
    "scan_checkpoint",
]
