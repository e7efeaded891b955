"""Which service class serves each panel (imported only when a panel is used in-process)."""

from __future__ import annotations

import importlib

from backends.core.service import Service

SERVICES = {
    "heads": "backends.heads.service:HeadsService",
    "guidance": "backends.guidance.service:GuidanceService",
    "segmentation": "backends.segmentation.service:SegmentationService",
    "restoration": "backends.restoration.service:RestorationService",
}


def service_class(panel: str) -> type[Service]:
    """The service class of ``panel``; raises KeyError for an unknown panel."""
    module_name, class_name = SERVICES[panel].split(":")
    return getattr(importlib.import_module(module_name), class_name)
