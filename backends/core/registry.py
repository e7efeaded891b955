"""Which API class describes each panel (torch-free) and which service class implements it (imported on use)."""

from __future__ import annotations

import importlib

from backends.core.api import PanelAPI

APIS = {
    "heads": "backends.heads.api:HeadsAPI",
    "guidance": "backends.guidance.api:GuidanceAPI",
    "segmentation": "backends.segmentation.api:SegmentationAPI",
    "restoration": "backends.restoration.api:RestorationAPI",
}
SERVICES = {
    "heads": "backends.heads.service:HeadsService",
    "guidance": "backends.guidance.service:GuidanceService",
    "segmentation": "backends.segmentation.service:SegmentationService",
    "restoration": "backends.restoration.service:RestorationService",
}


def load_class(path: str) -> type:
    """The class at ``module:Class``."""
    module_name, class_name = path.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def api_class(panel: str) -> type[PanelAPI]:
    """The API class of ``panel`` (its endpoint specs, no ML imports); raises KeyError for an unknown panel."""
    return load_class(APIS[panel])


def service_class(panel: str) -> type[PanelAPI]:
    """The service class of ``panel`` (imports its models' libraries); raises KeyError for an unknown panel."""
    return load_class(SERVICES[panel])
