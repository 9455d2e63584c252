"""cnnlab: from the convolution operation to a working CNN inspector.

Data flows images -> datasets -> transforms -> models -> training engine -> metrics/plots
-> export/serve; each stage is a subpackage usable from a notebook, and `cnnlab.cli` is a
thin layer over it.
"""

__version__ = "0.1.0"
