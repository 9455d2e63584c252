"""The kernel bank and image filtering: named kernels, user kernels, files in, images out.

`get_kernel` resolves a spec ("sobel-x", "box:7", "gaussian:9:2.0", a file, "1,0,-1;...");
`filter_image` convolves an array (true convolution, scipy.signal.convolve2d semantics);
`filter_file` is the whole `cnnlab filter` command as a function; `sample_image` and
`demo_gallery` give a demo without downloading anything.
"""

from cnnlab.filters.apply import (
    SCALINGS,
    FilterResult,
    apply_filters,
    filter_file,
    filter_image,
    gallery_figure,
    sobel_magnitude,
    to_display,
)
from cnnlab.filters.bank import (
    BANK,
    Kernel,
    box,
    gaussian,
    get_kernel,
    laplacian,
    list_kernels,
    load_kernel_file,
    parse_kernel_text,
)
from cnnlab.filters.sample import demo_gallery, sample_image

__all__ = [
    "BANK",
    "SCALINGS",
    "FilterResult",
    "Kernel",
    "apply_filters",
    "box",
    "demo_gallery",
    "filter_file",
    "filter_image",
    "gallery_figure",
    "gaussian",
    "get_kernel",
    "laplacian",
    "list_kernels",
    "load_kernel_file",
    "parse_kernel_text",
    "sample_image",
    "sobel_magnitude",
    "to_display",
]
