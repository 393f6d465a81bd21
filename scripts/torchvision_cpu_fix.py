"""Start-up fix for torchvision's CUDA wheel on a CPU-only torch.

torchvision from PyPI is a CUDA build; with a CPU torch its compiled ops fail to load and
``import torchvision`` raises "operator torchvision::nms does not exist". The setup step copies
this file into the virtual environment (with a ``.pth`` line importing it) only when that
import fails. It installs a meta-path hook: right before torchvision is first imported, it
declares the two missing operator schemas so torchvision's Python fallbacks register. Nothing
is imported at interpreter start-up. ``torchvision.ops.nms`` stays unavailable: unspur uses a
pure-torch NMS.
"""

import importlib.abc
import sys


class _TorchvisionSchemaHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch

            if torch.version.cuda is None:
                lib = torch.library.Library("torchvision", "FRAGMENT")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define(
                    "qnms(Tensor dets, Tensor scores, float iou_threshold, float scale, "
                    "int zero_point) -> Tensor"
                )
                globals()["_lib"] = lib  # keep the fragment alive
        except Exception:  # a failing fix must never break interpreter start-up
            pass
        return None


if not any(isinstance(f, _TorchvisionSchemaHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionSchemaHook())
