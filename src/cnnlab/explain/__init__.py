"""Looking inside a CNN: learned kernels, feature maps, Grad-CAM, and how well Grad-CAM localises.

Data flow: a trained model and images as the model sees them -> `grad_cam` (where the
evidence for a class lies), `feature_maps` / `kernel_weights` (what the layers compute and
learned) -> figures (`cnnlab.explain.figures`) and `overlay` -> scores against annotated
boxes (`cnnlab.explain.localise`) -> one HTML report (`cnnlab.explain.report`).
"""

from cnnlab.explain.features import (
    conv_blocks,
    feature_maps,
    first_conv,
    kernel_tiles,
    kernel_weights,
    last_block_output,
)
from cnnlab.explain.files import explain_files, show_features, show_kernels
from cnnlab.explain.gradcam import (
    default_layer,
    find_layer,
    grad_cam,
    grad_cam_images,
    last_conv,
)
from cnnlab.explain.localise import (
    box_mask,
    mass_in_boxes,
    pointing_hit,
    scale_boxes,
    score_localisation,
    score_maps,
)
from cnnlab.explain.overlay import overlay
from cnnlab.explain.report import build_report, write_report

__all__ = [
    "box_mask",
    "build_report",
    "conv_blocks",
    "default_layer",
    "explain_files",
    "feature_maps",
    "find_layer",
    "first_conv",
    "grad_cam",
    "grad_cam_images",
    "kernel_tiles",
    "kernel_weights",
    "last_block_output",
    "last_conv",
    "mass_in_boxes",
    "overlay",
    "pointing_hit",
    "scale_boxes",
    "score_localisation",
    "score_maps",
    "show_features",
    "show_kernels",
    "write_report",
]
