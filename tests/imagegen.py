"""Small real image files for tests: re-exported from ``retrieval_service.testdata`` (public, so benchmarks
need not import the test tree)."""

from retrieval_service.testdata import TEXTURE_KINDS, stripes, texture, to_rgb, write_image_folder

__all__ = ["TEXTURE_KINDS", "stripes", "texture", "to_rgb", "write_image_folder"]
