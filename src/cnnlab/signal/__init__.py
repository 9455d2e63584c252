"""The operations: convolution and correlation (scipy-exact, fast) and the CNN layer ops.

`convolve` / `correlate` / `convolve2d` follow scipy.signal; `conv2d`, `max_pool2d`,
`avg_pool2d`, `global_avg_pool2d`, `relu` follow torch.nn.functional, each with a plain NumPy
reference beside it; `explain_convolution` walks the notes' step-by-step example.
"""

from cnnlab.signal.convolve import convolve, convolve2d, correlate
from cnnlab.signal.explain import ConvolutionStep, explain_convolution, format_steps
from cnnlab.signal.layers import (
    avg_pool2d,
    conv2d,
    conv2d_reference,
    conv_output_size,
    global_avg_pool2d,
    max_pool2d,
    pool2d_reference,
    relu,
)

__all__ = [
    "ConvolutionStep",
    "avg_pool2d",
    "conv2d",
    "conv2d_reference",
    "conv_output_size",
    "convolve",
    "convolve2d",
    "correlate",
    "explain_convolution",
    "format_steps",
    "global_avg_pool2d",
    "max_pool2d",
    "pool2d_reference",
    "relu",
]
