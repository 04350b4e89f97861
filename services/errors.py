"""Typed errors of the core. The service maps each to one HTTP status; the CLIs map them to exit code 2."""


class SJFTError(Exception):
    """Base class of every error this project raises on purpose."""

    code = "error"


class ImageDecodeError(SJFTError):
    """Bytes that are not a readable image: unknown format, truncated, corrupt, or too many pixels."""

    code = "invalid_image"


class ImageTooLargeError(ImageDecodeError):
    """An image whose header declares more pixels than the limit (refused before anything is decoded)."""

    code = "image_too_large"

    def __init__(self, message: str, width: int | None = None, height: int | None = None, limit: int = 0):
        super().__init__(message)
        self.details = {"width": width, "height": height, "limit": limit}


class DescriptorError(SJFTError):
    """A descriptor of the wrong shape, with non-finite or negative values, or rows that do not sum to 1."""

    code = "invalid_descriptor"


class SpecMismatchError(SJFTError):
    """A descriptor computed under another spec (different ``spec_hash``): never silently compared."""

    code = "spec_mismatch"


class WeightsError(SJFTError):
    """A conv filter bank without a usable local weights file."""

    code = "invalid_weights"


class IndexIntegrityError(SJFTError):
    """An index directory whose files are missing or fail their checksum."""

    code = "index_damaged"
